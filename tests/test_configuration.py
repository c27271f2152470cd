"""Configuration files: the reference page's examples, every field's rules, and the errors a person reads."""

import re

import pytest
import yaml

from configuration.errors import ConfigurationError
from configuration.fleets import FleetConfiguration
from configuration.interpolation import resolve_run
from configuration.loader import load_configuration, parse_configuration
from configuration.models import DevEnvironmentConfiguration, TaskConfiguration
from configuration.yaml_input import MAX_DEPTH, MAX_VALUES, parse_yaml
from tests.helpers import DATA


def reference_examples():
    text = (DATA / "task-reference.md").read_text()
    blocks = re.findall(r'editor-title="([^"]+)">\s*```yaml\n(.*?)```', text, re.S)
    assert len(blocks) == 8
    return blocks


def parse(text, source="x.dstack.yml"):
    return parse_configuration(text, source)


@pytest.mark.parametrize("index", range(8))
def test_every_reference_example_parses(index):
    """The tasks as they are; the dev environments once their `commands` are `init` (dstack 0.22.5 refuses a dev
    environment's `commands`: tests/test_dev_environments.py)."""
    title, text = reference_examples()[index]
    kind = re.search(r"type: (\S+)", text).group(1)
    if kind == "dev-environment":
        with pytest.raises(ConfigurationError, match="dev-environment.commands: Extra inputs are not permitted"):
            parse(text, title)
        text = text.replace("commands:", "init:")
    conf = parse(text, title)
    assert conf.type == kind
    assert isinstance(conf, TaskConfiguration if kind == "task" else DevEnvironmentConfiguration)
    steps = conf.commands if kind == "task" else conf.init
    assert steps and steps[0].startswith(("pip install", "pip3 install"))


def test_reference_examples_have_the_expected_values():
    examples = [parse(text.replace("commands:", "init:") if "dev-environment" in text else text, title)
                for title, text in reference_examples()]
    python, ports, image, resources, env, private, args, app = examples
    assert python.python == "3.11" and python.image is None
    assert [p.model_dump() for p in ports.ports] == [{"local_port": 6000, "container_port": 6000}]
    assert image.image == "dstackai/base:py3.11-0.4rc4-cuda-12.1" and image.ide is None
    r = resources.resources
    assert (r.cpu.count.min, r.memory.min, r.gpu.count.min, r.gpu.memory.min, r.gpu.memory.max) == (16, 200, 4, 40, 80)
    assert (r.shm_size, r.disk.size.min) == (16, 500)
    assert env.env == {"HUGGING_FACE_HUB_TOKEN": None, "HF_HUB_ENABLE_HF_TRANSFER": "1"}
    assert private.registry_auth.username == "peterschmidt85"
    assert "<redacted-token>" not in repr(private.registry_auth)
    assert args.commands[1].endswith("${{ run.args }}")
    assert app.ports[0].container_port == 8501


@pytest.mark.parametrize("value, expected", [
    ("3.11", "3.11"), (3.11, "3.11"), (3.1, "3.10"), ("3.10", "3.10"), (3.9, "3.9"), ("3.14", "3.14"), (3.12, "3.12"),
])
def test_python_versions(value, expected):
    assert parse(f"type: task\npython: {value!r}\ncommands: [x]\n".replace("'", '"')).python == expected


def test_unquoted_yaml_3_10_means_3_10():
    assert parse("type: task\npython: 3.10\ncommands: [x]\n").python == "3.10"


@pytest.mark.parametrize("value", ["2.7", "3.8", "3.15", "4"])
def test_unsupported_python_lists_what_is_allowed(value):
    with pytest.raises(ConfigurationError, match=r"x.dstack.yml:2: python: Unsupported Python version: .*allowed: 3.9"):
        parse(f'type: task\npython: "{value}"\ncommands: [x]\n')


def test_ports():
    conf = parse('type: task\ncommands: [x]\nports: [8080, "8080:80", "*:8080"]\n')
    assert [p.model_dump() for p in conf.ports] == [
        {"local_port": 8080, "container_port": 8080},
        {"local_port": 8080, "container_port": 80},
        {"local_port": None, "container_port": 8080},
    ]


@pytest.mark.parametrize("port, message", [
    ("0", "greater than or equal to 1"), ("70000", "less than or equal to 65535"), ('"8000-8010"', "ranges"),
    ('"a:b"', "Invalid port"), ('"80:"', "Invalid port"),
])
def test_bad_ports(port, message):
    with pytest.raises(ConfigurationError, match=f"ports\\[0\\].*{message}"):
        parse(f"type: task\ncommands: [x]\nports: [{port}]\n")


