"""Faults: a host that vanishes under a running command, stop signals to an attached `dstack apply`, and clouds
without credentials. In each the user gets a short message, in bounded time, and never a traceback."""

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.store.records import RunRecord
from provisioner.store.store import StateStore
from tests.helpers import ROOT, run_cli, write
from tests.test_runs import group_alive, ps, spawn, wait_for_output

# a job that keeps writing, so a follower always has something to read
TICKING = "commands: [echo started, 'while true; do echo tick; sleep 0.5; done']\n"


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr


def add_fleet(tmp_path, env, client_key, hosts, name="lab"):
    fleet = write(tmp_path, f"{name}.dstack.yml",
                  f"type: fleet\nname: {name}\nssh_config:\n  user: root\n  identity_file: {client_key[0]}\n"
                  f"  hosts: [{', '.join(h.address for h in hosts)}]\n")
    applied = run_cli("apply", "-f", fleet, "-y", env=env)
    assert applied.returncode == 0, applied.stderr


def sshd_pids(host):
    """The host's sshd processes: the listener and the one serving each connection."""
    found = []
    for pid in subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True).stdout.split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def freeze(host):
    """The address routes and TCP answers (the kernel does), but SSH never says a word: a hung host."""
    pids = sshd_pids(host)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def thaw(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def blackhole(host):
    """The address routes, and nothing there answers at all: a host powered off behind a firewall."""
    subprocess.run(["ip", "netns", "exec", host.ns, "iptables", "-I", "INPUT", "-j", "DROP"], check=True,
                   capture_output=True)


def output_of(process) -> str:
    """Its stderr; a process still running is killed first (reading would wait for it)."""
    if process.poll() is None:
        process.kill()
    return process.stderr.read().decode()


def wait_exits(processes, timeout):
    """Seconds from now until each process exits (None where it is still running after `timeout`)."""
    started = time.monotonic()
    took = [None] * len(processes)
    while None in took and time.monotonic() - started < timeout:
        for i, process in enumerate(processes):
            if took[i] is None and process.poll() is not None:
                took[i] = time.monotonic() - started
        time.sleep(0.2)
    return took


def test_an_attached_run_hears_within_the_host_timeout_that_its_host_vanished(tmp_path, home_env, make_host,
                                                                             client_key):
    """A host that is frozen, blackholed, or whose route is gone. DSTACK_HOST_TIMEOUT=15 (45 s by default: the
    keep-alives and the dead-connection bound follow it, test_host_timeout_setting_is_checked) keeps the test short."""
    faults = {"frozen": freeze, "blackholed": blackhole, "no-route": lambda host: host.link(False)}
    if not shutil.which("iptables"):
        del faults["blackholed"]
    hosts = {fault: make_host() for fault in faults}
    add_fleet(tmp_path, home_env, client_key, hosts.values())
    applies = {}
    frozen = []
    try:
        for fault, host in hosts.items():
            task = write(tmp_path, f"{fault}.dstack.yml", f"type: task\nname: vanish-{fault}\n{TICKING}")
            applies[fault] = spawn(["apply", "-f", task, "-y", "-b", "ssh", "--instance-type", host.address],
                                   dict(home_env, DSTACK_HOST_TIMEOUT="15"))
            wait_for_output(applies[fault], b"tick")
        for fault, host in hosts.items():
            frozen += faults[fault](host) or []
        took = dict(zip(applies, wait_exits(list(applies.values()), timeout=60)))
        for fault, process in applies.items():
            stderr = output_of(process)
            assert took[fault] is not None and took[fault] < 40, (fault, took[fault], stderr)
            assert process.returncode == 1, (fault, stderr)
            host = hosts[fault]
            assert f"root@{host.address}:22 unreachable for" in stderr, (fault, stderr)
            assert f"vanish-{fault} is kept as it is" in stderr and f"dstack stop vanish-{fault}" in stderr
            assert_no_traceback(stderr)
            assert StateStore().get_run(f"vanish-{fault}").status == "running"  # kept, as the message says
    finally:
        thaw(frozen)
        for process in applies.values():
            if process.poll() is None:
                process.kill()


def test_logs_attach_and_stop_are_bounded_on_a_hung_host(tmp_path, home_env, make_host, client_key):
    """DSTACK_HOST_TIMEOUT shortens the wait (9 s here): the followers give up within it and a little more, the kept
    connection's key check with the hung host included (it took 10 s of its own before); `stop` tries the host for
    as long at most (30 s by default: Liveness.stop_wait), then says it could not reach it."""
    host = make_host()
    add_fleet(tmp_path, home_env, client_key, [host])
    task = write(tmp_path, "hung.dstack.yml", f"type: task\nname: hung\n{TICKING}")
    assert run_cli("apply", "-f", task, "-y", "-d", "-b", "ssh", env=home_env).returncode == 0
    short = dict(home_env, DSTACK_HOST_TIMEOUT="9")
    followers = [spawn(["logs", "hung", "-f"], short), spawn(["attach", "hung", "--logs"], short)]
    frozen = []
    try:
        for process in followers:
            wait_for_output(process, b"tick")
        frozen = freeze(host)
        for process, took in zip(followers, wait_exits(followers, timeout=40)):
            stderr = output_of(process)
            assert took is not None and took < 15, (took, stderr)
            assert process.returncode == 1, stderr
            assert "hung is kept as it is" in stderr and f"root@{host.address}:22" in stderr
            assert_no_traceback(stderr)
        started = time.monotonic()
        stopped = run_cli("stop", "hung", env=short, timeout=120)
        assert time.monotonic() - started < 30
        assert "could not reach the host to stop the job" in stopped.stderr
        assert_no_traceback(stopped.stderr)
    finally:
        thaw(frozen)
        for process in followers:
            if process.poll() is None:
                process.kill()


def test_keepalives_break_an_idle_connection_to_a_vanished_host(make_host, client_key, monkeypatch):
    """No command in flight: SSH keep-alives go unacknowledged and TCP_USER_TIMEOUT ends the connection."""
    from provisioner.host.liveness import Liveness
    from provisioner.host.ssh import SSHTarget, connect

    if not shutil.which("iptables"):
        pytest.skip("iptables is not installed")
    monkeypatch.setenv("DSTACK_HOST_TIMEOUT", "9")
    live = Liveness(9)
    host = make_host()
    ssh = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key), total_wait=10)
    assert ssh.run("echo up").text == "up\n"
    blackhole(host)
    started = time.monotonic()
    while ssh.transport.is_active() and time.monotonic() - started < 30:
        time.sleep(0.2)
    took = time.monotonic() - started
    ssh.close()
    assert took < live.keepalive + live.silent_after + 3  # TCP alone would take ~15 minutes


