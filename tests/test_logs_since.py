"""Issue 20: `dstack logs --since` works for every run, detached ones included. The host records when the job's
output arrives (provisioner.jobs.launch.OUTPUT_SIZES) without standing in its way; `--since` reads it while the
run lives, and the copy taken when the run ended unattended afterwards. Through the CLI, on this machine and on a
namespace SSH host."""

import json
import math
import time
from datetime import datetime, timezone

import pytest

from tests.helpers import run_cli, write


def logs(env, *args):
    result = run_cli("logs", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(env, name, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in logs(env, name):
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} did not come: {logs(env, name)!r}")


def status(env, name):
    runs = json.loads(run_cli("ps", "-a", "--json", env=env).stdout)["runs"]
    return next(run["status"] for run in runs if run["name"] == name)


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("backend", ["local", "ssh"])
def test_logs_since_of_a_detached_run_while_it_runs_and_after_it_ended(tmp_path, dstack_home, backend, request):
    env = {"DSTACK_HOME": str(dstack_home)}
    if backend == "ssh":
        from tests.test_host_root_fields import apply_fleet

        apply_fleet(tmp_path, env, request.getfixturevalue("client_key"), request.getfixturevalue("make_host")(),
                    "root")
    gates = [tmp_path / "two", tmp_path / "end"]  # the job goes on when the test makes each (the host shares files)
    wait = "while [ ! -f {} ]; do sleep 0.1; done"
    task = write(tmp_path, "t.dstack.yml", f"type: task\nname: since-{backend}\nbackends: [{backend}]\n"
                 f"commands: ['echo one', '{wait.format(gates[0])}', 'echo two', '{wait.format(gates[1])}']\n")
    name = f"since-{backend}"
    try:
        started = run_cli("apply", "-f", task, "-y", "-d", env=env)
        assert started.returncode == 0, started.stderr
        wait_for(env, name, "one")
        time.sleep(1)  # the host has recorded "one" by now (it samples every 0.5 s)
        between = math.ceil(time.time())
        while time.time() <= between:
            time.sleep(0.05)
        gates[0].touch()  # "two" comes after `between`
        wait_for(env, name, "two")
        assert status(env, name) == "running"
        deadline = time.monotonic() + 10  # the host samples every 0.5 s: on a loaded machine, later than "two" shows
        while logs(env, name, "--since", rfc3339(between)) != "two\n" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert logs(env, name, "--since", rfc3339(between)) == "two\n"  # from the host's record
        assert logs(env, name, "--since", "1h") == "one\ntwo\n"
        assert logs(env, name, "--since", "2099-01-01T00:00:00Z") == ""
        gates[1].touch()
        deadline = time.monotonic() + 60
        while status(env, name) == "running" and time.monotonic() < deadline:  # `ps` finishes it: its log copied
            time.sleep(0.5)
        assert status(env, name) == "done"
        assert (dstack_home / "runs" / name / "output.times").exists()
        assert logs(env, name, "--since", rfc3339(between)) == "two\n"  # from the copy, the same
        assert logs(env, name, "--since", "1h") == "one\ntwo\n"
    finally:  # a failed check never leaves the job waiting for its gates (on this machine or the namespace host)
        for gate in gates:
            gate.touch()
        run_cli("stop", name, "--abort", "-y", env=env)
