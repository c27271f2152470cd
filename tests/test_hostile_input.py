"""Hostile and broken input files: every command that reads one answers with a short error naming the file, never a
traceback, and refuses a file built to exhaust time or memory (billion laughs, deep nesting, `/dev/zero`) quickly."""

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import main
from tests.helpers import ROOT

READING_COMMANDS = (["apply", "-f"], ["apply", "--dry-run", "-f"], ["offers", "-f"], ["delete", "-f"])
TASK = "type: task\ncommands: [echo hi]\n"


def run_in_process(*argv):
    """The CLI in this process, as `dstack ARGV...`: (exit code, stdout and stderr). Any exception the CLI lets
    through is raised here, so a test sees it."""
    out = io.StringIO()
    saved = sys.argv
    sys.argv = ["dstack", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue()


def billion_laughs(levels):
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]")
    return "type: task\n" + "\n".join(lines) + f"\ncommands: *lol{levels}\n"


BROKEN_FILES = {
    "latin1": ("type: task\ncommands: ['echo café']\n".encode("latin-1"), r":2:\d+: not UTF-8 text \(byte 0xe9\)"),
    "utf16-bom": (TASK.encode("utf-16"), "the file is UTF-16 text; save it as UTF-8"),
    "utf16-no-bom": (TASK.encode("utf-16-le"), "looks like UTF-16 or UTF-32 text"),
    "utf32-bom": (TASK.encode("utf-32"), "the file is UTF-32 text"),
    "random-bytes": (bytes(range(128, 256)) * 3, r":1:1: not UTF-8 text"),
    "nul-byte": (b"type: task\ncommands: [x]\x00\n", r":2:\d+: NUL byte"),
    "control-character": (b"type: task\ncommands: ['a\x07b']\n", r":2:14: character U\+0007 is not allowed"),
    "type-list": (b"type: [a, b]\n", r":1: type: a list is not supported \(allowed: task"),
    "type-mapping": (b"type: {task: 1}\n", "type: a mapping is not supported"),
    "top-level-list": (b"- type: task\n", "expected a mapping of fields at the top .*got a list"),
    "top-level-scalar": (b"task\n", "expected a mapping of fields at the top .*got 'task'"),
    "resources-number": (b"type: task\ncommands: [x]\nresources: 5\n", ":3: resources: expected a mapping of fields"),
    "int-key": (b"type: task\ncommands: [x]\n1: x\n", r":3:1: the key 1 is not a string: quote it"),
    "list-key": (b"type: task\ncommands: [x]\n? [a]\n: x\n", r":3:3: a key must be a string, not a sequence"),
    "impossible-date": (b"type: task\ncommands: [x]\nname: 2024-02-30\n", r":3:7: cannot read this timestamp"),
    "fleet-hosts-number": (b"type: fleet\nname: my-fleet\nssh_config: {hosts: 5}\n", ":3: ssh_config.hosts: expected"),
    "recursive-alias": (b"type: task\ncommands: &a [*a]\n", "the alias \\*a refers to a value that contains it"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_a_broken_file_is_one_line_naming_the_file_and_the_problem(tmp_path, name):
    content, message = BROKEN_FILES[name]
    path = tmp_path / f"{name}.dstack.yml"
    path.write_bytes(content)
    for command in READING_COMMANDS:
        code, output = run_in_process(*command, str(path))
        assert code == 1, (command, output)
        assert output.count("\n") == 1 and output.startswith(f"error: {path}"), (command, output)
        assert re.search(message, output), (command, output)


# Runs `dstack ARGV...` from a small Python process, so that the child's peak RSS is its own (Linux keeps the
# high-water mark across fork and exec: a child of pytest would start at pytest's size). The 2 GiB address-space
# limit keeps a regression from exhausting the machine; the tests' bounds are far lower. The time is the child's CPU
# time, not the wall clock: under a loaded machine (a parallel suite) the wall clock measures the neighbours.
_MEASURE = """
import json, resource, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
with open(sys.argv[1], "wb") as log:
    child = subprocess.run([sys.executable, "-m", "cli.main", *sys.argv[2:]], stdout=log, stderr=log, timeout=60)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps([child.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024]))
"""


def _run_bounded(argv, tmp_path):
    """(exit code, output, CPU seconds, peak RSS in MB) of the CLI in a child process."""
    log = tmp_path / "output.txt"
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(log), *argv], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    code, seconds, peak_mb = json.loads(result.stdout)
    return code, log.read_text(errors="replace"), seconds, peak_mb


HUGE_FILES = {
    "billion-laughs": (lambda: billion_laughs(9), "values (YAML aliases expanded)"),
    "one-level-more": (lambda: billion_laughs(10), "values (YAML aliases expanded)"),
    "3000-deep-lists": (lambda: TASK + "resources: " + "[" * 3000 + "]" * 3000 + "\n", "nest more than 100 levels"),
    "3000-deep-mappings": (lambda: TASK + "env: " + "{a: " * 3000 + "b" + "}" * 3000 + "\n", "nest more than 100"),
    "a-million-values": (lambda: TASK + "ports: [" + "1," * 500_000 + "1]\n", "more than 10,000 values"),
    "two-mebibytes": (lambda: TASK + "# padding\n" * 200_000, "larger than 1 MiB"),
    "a-long-sexagesimal-number": (lambda: TASK + "nodes: 1" + ":59" * 300_000 + "\n", "longer than 100 digits"),
}


@pytest.mark.parametrize("name", sorted(HUGE_FILES) + ["dev-zero"])
def test_a_file_built_to_exhaust_resources_is_refused_quickly(tmp_path, name):
    if name == "dev-zero":
        path, message = "/dev/zero", "larger than 1 MiB"
    else:
        make, message = HUGE_FILES[name]
        path = tmp_path / "huge.dstack.yml"
        path.write_text(make())
    for command in (["apply", "--dry-run", "-f"], ["offers", "-f"]):
        code, output, cpu_seconds, peak_mb = _run_bounded([*command, str(path)], tmp_path)
        assert code == 1 and message in output and output.startswith(f"error: {path}"), output[:1000]
        assert "Traceback" not in output and len(output) < 500, output[:1000]
        assert cpu_seconds < 5 and peak_mb < 200, (cpu_seconds, peak_mb)


def test_many_wrong_values_are_listed_briefly(tmp_path):
    path = tmp_path / "many.dstack.yml"
    path.write_text("type: task\ncommands: [" + ", ".join(["{a: 1}"] * 3000) + "]\nname: '" + "X" * 100_000 + "'\n")
    code, output = run_in_process("apply", "--dry-run", "-f", str(path))
    assert code == 1 and "... and 2991 more problems" in output and len(output) < 3000, output[:3000]


def test_markup_in_a_file_is_printed_as_it_is(tmp_path):
    path = tmp_path / "[bold]task.dstack.yml"
    path.write_text(TASK + "resources:\n  gpu: 'A10[/x]:0..'\nregions: ['[/]', local]\n")
    for argv in (["apply", "--dry-run", "-f"], ["offers", "-f"], ["offers", "--group-by", "gpu", "-f"]):
        code, output = run_in_process(*argv, str(path))
        assert code == 0, output
        assert "gpu=A10[/x]:0.." in output and "regions [/],local" in output, output
        assert argv[0] == "offers" or f"from {path}" in output, output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e400", "1e-400", "abc"])
@pytest.mark.parametrize("command", [["offers"], ["apply", "--dry-run", "-f", "TASK"]])
def test_max_price_flag_must_be_a_positive_finite_number(tmp_path, command, value):
    task = tmp_path / "task.dstack.yml"
    task.write_text(TASK)
    argv = [str(task) if arg == "TASK" else arg for arg in command]
    code, output = run_in_process(*argv, "--max-price", value, "--json")
    assert code == 2, output
    assert f"Invalid value for '--max-price': '{value}' is not a price" in output


def test_max_price_flag_accepts_a_price(tmp_path):
    code, output = run_in_process("offers", "--max-price", "0.5", "--json", "--max-offers", "1")
    assert code == 0 and '"max_price": 0.5' in output, output


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400", "-1", "0", "'nan'"])
def test_max_price_in_a_file_must_be_a_positive_finite_number(tmp_path, value):
    path = tmp_path / "task.dstack.yml"
    path.write_text(f"{TASK}max_price: {value}\n")
    for command in (["offers", "-f"], ["apply", "--dry-run", "-f"]):
        code, output = run_in_process(*command, str(path))
        assert code == 1 and f"{path}:3: max_price: Input should be" in output, output


def test_config_and_secrets_files_are_read_within_the_same_bounds(dstack_home, tmp_path):
    task = tmp_path / "task.dstack.yml"
    task.write_text(TASK)
    dstack_home.mkdir(parents=True)
    (dstack_home / "config.yml").write_text(billion_laughs(9).replace("type: task\n", "").replace("commands", "x"))
    code, output = run_in_process("apply", "--dry-run", "-f", str(task))
    assert code == 1 and f"error: {dstack_home / 'config.yml'}:" in output and "more than 10,000 values" in output
    (dstack_home / "config.yml").unlink()
    (dstack_home / "secrets.yml").write_bytes("DB: 'pässwörd'\n".encode("latin-1"))
    code, output = run_in_process("apply", "--dry-run", "-f", str(task))
    assert code == 1 and f"error: {dstack_home / 'secrets.yml'}:1:" in output and "not UTF-8" in output, output
    assert "pässwörd" not in output


# --- properties: no input ever gives a traceback ----------------------------------------------------------------

KEYS = ["type", "name", "commands", "image", "python", "env", "ports", "resources", "cpu", "memory", "gpu", "disk",
        "shm_size", "count", "min", "max", "vendor", "max_price", "spot_policy", "backends", "regions", "nodes",
        "retry", "max_duration", "registry_auth", "username", "password", "ssh_config", "hosts", "hostname", "port",
        "user", "identity_file", "ide", "init", "inactivity_duration", "working_dir", "compute_capability"]
WORDS = ["task", "fleet", "dev-environment", "A100:2", "24GB..", "16..", "8GB", "nvidia:H100:8", "arm:8", "x86", "2h",
         "off", "8080:80", "*:8080", "3.11", "spot", "auto", "aws", "local", "ssh", "..", "1..2", "TOKEN", "A=1",
         "${{ run.args }}", "${{ secrets.X }}", "echo hi", "127.0.0.1", "1e400", "nan", "-1", ":", "",
         "A10[/x]", "[bold]"]  # rich markup: the plan and the offers are printed with rich
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS), st.text(max_size=12),
)
SCALAR_KEYS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False))  # hashable, not strings
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6), SCALAR_KEYS), children, max_size=5),
    ),
    max_leaves=25,
)
SPECS = ["A100", "A100:2", "24GB..", "16..", "8GB", "nvidia:H100:8", "arm:8", "x86", "1..2", "0", "100GB..", "tpu",
         "A10[/x]:1"]