def test_env_forms_and_duplicates():
    assert parse("type: task\ncommands: [x]\nenv: {A: 1, B: x, C: null, D: true}\n").env == {
        "A": "1", "B": "x", "C": None, "D": "true"}
    with pytest.raises(ConfigurationError, match="Duplicate env name: A"):
        parse("type: task\ncommands: [x]\nenv: [A=1, A=2]\n")
    with pytest.raises(ConfigurationError, match="Invalid env name"):
        parse("type: task\ncommands: [x]\nenv: [1A=1]\n")


def test_image_and_python_exclusive_and_something_to_run():
    with pytest.raises(ConfigurationError, match="mutually exclusive"):
        parse("type: task\nimage: ubuntu\npython: '3.11'\ncommands: [x]\n")
    with pytest.raises(ConfigurationError, match="either `commands` or `image` must be set"):
        parse("type: task\npython: '3.11'\n")
    assert parse("type: task\nimage: ubuntu\n").commands == []


def test_profile_fields():
    conf = parse(
        "type: task\ncommands: [x]\nbackends: [aws]\nregions: us-east-1\nspot_policy: auto\nmax_price: 2.5\n"
        "max_duration: 2h\nretry: true\nnodes: 2\n")
    assert conf.backends == ["aws"] and conf.regions == ["us-east-1"] and conf.spot_policy == "auto"
    assert conf.max_price == 2.5 and conf.max_duration == 7200 and conf.nodes == 2
    assert conf.retry.on_events == ["no-capacity", "interruption", "error"]
    assert parse("type: task\ncommands: [x]\nmax_duration: 'off'\n").max_duration == "off"
    assert parse("type: task\ncommands: [x]\nmax_duration: 90\n").max_duration == 90
    assert parse("type: task\ncommands: [x]\nretry: {on_events: [no-capacity], duration: 30m}\n").retry.duration == 1800


@pytest.mark.parametrize("text, message", [
    ("spot_policy: sometimes", "spot_policy: 'sometimes' is not allowed"),
    ("backends: [azure]", "backends\\[0\\]: 'azure' is not allowed"),
    ("max_duration: 2 hours", "Invalid duration"),
    ("max_price: -1", "max_price: Input should be greater than 0"),
    ("name: My_Run", "Invalid name"),
    ("nodes: 0", "nodes: Input should be greater than or equal to 1"),
])
def test_profile_errors_name_the_field(text, message):
    with pytest.raises(ConfigurationError, match=message):
        parse(f"type: task\ncommands: [x]\n{text}\n")


def test_unknown_field_suggests_the_meant_one():
    with pytest.raises(ConfigurationError) as e:
        parse("type: task\ncomands:\n  - echo hi\n", "typo.dstack.yml")
    assert str(e.value) == "typo.dstack.yml:2: unknown field 'comands' (did you mean 'commands'?)"


def test_nested_unknown_field_and_several_errors_at_once():
    with pytest.raises(ConfigurationError) as e:
        parse("type: task\ncommands: [x]\nresources:\n  gpus: 2\n  gpu: A100:2:3\n")
    message = str(e.value)
    assert "x.dstack.yml:4: unknown field 'resources.gpus' (did you mean 'gpu'?)" in message
    assert "x.dstack.yml:5: resources.gpu: GPU spec count conflict: A100:2:3" in message


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(ConfigurationError, match=r"^bad.dstack.yml:3:\d+: YAML syntax error"):
        parse("type: task\ncommands:\n\t- echo\n", "bad.dstack.yml")


@pytest.mark.parametrize("text, message", [
    ("commands: [x]", "missing field 'type'"), ("type: service", "'service' is not supported"),
    ("- a", "expected a mapping"), ("", "expected a mapping"),
])
def test_type_errors(text, message):
    with pytest.raises(ConfigurationError, match=message):
        parse(text)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read the file"):
        load_configuration(tmp_path / "none.dstack.yml")


def test_fleet_configuration():
    conf = parse("type: fleet\nname: my-fleet\nssh_config:\n  user: ubuntu\n  identity_file: ~/.ssh/id\n"
                 "  hosts:\n    - 10.0.0.1\n    - {hostname: 10.0.0.2, port: 2222}\n")
    assert isinstance(conf, FleetConfiguration)
    assert [h.hostname for h in conf.ssh_config.hosts] == ["10.0.0.1", "10.0.0.2"]
    assert conf.ssh_config.hosts[1].port == 2222


# --- interpolation ----------------------------------------------------------------------------------------------

def test_run_args_are_shell_quoted_and_escapes_kept():
    conf = parse("type: task\ncommands:\n  - python train.py ${{ run.args }}\n  - echo $${{ run.args }}\n")
    run = resolve_run(conf, "x.dstack.yml", ["--lr", "0.1 0.2", "-v"], {})
    assert run.configuration.commands == ["python train.py --lr '0.1 0.2' -v", "echo ${{ run.args }}"]


