"""The `dstack` command as a user runs it: exit codes, JSON contracts, flags over files, import cost."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli, write

EXPECTED_A100_RESOURCES = {
    "cpu": {"arch": None, "count": {"min": 2, "max": None}}, "memory": {"min": 8.0, "max": None}, "shm_size": None,
    "gpu": {"vendor": None, "name": ["A100"], "count": {"min": 1, "max": 1}, "memory": None, "total_memory": None,
            "compute_capability": None},
    "disk": {"size": {"min": 100.0, "max": None}},
}


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == "dstack 0.1.0"
    for command in ([], ["offer"], ["offers"], ["apply"], ["run"], ["schema"], ["metrics"], ["event"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout


def test_offers_json_contract():
    result = run_cli("offers", "--gpu", "A100:1", "--json", "--max-offers", "3")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document) == ["requirements", "offers", "total_offers"]
    assert document["requirements"] == {"resources": EXPECTED_A100_RESOURCES, "max_price": None, "spot": None}
    assert len(document["offers"]) == 3 and document["total_offers"] > 3
    offer = document["offers"][0]
    assert list(offer) == ["backend", "instance", "region", "availability_zones", "price"]
    assert list(offer["instance"]) == ["name", "resources"]
    assert list(offer["instance"]["resources"]) == ["cpus", "memory_mib", "gpus", "spot", "disk"]
    assert offer["instance"]["resources"]["gpus"] == [{"name": "A100", "memory_mib": 40960, "vendor": "nvidia"}]
    prices = [o["price"] for o in document["offers"]]
    assert prices == sorted(prices)


def test_p5_offer_shape_matches_the_issue():
    result = run_cli("offers", "--gpu", "H100:8", "-b", "aws", "-r", "us-east-1", "--on-demand", "--json",
                     "--instance-type", "p5.48xlarge")
    offer = json.loads(result.stdout)["offers"][0]
    assert offer["backend"] == "aws" and offer["region"] == "us-east-1" and offer["price"] == 55.04
    assert offer["instance"] == {"name": "p5.48xlarge", "resources": {
        "cpus": 192, "memory_mib": 2097152, "gpus": [{"name": "H100", "memory_mib": 81920, "vendor": "nvidia"}] * 8,
        "spot": False, "disk": {"size_mib": 102400}}}
    assert "us-east-1a" in offer["availability_zones"]


def test_flags_override_the_file_instead_of_merging(tmp_path):
    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\ncommands: [x]\nregions: [us-west-2]\nspot_policy: spot\nmax_price: 3\n"
                    "resources:\n  gpu: {name: [A100], memory: 80GB}\n  cpu: 8..\n")
    from_file = json.loads(run_cli("offers", "-f", str(conf), "--json").stdout)["requirements"]
    assert from_file["spot"] is True and from_file["max_price"] == 3.0
    assert from_file["resources"]["gpu"]["memory"] == {"min": 80.0, "max": 80.0}
    overridden = json.loads(run_cli("offers", "-f", str(conf), "--gpu", "H100", "--on-demand", "--json").stdout)
    gpu = overridden["requirements"]["resources"]["gpu"]
    assert gpu["name"] == ["H100"] and gpu["memory"] is None  # replaced, not merged
    assert overridden["requirements"]["resources"]["cpu"]["count"]["min"] == 8
    assert overridden["requirements"]["spot"] is False
    assert {o["region"] for o in overridden["offers"]} <= {"us-west-2"}


@pytest.mark.parametrize("args, code, message", [
    (["offers", "--gpu", "A100:2:3"], 2, "GPU spec count conflict: A100:2:3"),
    (["offers", "--memory", "lots"], 2, "Invalid memory size"),
    (["offers", "--spot", "--on-demand"], 2, "give only one of them"),
    (["offers", "-b", "azure"], 2, "'azure' is not a backend"),
    (["offers", "--group-by", "zone"], 2, "cannot group by zone"),
    (["offers", "--bogus"], 2, "No such option"),
    (["offers", "-f", "missing.dstack.yml"], 1, "missing.dstack.yml: cannot read the file"),
])
def test_errors_have_codes_and_no_traceback(args, code, message):
    result = run_cli(*args)
    assert result.returncode == code
    assert message in result.stderr.replace("\n│ ", " ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["offers", "apply"])
@pytest.mark.parametrize("flag, value, detail", [
    ("--cpu", "1...3", "count.max: Input should be a valid integer"),
    ("--gpu", "H100:1...3", "count.max: Input should be a valid integer"),
    ("--memory", "1...3GB", "Invalid range order: 1GB..0.3GB"),
    ("--disk", "10GB...20GB", "size: Invalid range order: 10GB..0.2GB"),
])
def test_a_resource_flags_error_names_the_value_refused(tmp_path, command, flag, value, detail):
    """Issue 20: as a file's error names its field, a flag's names the value it refused and the part that is wrong."""
    args = [command, flag, value]
    if command == "apply":
        args += ["-f", write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\n"), "--dry-run"]
    result = run_cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Invalid value for '{flag}': '{value}': {detail}" in result.stderr.replace("\n│ ", " "), result.stderr


def test_bad_file_is_a_user_error(tmp_path):
    bad = tmp_path / "typo.dstack.yml"
    bad.write_text("type: task\ncomands: [echo]\n")
    result = run_cli("apply", "-f", str(bad), "--dry-run")
    assert result.returncode == 1
    assert result.stderr == f"error: {bad}:2: unknown field 'comands' (did you mean 'commands'?)\n"


def test_offers_table_and_group_by():
    table = run_cli("offers", "--gpu", "H100:8", "--max-offers", "2")
    assert table.returncode == 0
    assert "8xH100 (80GB)" in table.stdout and "offers, showing 2" in table.stdout
    grouped = run_cli("offers", "--gpu", "24GB..", "--group-by", "gpu,backend", "--json")
    groups = json.loads(grouped.stdout)["groups"]
    assert {g["gpu"] for g in groups} >= {"A10G", "L4", "H100"}
    l4 = [g for g in groups if g["gpu"] == "L4" and g["backend"] == "aws"][0]
    assert l4["count"]["min"] == 1 and l4["price"]["min"] <= l4["price"]["max"]


def test_apply_dry_run_json(tmp_path, dstack_home):
    conf = tmp_path / "r.dstack.yml"
    conf.write_text(
        "type: task\npython: 3.10\nenv: [HF_TOKEN, MODE=fast]\nports: [8080, '8081:80']\n"
        "commands: ['python train.py ${{ run.args }}']\nresources: {gpu: 'A100:1'}\n")
    result = run_cli("apply", "-f", str(conf), "-b", "gcp", "--dry-run", "--json", "--", "--lr", "0.1 x", "-v",
                     env={"HF_TOKEN": "hf_very_secret", "DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    assert "hf_very_secret" not in result.stdout
    configuration = json.loads(result.stdout)["configuration"]
    assert configuration["python"] == "3.10"
    assert configuration["env"] == {"HF_TOKEN": "[secret]", "MODE": "fast"}
    assert configuration["ports"] == [{"local_port": 8080, "container_port": 8080},
                                      {"local_port": 8081, "container_port": 80}]
    assert configuration["commands"] == ["python train.py --lr '0.1 x' -v"]
    assert configuration["resources"] == EXPECTED_A100_RESOURCES


def test_registry_password_never_printed(tmp_path, dstack_home):
    conf = tmp_path / "p.dstack.yml"
    conf.write_text("type: task\nimage: ghcr.io/me/x\nregistry_auth: {username: me, password: ghp_literal_token}\n")
    result = run_cli("apply", "-f", str(conf), "--dry-run", "--json")
    assert json.loads(result.stdout)["configuration"]["registry_auth"] == {"username": "me", "password": "[secret]"}
    assert "ghp_literal_token" not in result.stdout + result.stderr


def test_cli_imports_no_cloud_sdk():
    """Every command's module, imported (not run), loads no cloud SDK and no SSH library."""
    from cli.app import COMMANDS

    modules = sorted({spec.target.split(":")[0] for spec in COMMANDS.values()})
    assert {"cli.commands.metrics", "cli.commands.event", "cli.commands.init", "cli.commands.volume"} <= set(modules)
    code = (f"import sys, importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            "print(sorted(m for m in ('pulumi','boto3','botocore','paramiko','google') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_help_imports_no_command_module():
    """`dstack --help` lists the commands from cli.main's table: no command module, and so nothing heavy, loads."""
    code = ("import sys; sys.argv=['dstack','--help']\nimport cli.main\ntry:\n    cli.main.main()\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.endswith('_command') or m.split('.')[0] in "
            "('pydantic','rich','yaml','provisioner','offers','stacks','paramiko','pulumi','boto3','psycopg')), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "Commands:" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_offers_command_loads_no_cloud_sdk():
    code = ("import sys; sys.argv=['dstack','offers','--gpu','H100:8','--json','--max-offers','5']\n"
            "import cli.main\ntry:\n    cli.main.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('pulumi','boto3','botocore','paramiko','psycopg') if m in sys.modules), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert len(json.loads(out.stdout)["offers"]) == 5
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_schema_and_reference_page_do_not_drift():
    schema = json.loads(run_cli("schema").stdout)
    assert {"TaskConfiguration", "GPUSpec", "ResourcesSpec"} <= set(schema["$defs"])
    page = (ROOT / "docs" / "reference" / "task.md").read_text()
    assert run_cli("schema", "--markdown").stdout == page, "regenerate: dstack schema --markdown > docs/reference/task.md"


def test_a_backends_configured_regions_limit_its_offers_and_a_runs_plan(dstack_home, tmp_path):
    dstack_home.mkdir(parents=True, exist_ok=True)
    (dstack_home / "config.yml").write_text("backends:\n  - type: aws\n    regions: [us-west-2, eu-west-1]\n"
                                            "  - type: gcp\n    project_id: p\n")
    listed = run_cli("offers", "--gpu", "L4", "--json", "--max-offers", "200")
    assert listed.returncode == 0, listed.stderr
    offers = json.loads(listed.stdout)["offers"]
    by_backend = {b: {o["region"] for o in offers if o["backend"] == b} for b in ("aws", "gcp")}
    assert by_backend["aws"] and by_backend["aws"] <= {"us-west-2", "eu-west-1"}
    assert len(by_backend["gcp"]) > 2  # gcp names no regions: all of them
    # the run's own regions narrow within the configured ones; outside them nothing is offered from aws
    (tmp_path / "t.dstack.yml").write_text("type: task\ncommands: [nvidia-smi]\nresources:\n  gpu: L4\n"
                                           "backends: [aws]\nregions: [us-east-1, us-west-2]\n")
    planned = run_cli("apply", "-f", str(tmp_path / "t.dstack.yml"), "--dry-run", "--json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert json.loads(planned.stdout)["offer"]["region"] == "us-west-2"
    (tmp_path / "t.dstack.yml").write_text("type: task\ncommands: [nvidia-smi]\nresources:\n  gpu: L4\n"
                                           "backends: [aws]\nregions: [us-east-1]\n")
    refused = run_cli("apply", "-f", str(tmp_path / "t.dstack.yml"), "--dry-run", "--json")
    assert refused.returncode != 0 and "no offer" in (refused.stdout + refused.stderr).lower()


def test_the_readmes_cloud_dry_run_runs_as_written_and_warns_of_an_unset_env_name(dstack_home):
    """README: `dstack apply -f examples/train.dstack.yml -b aws --dry-run`, with HF_TOKEN (a bare env name) unset:
    the plan is shown with a warning; a run still stops on it before anything is made."""
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    planned = subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", "examples/train.dstack.yml", "-b", "aws",
                              "--dry-run", "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert planned.returncode == 0, planned.stderr
    assert "env: HF_TOKEN has no value and is not set in your environment: a run would stop here" in planned.stderr
    assert json.loads(planned.stdout)["offer"]["backend"] == "aws"
    run = subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", "examples/train.dstack.yml", "-b", "aws",
                          "-y"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert run.returncode == 1 and "env: HF_TOKEN has no value" in run.stderr
    assert not (dstack_home / "state.db").exists() or "train" not in run_cli("ps", "-a").stdout