def test_a_local_command_that_hangs_is_a_transport_error(tmp_path):
    from provisioner.host.transport import LocalTransport, TransportError

    started = time.monotonic()
    with pytest.raises(TransportError, match=r"localhost: no answer within 0.5s"):
        LocalTransport(str(tmp_path)).run("sleep 10", timeout=0.5)
    assert time.monotonic() - started < 5


def test_host_timeout_setting_is_checked(monkeypatch):
    from configuration.errors import ConfigurationError
    from provisioner.host.liveness import Liveness, liveness

    monkeypatch.delenv("DSTACK_HOST_TIMEOUT", raising=False)
    default = liveness()
    assert (default.unreachable_after, default.keepalive, default.silent_after, default.stop_wait) == (45, 5, 15, 30)
    monkeypatch.setenv("DSTACK_HOST_TIMEOUT", "30")
    assert liveness() == Liveness(30.0) and (liveness().keepalive, liveness().silent_after) == (3, 10.0)
    monkeypatch.setenv("DSTACK_HOST_TIMEOUT", "9")
    assert liveness().stop_wait == 9  # a stop gives up no later than the rest
    for bad in ("nan", "inf", "0", "soon"):
        monkeypatch.setenv("DSTACK_HOST_TIMEOUT", bad)
        with pytest.raises(ConfigurationError, match="DSTACK_HOST_TIMEOUT"):
            liveness()