def test_bare_env_comes_from_the_caller_and_is_secret():
    conf = parse("type: task\ncommands: ['echo ${{ env.TOKEN }}']\nenv: [TOKEN, MODE=fast]\n")
    run = resolve_run(conf, "x.dstack.yml", [], {"TOKEN": "hf_secret_value"})
    assert run.configuration.env == {"TOKEN": "hf_secret_value", "MODE": "fast"}
    assert run.secret_env == {"TOKEN"}
    assert run.redact("echo hf_secret_value") == "echo [secret]"
    with pytest.raises(ConfigurationError, match="env: TOKEN has no value and is not set in your environment"):
        resolve_run(conf, "x.dstack.yml", [], {})


def test_secrets_from_the_secrets_file_and_environment(dstack_home):
    dstack_home.mkdir(parents=True)
    (dstack_home / "secrets.yml").write_text("GHCR: ghp_from_file\n")
    conf = parse("type: task\nimage: ghcr.io/me/img\nregistry_auth: {username: me, password: '${{ secrets.GHCR }}'}\n"
                 "env: ['DB=${{ secrets.DB }}']\n")
    run = resolve_run(conf, "x.dstack.yml", [], {"DB": "db_pass_123", "GHCR": "ignored"})
    assert run.configuration.registry_auth.password.get_secret_value() == "ghp_from_file"
    assert run.configuration.env["DB"] == "db_pass_123" and run.secret_env == {"DB"}
    with pytest.raises(ConfigurationError, match="secret DB is not set"):
        resolve_run(conf, "x.dstack.yml", [], {})


def test_unknown_variables_are_errors():
    conf = parse("type: task\ncommands: ['echo ${{ run.name }}', 'echo ${{ foo.bar }}']\n")
    with pytest.raises(ConfigurationError, match=r"commands\[0\]: unknown variable run.name"):
        resolve_run(conf, "x.dstack.yml", [], {})
    conf = parse("type: task\ncommands: ['echo ${{ foo.bar }}']\n")
    with pytest.raises(ConfigurationError, match=r"not available here"):
        resolve_run(conf, "x.dstack.yml", [], {})


def test_unquoted_colon_in_a_command_gets_a_hint():
    with pytest.raises(ConfigurationError, match=r"x.dstack.yml:3: commands\[0\]: expected a string, got a mapping: quote"):
        parse("type: task\ncommands:\n  - echo args: here\n")


def test_unquoted_boolean_command_gets_a_hint():
    with pytest.raises(ConfigurationError, match=r"commands\[0\]: expected a string, got True: quote it"):
        parse("type: task\ncommands: [true]\n")


# --- reading within bounds (configuration/yaml_input.py) --------------------------------------------------------

def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.dstack.yml"
    path.write_bytes(b"\xef\xbb\xbftype: task\ncommands: [x]\n")
    assert load_configuration(path).commands == ["x"]


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(ConfigurationError, match=r"cannot read the file: Is a directory"):
        load_configuration(tmp_path)


def test_nesting_is_bounded_at_max_depth():
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_yaml(deepest, "x.yml")[0] is not None
    with pytest.raises(ConfigurationError, match=rf"^x.yml:1:{MAX_DEPTH + 1}: values nest more than {MAX_DEPTH} "):
        parse_yaml("[" + deepest + "]", "x.yml")


def test_values_are_bounded_with_aliases_expanded():
    most = "[" + "1, " * (MAX_VALUES - 2) + "1]"  # the list and its items
    assert len(parse_yaml(most, "x.yml")[0]) == MAX_VALUES - 1
    with pytest.raises(ConfigurationError, match="more than 10,000 values"):
        parse_yaml("[0, " + most[1:], "x.yml")
    shared = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    assert len(parse_yaml(shared + "c: [*b, *b]\n", "x.yml")[0]["c"]) == 2  # 1 + 2 * 101 values: fine
    with pytest.raises(ConfigurationError, match=r"^x.yml:3:\d+: the file holds more than 10,000 values"):
        parse_yaml(shared + "c: [" + ", ".join(["*b"] * 100) + "]\n", "x.yml")


def test_merged_keys_must_be_strings_too():
    assert parse("type: task\n<<: {commands: [x]}\n").commands == ["x"]
    with pytest.raises(ConfigurationError, match=r"x.dstack.yml:2:\d+: the key 1 is not a string: quote it"):
        parse("type: task\n<<: {1: x}\ncommands: [x]\n")


