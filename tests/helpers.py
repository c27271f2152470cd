"""Shared helpers of the tests."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def write(tmp_path, name, text) -> str:
    """A file under tmp_path with `text`; its path as a string."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a fixed one would meet a parallel test run's)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(*args, env=None, input=None, timeout=120):
    """Runs the installed `dstack` entry point as a user would, in a child process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=full_env, input=input,
        timeout=timeout, cwd=ROOT,
    )


def process_list_with(transport, line: str, timeout: float = 30) -> list:
    """The host's process list (`ps -eo args`, one line per process) once a process whose command line is `line`
    is in it; AssertionError when none comes within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = transport.run("ps -eo args").text.splitlines()
        if line in listed:
            return listed
        time.sleep(0.05)
    raise AssertionError(f"no process `{line}` within {timeout}s")


def wait_exit(transport, run, timeout=60):
    """Reads a job's log until it ends: (exit code, the whole log as text)."""
    from provisioner.jobs.control import read_log

    deadline, offset, log = time.monotonic() + timeout, 0, b""
    while time.monotonic() < deadline:
        chunk = read_log(transport, run, offset)
        log, offset = log + chunk.data, offset + len(chunk.data)
        if chunk.exit_code is not None:
            return chunk.exit_code, log.decode()
        time.sleep(0.05)
    raise AssertionError(f"job {run} did not end; log so far: {log!r}")
