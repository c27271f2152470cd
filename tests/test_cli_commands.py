"""dstack's commands and flags: `offer` (and `offers`), `apply`'s flags over the file, `-f -` and `.dstack.yml`,
`ps -w/-n/-v`, `logs --since/-d/--node`, `stop -x/-y`, `fleet list|get|delete`, `volume`, `init`, exit codes and
shell completion."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cli.app import COMMANDS, load_command
from tests.helpers import ROOT, free_port, run_cli


def cli_in(folder, *args, env=None, input=None):
    """The CLI run from another folder, as a user in their project would."""
    return run_cli(*args, env=dict(PYTHONPATH=str(ROOT), **(env or {})), input=input, cwd=folder)


def test_the_help_table_says_what_each_command_says():
    for name, spec in COMMANDS.items():
        if spec.alias_of:
            assert COMMANDS[spec.alias_of].target == spec.target
            continue
        command = load_command(name, spec)
        first_paragraph = " ".join((command.help or "").split("\n\n")[0].split())
        assert first_paragraph == spec.help, name


def test_help_lists_every_command_and_each_command_has_help():
    listed = run_cli("--help").stdout
    for name in COMMANDS:
        assert f"  {name} " in listed
        result = run_cli(*name.split(), "--help")
        assert result.returncode == 0 and "Usage: dstack" in result.stdout, name


def test_offer_is_dstacks_name_and_offers_an_alias():
    args = ["--gpu", "H100:8", "--json", "--max-offers", "2"]
    offer, offers = run_cli("offer", *args), run_cli("offers", *args)
    assert offer.returncode == 0 and offer.stdout == offers.stdout
    assert len(json.loads(offer.stdout)["offers"]) == 2


def dry_run(folder, *args, input=None, env=None):
    result = cli_in(folder, "apply", *args, "--dry-run", "--json", input=input, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["configuration"]


def test_apply_reads_dstack_yml_by_default_and_stdin_with_dash(tmp_path):
    text = "type: task\nname: from-default\ncommands: [echo]\n"
    missing = cli_in(tmp_path, "apply", "--dry-run")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"no .dstack.yml in {tmp_path}: give the configuration with -f FILE" in missing.stderr
    (tmp_path / ".dstack.yml").write_text(text)
    assert dry_run(tmp_path)["name"] == "from-default"
    assert dry_run(tmp_path, "-f", "-", input=text.replace("from-default", "from-stdin"))["name"] == "from-stdin"
    bad = cli_in(tmp_path, "apply", "-f", "-", "--dry-run", input="type: task\ncomands: [x]\n")
    assert bad.returncode == 1 and bad.stderr == "error: <stdin>:2: unknown field 'comands' (did you mean 'commands'?)\n"


def test_apply_flags_override_the_file(tmp_path):
    (tmp_path / ".dstack.yml").write_text(
        "type: task\ncommands: [x]\nenv: [A=file, B=file]\nmax_duration: 2h\nspot_policy: spot\nbackends: [aws]\n"
        "retry: {on_events: [no-capacity], duration: 1h}\n")
    from_file = dry_run(tmp_path)
    assert (from_file["max_duration"], from_file["retry"]) == (7200, {"on_events": ["no-capacity"], "duration": 3600})
    flags = dry_run(tmp_path, "-e", "B=flag", "-e", "C", "--max-duration", "30m", "--retry-duration", "10m",
                    "--spot-policy", "auto", env={"C": "from-env"})
    assert flags["env"] == {"A": "file", "B": "flag", "C": "[secret]"}  # a bare name's value is the caller's
    assert flags["max_duration"] == 1800
    assert flags["retry"] == {"on_events": ["no-capacity"], "duration": 600}  # the file's events, the flag's duration
    assert flags["spot_policy"] == "spot"  # the configuration as written; the request below is the flag's
    assert ", spot, backends aws\n" in cli_in(tmp_path, "apply", "--dry-run").stdout.split("Offers")[0]
    assert ", spot or on-demand, backends aws\n" in cli_in(tmp_path, "apply", "--spot-policy", "auto", "--dry-run").stdout
    assert dry_run(tmp_path, "--no-retry")["retry"] is None
    assert dry_run(tmp_path, "--retry")["retry"]["on_events"] == ["no-capacity", "interruption", "error"]
    assert dry_run(tmp_path, "--max-duration", "off")["max_duration"] == "off"


@pytest.mark.parametrize("args, message", [
    (["--max-duration", "soon"], "Invalid duration"),
    (["--spot-policy", "cheap"], "'cheap' is not one of spot, on-demand, auto"),
    (["--spot", "--spot-policy", "auto"], "give only one of them"),
    (["--no-retry", "--retry-duration", "1h"], "--no-retry takes no duration"),
    (["-e", "1BAD=x"], "-e/--env"),
    (["--fleet", "nowhere"], "no fleet named nowhere"),
    (["-R", "-b", "aws"], "--reuse takes hosts that exist already"),
    (["--max-offers", "0"], "--max-offers"),
])
def test_bad_apply_flags_are_usage_errors(tmp_path, args, message):
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: [x]\n")
    result = cli_in(tmp_path, "apply", *args, "--dry-run")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_dry_run_without_an_offer_fails_and_reuse_takes_existing_hosts_only(tmp_path):
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: [x]\nresources: {gpu: H100:8}\n")
    assert cli_in(tmp_path, "apply", "-b", "aws", "--dry-run", "--json").returncode == 0  # clouds have H100s
    unconfigured = cli_in(tmp_path, "apply", "--dry-run", "--json")  # the offers a run would consider: no cloud
    assert unconfigured.returncode == 1 and json.loads(unconfigured.stdout)["offer"] is None
    assert "no cloud is configured" in unconfigured.stderr
    reuse = cli_in(tmp_path, "apply", "-R", "--dry-run", "--json")  # this machine has none, and no fleet exists
    assert reuse.returncode == 1
    assert json.loads(reuse.stdout)["offer"] is None
    assert "error: no offers match" in reuse.stderr


def test_max_offers_limits_the_plan(tmp_path):
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: [x]\nresources: {gpu: A100}\n")
    plan = cli_in(tmp_path, "apply", "--dry-run", "--max-offers", "2", "-b", "aws").stdout
    assert "offers match, showing 2;" in plan
    rows = [line for line in plan.splitlines() if line.strip()[:2] in ("1 ", "2 ", "3 ")]
    assert len(rows) == 2


def test_no_repo_uploads_nothing(tmp_path, dstack_home):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # only a repository is uploaded
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: ['ls']\n")
    env = {"DSTACK_HOME": str(dstack_home)}
    with_repo = cli_in(tmp_path, "apply", "-y", "-n", "with-repo", env=env)
    assert with_repo.returncode == 0 and "data.txt" in with_repo.stdout
    without = cli_in(tmp_path, "apply", "-y", "-n", "no-repo", "--no-repo", env=env)
    assert without.returncode == 0, without.stderr
    assert "data.txt" not in without.stdout


def test_ps_last_verbose_logs_since_diagnose_and_node(tmp_path, dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    port = free_port()
    (tmp_path / ".dstack.yml").write_text(f"type: task\nports: [{port}]\n"
                                          "commands: ['echo one', 'sleep 2', 'echo two']\n")
    assert cli_in(tmp_path, "apply", "-y", "-n", "first", env=env).returncode == 0
    assert cli_in(tmp_path, "apply", "-y", "-n", "second", env=env).returncode == 0
    last = json.loads(run_cli("ps", "-n", "1", "--json", "-v", env=env).stdout)["runs"]
    assert [r["name"] for r in last] == ["second"]  # -n implies --all: finished runs count
    job = last[0]["jobs"][0]
    assert len(last[0]["jobs"]) == 1 and job["started_at"] <= job["finished_at"]
    assert {k: v for k, v in job.items() if not k.endswith("_at")} == {
        "node": 0, "status": "done", "host": "this machine", "ports": [[port, port]], "exit_code": 0,
        "attempts": []}
    table = run_cli("ps", "-n", "2", "-v", env=env).stdout
    assert "HOST" in table and "this machine" in table and f"localhost:{port}->{port}" in table
    assert run_cli("logs", "second", env=env).stdout == "one\ntwo\n"
    assert run_cli("logs", "second", "--since", "1h", env=env).stdout == "one\ntwo\n"
    assert run_cli("logs", "second", "--since", "2099-01-01T00:00:00Z", env=env).stdout == ""
    # what arrived after a moment: the arrival times are rewritten so that "two" came 2 hours after "one"
    now = time.time()
    (dstack_home / "runs" / "second" / "output.times").write_text(f"{now - 3 * 3600:.3f} 0\n{now - 3600:.3f} 4\n")
    assert run_cli("logs", "second", "--since", "2h", env=env).stdout == "two\n"
    assert run_cli("logs", "second", "--since", "4h", env=env).stdout == "one\ntwo\n"
    diagnose = run_cli("logs", "second", "-d", env=env)
    assert "Provisioning local local localhost" in diagnose.stdout and "second done" in diagnose.stdout
    assert "started" in diagnose.stdout and "exited" in diagnose.stdout  # then its events
    node = run_cli("logs", "second", "--node", "1", env=env)
    assert node.returncode == 2 and "second has one node, 0" in node.stderr
    bad = run_cli("logs", "second", "--since", "yesterday", env=env)
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_ps_watch_refreshes_until_ctrl_c(dstack_home):
    """The second listing is waited for as it comes (unbuffered output), not for a fixed time, which a loaded
    machine can outlast before the first one."""
    env = dict(os.environ, DSTACK_HOME=str(dstack_home), PYTHONUNBUFFERED="1")
    watcher = subprocess.Popen([sys.executable, "-m", "cli.main", "ps", "-w", "-a"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(60, watcher.kill)  # a watcher that never prints twice fails the test, not the suite
    guard.start()
    listings = 0
    for line in watcher.stdout:
        listings += "No runs." in line
        if listings == 2:  # printed again after WATCH_INTERVAL_S
            break
    guard.cancel()
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=30)
    assert listings == 2 and watcher.returncode == 0, err


def test_stop_abort_and_yes(tmp_path, dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: ['sleep 60']\n")
    assert cli_in(tmp_path, "apply", "-y", "-d", "-n", "long", env=env).returncode == 0
    stopped = run_cli("stop", "-x", "-y", "long", env=env)
    assert stopped.returncode == 0, stopped.stderr
    record = json.loads(run_cli("ps", "-a", "--json", env=env).stdout)["runs"][0]
    assert (record["status"], record["reason"]) == ("terminated", "aborted")


def test_a_failed_run_exits_non_zero(tmp_path, dstack_home):
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: ['exit 7']\n")
    assert cli_in(tmp_path, "apply", "-y", env={"DSTACK_HOME": str(dstack_home)}).returncode == 7


def test_fleet_list_get_delete_without_fleets(dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    assert json.loads(run_cli("fleet", "list", "--json", env=env).stdout) == {"fleets": []}
    assert run_cli("fleet", env=env).stdout.startswith("No fleets.")
    for args in (["fleet", "get", "lab"], ["fleet", "delete", "lab", "-y"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1 and result.stderr == "error: no fleet named lab (see `dstack fleet list`)\n"


def test_volume_without_volumes(dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    assert json.loads(run_cli("volume", "list", "--json", env=env).stdout) == {"volumes": []}
    assert run_cli("volume", env=env).stdout.startswith("No volumes.")
    for args in (["volume", "get", "v1"], ["volume", "delete", "v1", "-y"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1 and result.stderr == "error: no volume named v1 (see `dstack volume list`)\n"


def test_init_sets_up_the_home_and_names_the_backends(dstack_home):
    result = run_cli("init", "--json", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (dstack_home / "state.db").exists() and oct(dstack_home.stat().st_mode & 0o777) == "0o700"
    assert [b["backend"] for b in document["backends"]] == ["local", "ssh", "aws", "gcp"]
    assert document["backends"][0]["ready"] and not document["backends"][1]["ready"]
    assert "not configured" in document["backends"][2]["detail"]


def test_shell_completion():
    script = run_cli("completion", "bash")
    assert script.returncode == 0 and "_DSTACK_COMPLETE" in script.stdout
    completed = run_cli(env={"_DSTACK_COMPLETE": "complete_bash", "COMP_WORDS": "dstack of", "COMP_CWORD": "1"})
    assert set(completed.stdout.split()) == {"offer", "offers"}
    flags = run_cli(env={"_DSTACK_COMPLETE": "complete_bash", "COMP_WORDS": "dstack ps --w", "COMP_CWORD": "2"})
    assert flags.stdout.split() == ["--watch"]
    assert run_cli("completion", "tcsh").returncode == 2