def test_an_unquoted_date_gets_a_hint():
    with pytest.raises(ConfigurationError, match=r"name: expected a string, got 2024-01-31: quote it"):
        parse("type: task\ncommands: [x]\nname: 2024-01-31\n")


def test_a_long_problem_is_cut_short():
    with pytest.raises(ConfigurationError) as e:
        parse("type: !" + "t" * 5000 + " task\n")
    assert "could not determine a constructor" in str(e.value) and len(str(e.value)) < 300
    with pytest.raises(ConfigurationError) as e:
        parse(f"type: task\ncommands: [x]\nname: {'N' * 5000}\n")
    assert str(e.value).startswith("x.dstack.yml:3: name: Invalid name: 'NNN") and len(str(e.value)) < 300


def test_config_yml_of_the_wrong_shape(dstack_home):
    from configuration.backends import load_config

    dstack_home.mkdir(parents=True)
    (dstack_home / "config.yml").write_text("- aws\n")
    with pytest.raises(ConfigurationError, match=r"config.yml: \(top level\): expected a mapping of fields, got a li"):
        load_config()


@pytest.mark.parametrize("hostname", ["10.0.0.1", "gpu-1.example.com", "::1", "fe80::1%eth0", "localhost"])
def test_fleet_host_names_and_addresses(hostname):
    conf = parse(f"type: fleet\nname: f1\nssh_config:\n  user: ec2-user\n  hosts: ['{hostname}']\n")
    assert conf.ssh_config.hosts[0].hostname == hostname


@pytest.mark.parametrize("field, value, message", [
    ("hosts", ["-oProxyCommand=sh"], r"ssh_config.hosts\[0\].hostname: Invalid host name or address"),
    ("hosts", ["gpu 1"], "Invalid host name or address"),
    ("hosts", ["h[/x]"], "Invalid host name or address"),
    ("hosts", [{"hostname": "10.0.0.1", "user": "a b"}], r"hosts\[0\].user: Invalid user name"),
    ("user", "[bold]", "ssh_config.user: Invalid user name"),
    ("user", "root\n", "ssh_config.user: Invalid user name"),
])
def test_fleet_host_names_and_users_that_are_refused(field, value, message):
    ssh_config = {"user": "ubuntu", "hosts": ["10.0.0.1"], field: value}
    with pytest.raises(ConfigurationError, match=message):
        parse(yaml.safe_dump({"type": "fleet", "name": "f1", "ssh_config": ssh_config}))


def test_a_final_newline_is_not_part_of_a_name():
    with pytest.raises(ConfigurationError, match="name: Invalid name"):
        parse('type: task\ncommands: [x]\nname: "my-run\\n"\n')
    with pytest.raises(ConfigurationError, match="Invalid env name"):
        parse('type: task\ncommands: [x]\nenv: {"A\\n": "1"}\n')


@pytest.mark.parametrize("kind, text", [
    ("task", "type: task\ncommands: [x]\nname: train-\n"),
    ("fleet", "type: fleet\nnodes: 1\nname: gpus-\n"),
    ("volume", "type: volume\nbackend: gcp\nregion: us-central1\nsize: 10GB\nname: data-\n"),
])
def test_a_name_ending_in_a_hyphen_is_refused_in_one_line(kind, text):
    """GCP refuses resource names that end in `-`, and every cloud resource of a run, fleet or volume is named after
    it: the rule is `^[a-z][a-z0-9-]{0,39}[a-z0-9]$`, said in one line with the file, line and field."""
    line = text.splitlines().index(next(l for l in text.splitlines() if l.startswith("name:"))) + 1
    with pytest.raises(ConfigurationError) as e:
        parse(text, "x.dstack.yml")
    message = str(e.value)
    assert message.startswith(f"x.dstack.yml:{line}: name: Invalid name: ") and "\n" not in message
    assert "ends with a letter or digit" in message and "2 to 41" in message


def test_names_at_the_edges_of_the_rule_and_generated_ones():
    from provisioner.runs.names import generate_run_name

    for name in ("ab", "a1", "a" + "b" * 40, "a-b"):
        assert parse(f"type: task\ncommands: [x]\nname: {name}\n").name == name
    for name in ("a", "a-", "a" + "b" * 41, "1ab", "a_b"):
        with pytest.raises(ConfigurationError, match="Invalid name"):
            parse(f"type: task\ncommands: [x]\nname: {name}\n")
    for _ in range(200):  # what a run or volume without a name gets must pass the same rule
        name = generate_run_name()
        assert parse(f"type: task\ncommands: [x]\nname: {name}\n").name == name


def test_the_name_flag_refuses_a_final_hyphen(tmp_path):
    from tests.helpers import run_cli, write

    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\n")
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "local", "-n", "train-")
    assert result.returncode == 2 and "ends with a letter or digit" in result.stderr