def start_in_terminal(args, env):
    """`dstack ARGS` writing to a pseudo-terminal, as in a terminal window: (the process, the terminal's other end)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=dict(os.environ, **env),
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    return process, controller


def read_terminal(controller, until=None, process=None, timeout=30):
    """What the terminal shows, until `until` appears or `process` exits."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (until is not None and until in seen) or (process is not None and process.poll() is not None):
            return seen
        if select.select([controller], [], [], 0.2)[0]:
            try:
                seen += os.read(controller, 4096)
            except OSError:  # every writer is gone
                return seen
    raise AssertionError(f"{until!r} never came; saw {seen!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stop_signals_to_an_attached_apply_act_as_ctrl_c(tmp_path, home_env, signum):
    name = f"local-{signum.name.lower()}"
    conf = write(tmp_path, f"{name}.dstack.yml", f"type: task\nname: {name}\ncommands: [echo running, sleep 300]\n")
    process, controller = start_in_terminal(["apply", "-f", conf, "-y"], home_env)
    try:
        read_terminal(controller, until=b"running")
        if signum == signal.SIGHUP:
            os.close(controller)  # the window closed: from now on every write to the terminal fails
            controller = None
        process.send_signal(signum)
        if controller is not None:
            shown = read_terminal(controller, process=process).decode(errors="replace")
            assert "Interrupted: stopping the run" in shown
            assert_no_traceback(shown)
        assert process.wait(30) == 128 + signum
    finally:
        if controller is not None:
            os.close(controller)
        if process.poll() is None:
            process.kill()
    run = ps(home_env)[name]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")
    pid = (Path(home_env["DSTACK_HOME"]) / "jobs" / name / "pid").read_text().strip()
    assert not group_alive(int(pid))


def test_sigterm_to_an_attached_apply_on_a_fleet_host(tmp_path, home_env, make_host, client_key):
    host = make_host()
    add_fleet(tmp_path, home_env, client_key, [host])
    conf = write(tmp_path, "term.dstack.yml", "type: task\nname: fleet-term\ncommands: [echo running, sleep 300]\n")
    process = spawn(["apply", "-f", conf, "-y", "-b", "ssh"], home_env)
    wait_for_output(process, b"running")
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 128 + signal.SIGTERM
    assert_no_traceback(process.stderr.read().decode())
    run = ps(home_env)["fleet-term"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")
    assert not group_alive(int((host.jobs_dir / "fleet-term" / "pid").read_text()))


@pytest.fixture
def failing_pulumi(tmp_path, monkeypatch):
    """A `pulumi` that passes the version check and fails every command as Pulumi does without AWS credentials."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "pulumi"
    script.write_text('#!/bin/sh\nif [ "$1" = version ]; then echo v3.150.0; exit 0; fi\n'
                      'echo "error: failed to load checkpoint: NoCredentialProviders: no valid providers in chain" >&2\n'
                      "exit 255\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def assert_one_line_error(result, text: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert text in result.stderr


def test_gc_without_aws_credentials_says_what_to_set(no_aws_credentials, home_env):
    for args in (["gc", "-r", "eu-west-3"], ["gc", "--json"]):
        result = run_cli(*args, env=home_env)
        assert_one_line_error(result, "AWS credentials are missing: run `aws configure`")
        assert result.stdout == ""


def test_stopping_a_cloud_run_without_credentials_keeps_it_terminating(no_aws_credentials, failing_pulumi, home_env):
    StateStore().create_run(RunRecord(name="aws-run", status="running", submitted_at=time.time(), backend="aws",
                                      region="eu-west-3", stack={"backend": "aws", "name": "aws-run",
                                                                 "region": "eu-west-3", "backend_url": None}))
    for _ in range(2):  # the second `stop` retries the teardown, as the run's reason says
        assert_one_line_error(run_cli("stop", "aws-run", env=home_env), "AWS credentials are missing")
        record = StateStore().get_run("aws-run")
        assert record.status == "terminating"  # its stack may still hold resources
        assert record.reason.startswith("teardown failed, retry with `dstack stop aws-run`: AWS credentials")


def test_apply_on_aws_without_credentials_names_them(tmp_path, no_aws_credentials, failing_pulumi, home_env):
    conf = write(tmp_path, "aws.dstack.yml", "type: task\nname: aws-none\ncommands: [echo never]\n")
    result = run_cli("apply", "-f", conf, "-y", "-b", "aws", env=home_env)
    assert result.returncode == 1 and "error: AWS credentials are missing" in result.stderr
    assert_no_traceback(result.stderr)
    assert "aws-none" not in ps(home_env)  # found before anything was recorded: nothing blocks the retry


def test_stacks_says_in_one_line_that_pulumi_failed(failing_pulumi, home_env, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(home_env, TMPDIR=str(scratch))
    assert_one_line_error(run_cli("stacks", env=env), "NoCredentialProviders: no valid providers in chain")
    assert list(scratch.iterdir()) == []  # the automation API's workspace is under $DSTACK_HOME, not a new temp dir
    assert (Path(home_env["DSTACK_HOME"]) / "pulumi" / "work" / "Pulumi.yaml").exists()
