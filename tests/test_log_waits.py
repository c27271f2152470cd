"""A followed log's reads wait on the host while the log has nothing new (provisioner.jobs.follow, control.read_log):
an idle node's log is read once per wait, not polled five times a second; a line reaches the client as it is
written; a log that grows fast is read as often as before, whole; a host that can not wait is polled; and a command
of another thread (a stop after Ctrl-C) is not held up by a read that waits (provisioner.host)."""

import _thread
import statistics
import subprocess
import threading
import time

import pytest

from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import start_job, stop_job
from provisioner.jobs.follow import LogFollower
from provisioner.jobs.script import JobSpec
from tests.test_log_reads import shell_path
from tests.test_ssh_bash_shell import bash_is_sh


class Counted:
    """A transport that counts the commands run through it."""

    def __init__(self, transport):
        self.transport = transport
        self.description = transport.description
        self.runs = 0

    def run(self, command, stdin=None, timeout=None):
        self.runs += 1
        return self.transport.run(command, stdin, timeout)

    def close(self) -> None:
        self.transport.close()


def follower_of(transport, name: str) -> LogFollower:
    return LogFollower(lambda total_wait: transport, name)


def test_an_idle_nodes_log_is_read_once_per_wait_not_polled(tmp_path):
    """3 s without output: one read waits through them (it was 15 polls); the line after them comes as written."""
    local = Counted(LocalTransport(str(tmp_path / "jobs")))
    start_job(local, JobSpec(run_name="idle", commands=["echo hi", "sleep 3", "echo bye"]))
    received = bytearray()
    follower = follower_of(local, "idle")
    assert follower.follow(received.extend) == 0 and received == b"hi\nbye\n"
    assert local.runs - 1 <= 5  # the start; the first line, the wait for the next, the end (and a spare)


def written_while_followed(tmp_path, monkeypatch, lines: int, every: float, kind: str = "dash") -> tuple:
    """A log that a thread writes a line to every `every` seconds (a job's pid: a sleep), followed meanwhile:
    (the bytes written, those received, each line's delay from its write to its arrival, reads, exit code)."""
    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    folder = tmp_path / "jobs" / "lines"
    folder.mkdir(parents=True)
    job = subprocess.Popen(["sleep", "60"])
    (folder / "pid").write_text(f"{job.pid}\n")
    (folder / "output.log").write_bytes(b"")
    written_at, received, arrived = [], bytearray(), []

    def write() -> None:
        with open(folder / "output.log", "ab", buffering=0) as log:
            for index in range(lines):
                time.sleep(every)
                written_at.append(time.monotonic())
                log.write(b"line %d\n" % index)
        job.kill()
        job.wait()
        (folder / "exit_code").write_text("0\n")

    def receive(data: bytes) -> None:
        received.extend(data)
        arrived.extend([time.monotonic()] * data.count(b"\n"))

    local = Counted(LocalTransport(str(tmp_path / "jobs")))
    writer = threading.Thread(target=write)
    writer.start()
    try:
        code = follower_of(local, "lines").follow(receive)
    finally:
        writer.join()
    expected = b"".join(b"line %d\n" % index for index in range(lines))
    return expected, bytes(received), [a - w for a, w in zip(arrived, written_at)], local.runs, code


def test_a_line_written_half_a_second_after_the_last_arrives_as_it_is_written(tmp_path, monkeypatch):
    """Polled every 0.2 s, a line waited 0.1 s for its read on average (0 to 0.2); the read that waits has it at
    once."""
    expected, received, delays, reads, code = written_while_followed(tmp_path, monkeypatch, 6, 0.5)
    assert (received, code) == (expected, 0)
    assert statistics.median(delays) < 0.05 and max(delays) < 0.3, delays
    assert reads <= 2 * 6 + 3  # a read that brings the line, one that waits for the next


def test_a_log_that_grows_every_50_ms_is_read_whole_every_poll_interval(tmp_path, monkeypatch):
    expected, received, delays, reads, code = written_while_followed(tmp_path, monkeypatch, 60, 0.05)
    assert (received, code) == (expected, 0)
    assert max(delays) < 0.6, delays
    assert reads <= 3 / 0.2 + 10  # reads begin POLL_INTERVAL_S apart at the most often: not one per line


