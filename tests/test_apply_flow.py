"""`dstack apply` as a dstack user knows it (issue 25): a finished run's name submitted again with its history kept
apart, an active one stopped and overridden only when asked to, `run get`, `delete` taking a run's files, what fails
before anything is created, dstack's plan rows and dstack's apply flags."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import run_cli, write
from tests.test_apply_interrupt import in_terminal, read_until


def ps(env):
    result = run_cli("ps", "-a", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)["runs"]}


def events(env, name):
    result = run_cli("event", name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["events"]


def echo_task(tmp_path, name, extra=""):
    return write(tmp_path, f"{name}.dstack.yml", f"type: task\nname: {name}\n{extra}commands: [echo run-$MODE]\n")


def test_a_finished_runs_name_is_submitted_again_and_the_earlier_run_kept_apart(tmp_path, home_env):
    conf = echo_task(tmp_path, "again")
    first = run_cli("apply", "-f", conf, "-y", "-e", "MODE=1", env=home_env)
    assert first.returncode == 0 and first.stdout == "run-1\n", first.stderr
    plan = run_cli("apply", "-f", conf, "--dry-run", "--json", env=home_env)
    assert any("run again ended earlier (done): applying submits it again" in n
               for n in json.loads(plan.stdout)["notes"])
    second = run_cli("apply", "-f", conf, "-y", "-e", "MODE=2", env=home_env)
    assert second.returncode == 0 and second.stdout == "run-2\n", second.stderr
    runs = ps(home_env)
    assert (runs["again"]["status"], runs["again@1"]["status"]) == ("done", "done")
    assert run_cli("logs", "again", env=home_env).stdout == "run-2\n"
    assert run_cli("logs", "again@1", env=home_env).stdout == "run-1\n"
    assert run_cli("logs", "again", "--since", "1h", env=home_env).stdout == "run-2\n"
    assert [e["kind"] for e in events(home_env, "again")].count("submitted") == 1
    assert [e["kind"] for e in events(home_env, "again@1")].count("submitted") == 1
    third = run_cli("apply", "-f", conf, "-y", "-e", "MODE=3", env=home_env)
    assert third.returncode == 0 and "kept as again@2" in third.stderr
    assert run_cli("logs", "again@2", env=home_env).stdout == "run-2\n"


def test_an_active_run_is_overridden_only_with_force_or_when_asked(tmp_path, home_env):
    conf = write(tmp_path, "busy.dstack.yml", "type: task\nname: busy\ncommands: [echo up, sleep 300]\n")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=home_env).returncode == 0
    try:
        refused = run_cli("apply", "-f", conf, "-y", "-d", env=home_env)
        assert refused.returncode == 1 and "run busy is running: --force stops it" in refused.stderr
        assert "Offers" not in refused.stderr  # before the plan
        plan = json.loads(run_cli("apply", "-f", conf, "--dry-run", "--json", env=home_env).stdout)
        assert any("run busy is running: applying stops it" in note for note in plan["notes"])
        process, controller = in_terminal(["apply", "-f", conf, "-d"], home_env)
        try:
            read_until(controller, b"Stop and override the run?")
            os.write(controller, b"n\n")
            assert process.wait(30) == 1
        finally:
            os.close(controller)
        assert ps(home_env)["busy"]["status"] == "running"
        forced = run_cli("apply", "-f", conf, "-y", "-d", "--force", env=home_env)
        assert forced.returncode == 0, forced.stderr
        runs = ps(home_env)
        assert runs["busy"]["status"] == "running"
        assert (runs["busy@1"]["status"], runs["busy@1"]["reason"]) == ("terminated", "stopped by user")
    finally:
        run_cli("stop", "busy", "-x", "-y", env=home_env)


def test_what_a_cloud_run_lacks_fails_before_the_plan_and_leaves_no_record(tmp_path, home_env, no_aws_credentials):
    conf = echo_task(tmp_path, "pre")
    env = dict(home_env, HOME=str(tmp_path), PATH=os.path.dirname(sys.executable))  # no pulumi, no ~/.pulumi
    result = run_cli("apply", "-f", conf, "-b", "aws", "-y", env=env)
    assert result.returncode == 1
    assert "The Pulumi CLI is not installed" in result.stderr and "AWS credentials are missing" in result.stderr
    assert "Offers" not in result.stderr and "Traceback" not in result.stderr
    assert "pre" not in ps(home_env)
    assert not (tmp_path / "dstack-home" / "runs" / "pre").exists()
    dry = run_cli("apply", "-f", conf, "-b", "aws", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "warning: a run would fail: AWS credentials are missing" in dry.stderr
    assert any("Pulumi CLI" in problem for problem in json.loads(dry.stdout)["problems"])


def test_a_schedule_without_cron_fails_before_the_plan_and_registers_nothing(tmp_path, home_env):
    conf = write(tmp_path, "s.dstack.yml", "type: task\nname: nightly\nschedule: {cron: '0 3 * * *'}\n"
                 "commands: [echo]\n")
    env = dict(home_env, PATH=os.path.dirname(sys.executable))  # no crontab
    result = run_cli("apply", "-f", conf, "-y", env=env)
    assert result.returncode == 1 and "`schedule` needs cron" in result.stderr
    assert "Offers" not in result.stderr
    assert "No scheduled runs" in run_cli("schedule", "list", env=env).stdout


def test_run_get_shows_a_run_and_never_submits(tmp_path, home_env):
    conf = echo_task(tmp_path, "shown")
    assert run_cli("apply", "-f", conf, "-y", env=home_env).returncode == 0
    got = run_cli("run", "get", "shown", "--json", env=home_env)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["run"]["name"] == "shown" and json.loads(got.stdout)["run"]["status"] == "done"
    assert "done" in run_cli("run", "get", "shown", env=home_env).stdout
    (tmp_path / ".dstack.yml").write_text("type: task\nname: never\ncommands: [echo]\n")
    for args in (["run", "-f", conf, "-y"], ["run", "get", "never", "--json"]):
        refused = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=tmp_path, capture_output=True,
                                 text=True, env=dict(os.environ, **home_env, PYTHONPATH=os.getcwd()), input="y\n")
        assert refused.returncode != 0 and "Submit" not in refused.stderr
    assert set(ps(home_env)) == {"shown"}


def test_delete_takes_the_runs_files_with_it(tmp_path, home_env):
    conf = echo_task(tmp_path, "gone")
    assert run_cli("apply", "-f", conf, "-y", "-e", "MODE=old", env=home_env).returncode == 0
    assert run_cli("delete", "gone", env=home_env).returncode == 0
    assert not (tmp_path / "dstack-home" / "runs" / "gone").exists()
    assert run_cli("apply", "-f", conf, "-y", "-e", "MODE=new", env=home_env).returncode == 0
    assert run_cli("logs", "gone", "--since", "1d", env=home_env).stdout == "run-new\n"
    diagnostics = run_cli("logs", "gone", "-d", env=home_env).stdout
    assert diagnostics.count("gone done") == 1, diagnostics


def plan_text(folder, *args, env):
    result = subprocess.run([sys.executable, "-m", "cli.main", "apply", "--dry-run", *args], cwd=folder,
                            capture_output=True, text=True, env=dict(os.environ, **env, PYTHONPATH=os.getcwd()))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_plan_has_dstacks_rows_and_says_what_is_uploaded(tmp_path, home_env):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / ".dstack.yml").write_text("type: task\ncommands: [x]\nspot_policy: auto\nmax_price: 2.5\n"
                                      "retry: {on_events: [no-capacity], duration: 1h}\nmax_duration: 2h\n"
                                      "idle_duration: 30m\nbackends: [aws]\nresources: {gpu: T4}\n")
    text = plan_text(bare, env=home_env)
    for row in ("Type           task (nodes=1)", "Spot policy    auto", "Max price      $2.5",
                "Retry policy   on no-capacity for 1h", "Idle duration  30m", "Max duration   2h",
                "Uploads        nothing: not a git repository"):
        assert row in text, text
    assert "Creation policy" not in text and "Reservation" not in text
    verbose = plan_text(bare, "-v", env=home_env)
    assert "Creation policy  reuse-or-create" in verbose and "Reservation      no" in verbose
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".dstack.yml").write_text("type: task\ncommands: [x]\n")
    (repo / "train.py").write_text("print(1)\n" * 1000)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert f"repo {repo}, 2 files, 0.0 MB" in plan_text(repo, env=home_env)
    assert "nothing: --no-repo" in plan_text(repo, "--no-repo", env=home_env)


def dry_configuration(tmp_path, *args, text="type: task\nname: flags\nports: ['8080:80']\ncommands: [x]\n"):
    conf = write(tmp_path, "f.dstack.yml", text)
    return run_cli("apply", "-f", conf, "--dry-run", "--json", *args)


def test_dstacks_apply_flags_are_acted_upon(tmp_path):
    def configuration(*args, **kwargs):
        result = dry_configuration(tmp_path, *args, **kwargs)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["configuration"]

    assert configuration("--idle-duration", "30m")["idle_duration"] == 1800
    assert configuration("--dont-destroy")["idle_duration"] == -1
    assert configuration("-p", "9000:80", "-p", "8443")["ports"] == [
        {"local_port": 9000, "container_port": 80}, {"local_port": 8443, "container_port": 8443}]
    repos = configuration("-P", "https://github.com/me/x.git", "--repo-branch", "dev", "--repo-hash", "abc123")["repos"]
    assert (repos[0]["url"], repos[0]["branch"], repos[0]["hash"]) == ("https://github.com/me/x.git", "dev", "abc123")
    assert configuration("-P", ".")["repos"][0]["local_path"] == os.getcwd()  # relative to the current folder
    assert configuration("--host", "localhost")["name"] == "flags"


@pytest.mark.parametrize("args, message", [
    (["--idle-duration", "30m", "-R"], "--idle-duration and -R/--reuse exclude each other"),
    (["--dont-destroy", "--idle-duration", "1h"], "exclude each other"),
    (["--idle-duration", "soon"], "--idle-duration"),
    (["-p", "80-90"], "port ranges are not supported"),
    (["--host", "0.0.0.0"], "forwarded ports listen on 127.0.0.1 alone"),
    (["--ssh-identity", "~/.ssh/id_rsa"], "--ssh-identity"),
    (["--repo-branch", "dev"], "applies to a repo given by URL"),
    (["-P", ".", "--no-repo"], "--no-repo says there is none"),
])
def test_dstacks_apply_flags_refused_by_name(tmp_path, args, message):
    result = dry_configuration(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr and "No such option" not in result.stderr, \
        result.stderr


def test_run_flags_on_a_fleet_are_refused_by_name(tmp_path):
    conf = write(tmp_path, "fl.dstack.yml", "type: fleet\nname: fl\nssh_config: {user: u, hosts: [10.251.0.9]}\n")
    result = run_cli("apply", "-f", conf, "--force", "--idle-duration", "1h", "--dry-run")
    assert result.returncode == 1 and "--idle-duration, --force apply to runs, not to a fleet" in result.stderr
