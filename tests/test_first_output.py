"""The first read of a job's log waits on the host for its first byte (provisioner.jobs.control.read_log with
`wait`): it returns as the byte comes or as the job ends, and while it waits it starts no process per step (16
nodes' readers polling with `sleep` were CPU that the nodes' own starts waited for on a shared machine)."""

import os
import threading
import time
from pathlib import Path

import pytest

from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import LOG_READ_LIMIT, read_log, start_job, stop_job
from provisioner.jobs.script import JobSpec
from tests.test_ssh_bash_shell import connected_to_shell


def processes_in(folder: Path) -> list:
    """(command line, the parent's command line) of each process whose working directory is `folder`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/cwd") != str(folder):
                continue
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")[:-1]
            parent = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1]
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if command:  # (empty: a process ending as it was read)
            found.append((command, parent_command))
    return found


def test_a_waiting_read_follows_the_log_and_returns_as_its_first_line_comes(tmp_path):
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="quiet", commands=["sleep 1.5", "echo late", "sleep 30"]))
    folder = tmp_path / "jobs" / "quiet"
    read = {}
    reader = threading.Thread(target=lambda: read.update(chunk=read_log(local, "quiet", 0, wait=20)))
    began = time.monotonic()
    reader.start()
    try:
        time.sleep(0.5)
        seen = []
        for _ in range(20):
            seen += processes_in(folder)
            time.sleep(0.02)
        reader.join(timeout=25)
        assert read["chunk"].data == b"late\n" and time.monotonic() - began < 10
        assert any(command[0] == b"tail" for command, _ in seen)
        # (the job's own launcher polls its login profile with sleeps too: only the read's children count)
        assert not any(command[0] == b"sleep" and b"read -r c < exit_code" in parent for command, parent in seen), seen
    finally:
        stop_job(local, "quiet", grace=0)


def test_a_waiting_read_of_a_job_that_ends_without_output_returns_its_exit_code(tmp_path):
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="silent", commands=["sleep 0.5", "exit 3"]))
    began = time.monotonic()
    chunk = read_log(local, "silent", 0, wait=20)
    assert (chunk.data, chunk.exit_code) == (b"", 3) and time.monotonic() - began < 10


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_a_waiting_read_through_the_hosts_long_lived_shell_gives_the_first_line_as_it_comes(make_host, client_key,
                                                                                            shell):
    """Over SSH the read runs in the connection's long-lived shell (provisioner.host.ssh), dash or bash as a RHEL
    host's `sh`: the first bytes that tail follows in reach the client through that shell's stdout."""
    ssh = connected_to_shell(make_host, client_key, shell)
    try:
        start_job(ssh, JobSpec(run_name="late", commands=["sleep 1", "echo late", "sleep 30"]))
        began = time.monotonic()
        chunk = read_log(ssh, "late", 0, limit=LOG_READ_LIMIT, wait=20)
        assert (chunk.data, chunk.exit_code) == (b"late\n", None) and 0.8 < time.monotonic() - began < 10
        assert read_log(ssh, "late", 5, limit=LOG_READ_LIMIT).data == b""  # the next read: nothing more yet
        start_job(ssh, JobSpec(run_name="silent", commands=["sleep 30"]))
        assert read_log(ssh, "silent", 0, limit=LOG_READ_LIMIT, wait=1).data == b""
    finally:
        for name in ("late", "silent"):
            stop_job(ssh, name, grace=0)
        ssh.close()