PLAUSIBLE = st.one_of(st.sampled_from(WORDS + SPECS), st.lists(st.sampled_from(WORDS + SPECS), max_size=3))
TASKS = st.fixed_dictionaries(  # mostly valid: they get past validation to the solver and the plan
    {"type": st.just("task"),
     "commands": st.lists(st.sampled_from(WORDS) | st.text(max_size=8), min_size=1, max_size=3)},
    optional={
        "resources": st.dictionaries(st.sampled_from(["cpu", "memory", "gpu", "disk", "shm_size"]),
                                     st.sampled_from(SPECS) | SCALARS, max_size=3),
        "max_price": st.floats() | st.sampled_from(WORDS), "env": PLAUSIBLE, "ports": PLAUSIBLE,
        "backends": PLAUSIBLE, "regions": PLAUSIBLE, "spot_policy": PLAUSIBLE, "max_duration": PLAUSIBLE,
        "name": st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True) | SCALARS, "nodes": SCALARS,
    },
)
CONFIGURATIONS = st.one_of(
    TASKS,
    st.fixed_dictionaries({"type": st.sampled_from(["task", "dev-environment", "fleet"]) | VALUES},
                          optional=dict.fromkeys(KEYS[1:], VALUES)),
    VALUES,
)
YAML_TEXTS = st.builds(
    lambda data, flow: yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True),
    CONFIGURATIONS, st.sampled_from([False, True, None]),
)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"]
FILE_BYTES = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda text, encoding: text.encode(encoding, errors="ignore"), YAML_TEXTS, st.sampled_from(ENCODINGS)),
    st.builds(lambda text, junk, at: (text[:at] + junk + text[at:]).encode("utf-8"),
              YAML_TEXTS, st.text(max_size=4), st.integers(0, 200)),
)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _assert_no_traceback(path, content):
    path.write_bytes(content)
    for command in (["apply", "--dry-run", "-f"], ["offers", "-f"]):
        code, output = run_in_process(*command, str(path))  # tables, not --json: they print the file's text
        assert code in (0, 1, 2), (command, code, output[-2000:])
        assert "Traceback" not in output, output[-2000:]
        if code == 1:
            assert len(output) < 5000, output[:5000]
            if "error: no offers match" in output:  # a dry run with no offer prints its plan, then fails
                assert output.splitlines()[-1].startswith("error: no offers match"), output
            else:
                assert output.startswith("error: "), output


@FUZZ
@given(content=FILE_BYTES)
def test_no_bytes_give_a_traceback(tmp_path, content):
    _assert_no_traceback(tmp_path / "fuzz.dstack.yml", content)


@FUZZ
@given(text=YAML_TEXTS)
def test_no_yaml_structure_gives_a_traceback(tmp_path, text):
    _assert_no_traceback(tmp_path / "fuzz.dstack.yml", text.encode("utf-8"))