def test_a_host_that_can_not_wait_is_polled_not_read_in_a_loop(tmp_path, monkeypatch):
    """Busybox's tail has no --pid: a read that would wait returns at once, and the follower polls."""
    expected, received, delays, reads, code = written_while_followed(tmp_path, monkeypatch, 3, 0.5, "busybox")
    assert (received, code) == (expected, 0)
    assert 1.5 / 0.2 - 3 <= reads <= 1.5 / 0.2 + 5


def one_run_counted(transport, name: str, commands: list) -> tuple:
    """(output, exit code, commands run) of a job followed to its end through `transport`."""
    counted = Counted(transport)
    start_job(counted, JobSpec(run_name=name, commands=commands))
    received = bytearray()
    code = follower_of(counted, name).follow(received.extend)
    return bytes(received), code, counted.runs - 1


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_an_idle_nodes_log_through_a_kept_connection_is_read_once_per_wait(make_host, client_key, shell):
    """Through the host's keeper and its long-lived shell (dash, or bash as a RHEL host's `sh`)."""
    from provisioner.host.access import HostAccess

    host = make_host(login_user="plain")
    if shell == "bash":
        bash_is_sh(host)
    access = HostAccess(kind="ssh", hostname=host.address, user="plain", identity_file=client_key[0],
                        host_key=host.host_public_key)
    transport = access.connect(total_wait=10)
    try:
        assert type(transport).__name__ == "KeptTransport"
        output, code, reads = one_run_counted(transport, "idle", ["echo hi", "sleep 3", "echo bye", "exit 3"])
        assert (output, code) == (b"hi\nbye\n", 3) and reads <= 5
    finally:
        transport.close()


@pytest.mark.parametrize("kept", [True, False])
def test_a_command_while_another_threads_read_waits_on_the_host_is_not_held_up(make_host, client_key, kept):
    """A stop after Ctrl-C, from the main thread, while a node's reader thread waits on the host for output: the
    stop gets a session (a shell) of its own at once, through the keeper or on the connection."""
    from provisioner.host.access import HostAccess
    from provisioner.host.ssh import SSHTarget, connect

    host = make_host()
    if kept:
        transport = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                               host_key=host.host_public_key).connect(total_wait=10)
    else:
        transport = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key),
                            total_wait=10)
    try:
        assert transport.run("echo first").text == "first\n"
        waited = []
        reader = threading.Thread(target=lambda: waited.append(transport.run("sleep 3; echo waited").text))
        reader.start()  # (a stand-in for a read that waits on the host: control.read_log)
        time.sleep(0.5)
        began = time.monotonic()
        assert transport.run("echo now").text == "now\n" and time.monotonic() - began < 1.5
        reader.join()
        assert waited == ["waited\n"] and transport.run("echo after").text == "after\n"
    finally:
        transport.close()


def test_ctrl_c_during_a_command_leaves_no_shell_that_still_runs_it(make_host, client_key):
    """A direct connection's long-lived shell that a Ctrl-C left mid-command (a read waiting on the host) is not
    the next command's: that one gets a new shell, at once, and its own answer alone."""
    from provisioner.host.ssh import SSHTarget, connect

    host = make_host()
    transport = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key),
                        total_wait=10)
    try:
        assert transport.run("echo first").text == "first\n"
        threading.Timer(0.5, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            transport.run("sleep 3; echo old")
        began = time.monotonic()
        assert transport.run("echo new").text == "new\n" and time.monotonic() - began < 2
    finally:
        transport.close()


def test_a_poll_that_brought_output_is_followed_by_the_next_after_the_interval_one_that_waited_at_once(tmp_path):
    """A node's first line comes after a wait on the host: its next read is a poll interval later, as before (not
    at once, while a cluster's other nodes still start); a read that waited to its bound with nothing is followed
    by the next at once; one that returned at once with nothing (a host that can not wait), after the interval."""
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="p", commands=["sleep 0.5", "echo hi", "sleep 30"]))
    follower = follower_of(local, "p")
    try:
        assert follower.poll(lambda data: None, wait=20) is None and follower.offset == 3
        assert follower.pause(0.2) == 0.2
        assert follower.poll(lambda data: None, wait=0.5) is None and follower.pause(0.2) == 0
        assert follower.poll(lambda data: None) is None and 0 < follower.pause(0.2) <= 0.2
    finally:
        stop_job(local, "p", grace=0)
