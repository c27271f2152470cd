"""`dstack ps` without typer (cli.ps_listing.answer_ps, which cli.main takes for the common command lines) against the
typer app (cli.app) on the same arguments and the same store: the same output byte for byte, the same errors and
help, the same exit status; and the plain path really starts no typer."""

import json
import os
import subprocess
import sys

import pytest

from provisioner.store.records import RunRecord
from provisioner.store.statuses import RunStatus
from provisioner.store.store import StateStore
from tests.helpers import ROOT, run_cli

ARGS = [
    [], ["-a"], ["--all"], ["-n", "2"], ["-n2"], ["--last=2"], ["--last", "3", "-v"], ["-a", "--json"],
    ["--format", "json", "-n", "1"], ["--format=plain", "-a"], ["-a", "--verbose"], ["--mine", "-a"], ["--json"],
    # errors and help: left to the typer app
    ["-n", "0"], ["-n", "x"], ["-n"], ["--format", "xml"], ["-x"], ["NAME"], ["-av"], ["-h"], ["--help"],
    ["-a", "-a"], ["--json=1"], ["-n", "2", "-n", "3"], ["--", "-a"],
]


@pytest.fixture
def listed_home(dstack_home):
    """Finished runs submitted long ago (their age in days and their cost do not change between two commands)."""
    store = StateStore()
    for i, status in enumerate((RunStatus.DONE, RunStatus.FAILED, RunStatus.DONE, RunStatus.TERMINATED)):
        store.create_run(RunRecord(name=f"old-{i}", status=status, submitted_at=1e9 + i, backend="aws",
                                   region="us-east-1", instance="g5.xlarge", price=1.006, started_at=1e9 + i + 5,
                                   finished_at=1e9 + i + 3600, exit_code=i, reason="lost" if i == 1 else None,
                                   configuration={"type": "task", "commands": ["echo hi"]}))
    return {"DSTACK_HOME": str(dstack_home)}


def answer(args, env, entry) -> tuple:
    """(exit status, stdout, stderr); in JSON, each run's `age_s` (seconds since its submission: it grows between
    two commands) left out."""
    done = run_cli("ps", *args, env=env, entry=entry)
    out = done.stdout
    if out.startswith("{"):
        document = json.loads(out)
        for run in document["runs"]:
            assert run.pop("age_s") > 0
        out = json.dumps(document)
    return done.returncode, out, done.stderr


@pytest.mark.parametrize("args", ARGS, ids=" ".join)
def test_plain_ps_answers_as_the_typer_app(args, listed_home):
    assert answer(args, listed_home, "cli.main") == answer(args, listed_home, "cli.app")


def test_plain_ps_lists_the_runs(listed_home):
    listed = json.loads(run_cli("ps", "-a", "--json", env=listed_home).stdout)["runs"]
    assert [run["name"] for run in listed] == ["old-3", "old-2", "old-1", "old-0"]
    assert "old-3" in run_cli("ps", env=listed_home).stdout  # none active: the last run


def test_plain_ps_starts_no_typer(listed_home):
    code = ("import sys; sys.argv = ['dstack', 'ps', '-a']\nimport cli.main\ntry:\n    cli.main.main()\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('typer', 'click') if m in sys.modules), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **listed_home})
    assert "old-0" in out.stdout and out.stderr.strip().splitlines()[-1] == "[]", out.stderr


def test_the_plain_flags_are_the_typer_commands():
    from cli.app import COMMANDS, load_command
    from cli.ps_listing import FLAGS

    command = load_command("ps", COMMANDS["ps"])
    by_name = {name: param for param in command.params for name in param.opts + param.secondary_opts}
    assert set(FLAGS) == set(by_name) - {"-h", "--help"}
    for name, (parameter, takes_value, repeats) in FLAGS.items():
        param = by_name[name]
        assert (param.name, not param.is_flag, param.multiple) == (parameter, takes_value, repeats), name
