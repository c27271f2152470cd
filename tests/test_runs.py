"""Runs end to end through the `dstack` command: on this machine (the local backend) and on an SSH fleet of
namespace hosts; Ctrl-C, a killed dstack, stop, detach and attach."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli, write


def ps(env, *extra):
    result = run_cli("ps", "-a", "--json", *extra, env=env)
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)["runs"]}


def spawn(args, env):
    full = dict(os.environ, **env)
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_output(process, needle: bytes, timeout=30):
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        data = process.stdout.read() or b""
        seen += data
        if needle in seen:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never came; saw {seen!r}; stderr {process.stderr.read()!r}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_status(env, name, status, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = ps(env)
        if runs.get(name, {}).get("status") == status:
            return runs[name]
        time.sleep(0.2)
    raise AssertionError(f"{name} never became {status}: {ps(env).get(name)}")


def test_local_task_output_exit_code_ps_and_logs(tmp_path, home_env):
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: local-ok\npython: '3.11'\nenv: [MODE=fast]\n"
                 "commands:\n  - echo mode=$MODE args=${{ run.args }}\n  - python -c 'print(6*7)'\n")
    result = run_cli("apply", "-f", conf, "-y", "--", "--lr", "0.1 0.2", env=home_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "mode=fast args=--lr 0.1 0.2\n42\n"  # the args reach the shell quoted
    run = ps(home_env)["local-ok"]
    assert (run["status"], run["backend"], run["exit_code"], run["price"]) == ("done", "local", 0, 0.0)
    assert run_cli("logs", "local-ok", env=home_env).stdout == result.stdout
    listed = run_cli("ps", env=home_env).stdout.splitlines()  # none active: the last run, as dstack's `ps`
    assert len(listed) == 2 and listed[1].split()[:3] == ["local-ok", "done", "local"], listed
    again = run_cli("apply", "-f", conf, "-y", env=home_env)  # a finished run's name is submitted again
    assert again.returncode == 0 and "kept as local-ok@1" in again.stderr
    assert {"local-ok", "local-ok@1"} <= set(ps(home_env))


def test_failing_task_reports_its_exit_code(tmp_path, home_env):
    conf = write(tmp_path, "f.dstack.yml", "type: task\nname: local-fail\ncommands: [echo before, 'exit 3']\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert result.returncode == 3 and result.stdout == "before\n"
    run = ps(home_env)["local-fail"]
    assert (run["status"], run["exit_code"], run["reason"]) == ("failed", 3, "exit code 3")


def test_detached_run_stop_and_logs(tmp_path, home_env):
    conf = write(tmp_path, "s.dstack.yml", "type: task\nname: local-long\ncommands: [echo started, sleep 300]\n")
    result = run_cli("apply", "-f", conf, "-y", "-d", env=home_env)
    assert result.returncode == 0, result.stderr
    assert ps(home_env)["local-long"]["status"] == "running"
    deadline = time.monotonic() + 10
    while "started" not in run_cli("logs", "local-long", env=home_env).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = run_cli("stop", "local-long", env=home_env)
    assert stopped.returncode == 0, stopped.stderr
    run = ps(home_env)["local-long"]
    assert (run["status"], run["reason"], run["exit_code"]) == ("terminated", "stopped by user", 143)
    pid = (Path(home_env["DSTACK_HOME"]) / "jobs" / "local-long" / "pid").read_text().strip()
    assert not group_alive(int(pid))


def test_detached_run_reattached(tmp_path, home_env):
    conf = write(tmp_path, "a.dstack.yml", "type: task\nname: local-attach\n"
                 "commands: ['for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done']\n")
    assert run_cli("apply", "-f", conf, "-y", "--detach", env=home_env).returncode == 0
    attached = run_cli("attach", "local-attach", "--logs", env=home_env)
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == "".join(f"tick {i}\n" for i in range(1, 6))
    assert wait_status(home_env, "local-attach", "done")["exit_code"] == 0  # the next ps finishes it


def test_sigterm_during_a_run_stops_it_and_leaves_nothing(tmp_path, home_env):
    conf = write(tmp_path, "i.dstack.yml", "type: task\nname: local-int\ncommands: [echo running, sleep 300]\n")
    process = spawn(["apply", "-f", conf, "-y"], home_env)
    wait_for_output(process, b"running")
    process.send_signal(signal.SIGTERM)  # Ctrl-C with -y detaches (tests/test_apply_interrupt.py)
    assert process.wait(30) == 128 + signal.SIGTERM
    run = ps(home_env)["local-int"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")
    pid = (Path(home_env["DSTACK_HOME"]) / "jobs" / "local-int" / "pid").read_text().strip()
    assert not group_alive(int(pid))


def test_killed_dstack_is_completed_by_the_next_ps(tmp_path, home_env):
    conf = write(tmp_path, "k.dstack.yml", "type: task\nname: local-kill\n"
                 "commands: [echo running, sleep 1, echo finished]\n")
    process = spawn(["apply", "-f", conf, "-y"], home_env)
    wait_for_output(process, b"running")
    process.kill()
    process.wait(10)
    run = wait_status(home_env, "local-kill", "done")
    assert run["exit_code"] == 0
    assert run_cli("logs", "local-kill", env=home_env).stdout == "running\nfinished\n"


def test_max_duration_stops_the_run(tmp_path, home_env):
    conf = write(tmp_path, "m.dstack.yml", "type: task\nname: local-max\nmax_duration: 2\n"
                 "commands: [echo started, sleep 60]\n")
    started = time.monotonic()
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert time.monotonic() - started < 30
    run = ps(home_env)["local-max"]
    assert (run["status"], run["reason"], run["exit_code"]) == ("terminated", "max_duration reached", 124)
    assert result.returncode == 124


@pytest.mark.parametrize("code", [121, 122, 124])
def test_a_commands_own_reserved_exit_code_is_a_failure(tmp_path, home_env, code):
    """121, 122 and 124 are what dstack gives a job it ends by inactivity_duration, utilization_policy and
    max_duration; the same number exited by the commands is a failure (retried on error), attached or read later."""
    attached = write(tmp_path, "a.dstack.yml", f"type: task\nname: own-{code}\nmax_duration: 1h\n"
                     f"commands: ['exit {code}']\n")
    result = run_cli("apply", "-f", attached, "-y", env=home_env)
    assert result.returncode == code, result.stderr
    run = ps(home_env)[f"own-{code}"]
    assert (run["status"], run["reason"], run["exit_code"]) == ("failed", f"exit code {code}", code)

    marker = tmp_path / "first-try-done"
    retried = write(tmp_path, "r.dstack.yml", f"type: task\nname: own-{code}-r\nmax_duration: 1h\n"
                    "retry: {on_events: [error], duration: 1m}\n"
                    f"commands: ['if [ ! -f {marker} ]; then touch {marker}; exit {code}; fi', 'echo again']\n")
    result = run_cli("apply", "-f", retried, "-y", env=home_env)
    assert result.returncode == 0 and result.stdout == "again\n", result.stderr
    assert f"the job failed with exit code {code}; running it again" in result.stderr, result.stderr

    detached = write(tmp_path, "d.dstack.yml", f"type: task\nname: own-{code}-d\nmax_duration: 1h\n"
                     f"commands: ['sleep 0.5', 'exit {code}']\n")
    assert run_cli("apply", "-f", detached, "-y", "-d", env=home_env).returncode == 0  # the next ps reads the host
    run = wait_status(home_env, f"own-{code}-d", "failed")
    assert (run["reason"], run["exit_code"]) == (f"exit code {code}", code)


def test_ssh_fleet_end_to_end(tmp_path, home_env, make_host, client_key):
    first, second = make_host(), make_host()
    fleet = write(tmp_path, "fleet.dstack.yml",
                  f"type: fleet\nname: lab\nssh_config:\n  user: root\n  identity_file: {client_key[0]}\n"
                  f"  hosts:\n    - {first.address}\n    - {{hostname: {second.address}, port: 22}}\n")
    applied = run_cli("apply", "-f", fleet, "-y", env=home_env)
    assert applied.returncode == 0, applied.stderr
    assert "2 hosts ready" in applied.stderr
    listed = json.loads(run_cli("fleet", "--json", env=home_env).stdout)["fleets"]
    assert [h["access"]["hostname"] for h in listed[0]["hosts"]] == [first.address, second.address]
    offers = json.loads(run_cli("offers", "-b", "ssh", "--json", env=home_env).stdout)
    assert {o["instance"]["name"] for o in offers["offers"]} == {first.address, second.address}
    assert all(o["price"] == 0 and o["backend"] == "ssh" and o["region"] == "lab" for o in offers["offers"])

    task = write(tmp_path, "t.dstack.yml", "type: task\nname: on-fleet\nbackends: [ssh]\nenv: [WHO=fleet]\n"
                 "commands: ['echo hello $WHO ${{ run.args }}', 'cd ../.. && pwd']\n")
    result = run_cli("apply", "-f", task, "-y", "--", "x y", env=home_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hello fleet x y"
    host = first if lines[1] == str(first.jobs_dir) else second
    assert lines[1] == str(host.jobs_dir)
    run = ps(home_env)["on-fleet"]
    assert (run["status"], run["backend"], run["region"], run["instance"]) == ("done", "ssh", "lab", host.address)
    assert run_cli("logs", "on-fleet", env=home_env).stdout == result.stdout

    assert run_cli("delete", "-f", fleet, env=home_env).returncode == 0
    assert json.loads(run_cli("fleet", "--json", env=home_env).stdout)["fleets"] == []


def test_fleet_with_an_unreachable_host_names_it(tmp_path, home_env, make_host, client_key):
    good = make_host()
    bad = make_host()
    bad.stop_sshd()
    fleet = write(tmp_path, "fleet.dstack.yml",
                  f"type: fleet\nname: half\nssh_config:\n  identity_file: {client_key[0]}\n"
                  f"  hosts: [{good.address}, {bad.address}]\n")
    # registration waits for a host as a stop does: 30 s, or DSTACK_HOST_TIMEOUT where shorter (3 s here)
    result = run_cli("apply", "-f", fleet, "-y", env=dict(home_env, DSTACK_HOST_TIMEOUT="3"), timeout=120)
    assert result.returncode == 1
    assert f"root@{bad.address}:22" in result.stderr and good.address not in result.stderr.split("\n", 1)[1]
    assert "did not answer SSH within 3s" in result.stderr, result.stderr
    assert json.loads(run_cli("fleet", "--json", env=home_env).stdout)["fleets"] == []


@pytest.mark.parametrize("setting, waited", [(None, 30.0), ("3", 3.0), ("40", 30.0)])
def test_a_fleet_registration_waits_for_a_host_as_long_as_a_stop(monkeypatch, setting, waited):
    import provisioner.backends.ssh_fleets as ssh_fleets
    import provisioner.host.ssh as ssh
    from provisioner.host.access import HostAccess

    if setting is None:
        monkeypatch.delenv("DSTACK_HOST_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("DSTACK_HOST_TIMEOUT", setting)
    waits = []

    def connect(target, total_wait, **_):
        waits.append(total_wait)
        raise ssh.TransportError("no host")

    monkeypatch.setattr(ssh, "connect", connect)
    monkeypatch.setattr(HostAccess, "connect", lambda self, total_wait, **_: connect(self, total_wait))
    for step in (lambda: ssh.scan_host_key(ssh.SSHTarget("10.251.9.2")),
                 lambda: ssh_fleets.probe(HostAccess("ssh", "10.251.9.2"))):
        with pytest.raises(ssh.TransportError):
            step()
    assert waits == [waited, waited]


def test_retry_on_error_runs_the_job_again(tmp_path, home_env):
    marker = tmp_path / "first-try-done"
    conf = write(tmp_path, "r.dstack.yml", "type: task\nname: local-retry\nretry: {on_events: [error], duration: 1m}\n"
                 f"commands:\n  - 'if [ ! -f {marker} ]; then touch {marker}; echo failing; exit 1; fi'\n"
                 "  - echo succeeded\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "failing\nsucceeded\n" and "running it again" in result.stderr
    assert ps(home_env)["local-retry"]["status"] == "done"


def test_a_jobs_start_clears_the_last_jobs_log_before_it_returns(tmp_path):
    """A retry follows the new job from byte 0 as soon as the start returns; the launch opens the new log in the
    background, so the old one must be gone by then (else its lines are read again). A `setsid` that launches nothing
    leaves only what the start does before it returns."""
    import subprocess

    from provisioner.jobs.launch import start_command
    from provisioner.jobs.script import JobSpec
    from provisioner.jobs.archive import archive_stream
    from provisioner.jobs.uploads import UploadPlan

    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "setsid").write_text("#!/bin/sh\nexit 0\n")
    (shims / "setsid").chmod(0o755)
    folder = tmp_path / "jobs" / "again"
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("failing\n")
    (folder / "exit_code").write_text("1\n")
    archive = b"".join(archive_stream(UploadPlan(), {"job.sh": (b"#!/bin/sh\necho succeeded\n", 0o700)}))
    env = {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path), "DSTACK_JOBS_DIR": str(tmp_path / "jobs")}
    subprocess.run(["sh", "-c", start_command(JobSpec(run_name="again", commands=[]))], input=archive, env=env,
                   timeout=30, capture_output=True)
    assert (folder / "job.sh").exists()  # the start did unpack the job
    assert not (folder / "output.log").exists() and not (folder / "exit_code").exists()


def test_apply_json_prints_only_the_run_record(tmp_path, home_env):
    conf = write(tmp_path, "j.dstack.yml", "type: task\nname: local-json\ncommands: [echo quiet]\n")
    result = run_cli("apply", "-f", conf, "-y", "--json", env=home_env)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    assert (run["name"], run["status"], run["exit_code"], run["backend"]) == ("local-json", "done", 0, "local")
    assert result.stderr == ""
    assert run_cli("logs", "local-json", env=home_env).stdout == "quiet\n"


@pytest.mark.usefixtures("store_engine")  # both engines: SQLite, the team database
def test_only_one_process_claims_a_run():
    import threading

    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.create_run(RunRecord(name="race", status="running", submitted_at=time.time()))
    wins = []

    def claim():
        if StateStore().claim_run("race", ("running",), "terminating"):
            wins.append(threading.get_ident())

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.get_run("race").status == "terminating"


def test_local_image_task_without_docker_says_so(tmp_path, home_env):
    conf = write(tmp_path, "d.dstack.yml", "type: task\nname: local-img\nimage: busybox\ncommands: [echo hi]\n")
    result = run_cli("apply", "-f", conf, "-y", env={**home_env, "PATH": str(tmp_path)})  # no docker on PATH
    assert result.returncode == 1
    assert "`image:` tasks on this machine need Docker, which is not installed" in result.stderr
    assert "Traceback" not in result.stderr
    assert ps(home_env)["local-img"]["status"] == "failed"


def test_declining_the_confirmation_runs_nothing(tmp_path, home_env):
    conf = write(tmp_path, "n.dstack.yml", "type: task\nname: local-no\ncommands: [echo never]\n")
    result = run_cli("apply", "-f", conf, env=home_env, input="n\n")
    assert result.returncode == 1 and "Submit the run?" in result.stderr and result.stdout.strip() == ""
    assert "local-no" not in ps(home_env)


def test_a_taken_local_port_fails_the_run_before_its_job_starts(tmp_path, home_env):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    conf = write(tmp_path, "p.dstack.yml", f"type: task\nname: local-port\nports: ['{port}:9']\n"
                 "commands: [echo never]\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    holder.close()
    assert result.returncode == 1
    assert f"local port {port} is already in use by another program" in result.stderr
    assert ps(home_env)["local-port"]["status"] == "failed"
    assert not (Path(home_env["DSTACK_HOME"]) / "jobs" / "local-port" / "output.log").exists()


def test_forwarded_port_on_the_local_backend(tmp_path, home_env):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        remote = probe.getsockname()[1]
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("local forward")
    conf = write(tmp_path, "w.dstack.yml", f"type: task\nname: local-web\nports: ['*:{remote}']\n"
                 f"commands: ['cd {site} && exec python3 -m http.server {remote} --bind 127.0.0.1']\n")
    process = spawn(["apply", "-f", conf, "-y"], home_env)
    try:
        deadline, body = time.monotonic() + 20, None
        while body is None and time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{remote}/index.html", timeout=1).read().decode()
            except OSError:
                time.sleep(0.2)
        assert body == "local forward"
        assert ps(home_env)["local-web"]["ports"] == [[remote, remote]]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
