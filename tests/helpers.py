"""Shared helpers of the tests."""

import json
import os
import socket
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


def run_cli(*args, env=None, input=None, timeout=120, cwd=ROOT, entry="cli.main"):
    """Runs the `dstack` command as a user would, in a process of its own (its own pid, session, environment,
    standard files and exit status) in `cwd` (this checkout, whose code it runs wherever it runs), to its end: a
    CompletedProcess with its output as text.

    The process is forked from a warm interpreter of this test process (tests.cloudsim.zygote) that has imported
    the libraries the commands import (the cloud SDKs included) and dstack's own modules: each command would
    otherwise spend most of its CPU on them (a cloud dry run 1 s of its 1.5, a `ps` 0.4 s of its 0.5), and on 2
    cores the suite is bound by CPU. Tests about the interpreter itself (what a command imports, its start-up) start
    one of their own. `entry`: the module whose main() runs (cli.app: the typer app alone, without cli.main's plain
    paths)."""
    import tempfile

    from tests.cloudsim.zygote import Forked

    full_env = dict(os.environ)
    full_env.update(env or {})
    argv = [sys.executable, "-m", "cli.main", *args]
    with tempfile.TemporaryDirectory(prefix="dstack-cli-") as folder:
        stdin = None
        if input is not None:
            stdin = os.path.join(folder, "stdin")
            with open(stdin, "w") as f:
                f.write(input)
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = Forked(dstack_zygote(preloaded=True), args, full_env, str(cwd), out, err, stdin=stdin, entry=entry)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(argv, timeout) from None
        return subprocess.CompletedProcess(argv, code, Path(out).read_text(), Path(err).read_text())


_zygotes: dict = {}  # this process's zygotes: {(pid, preloaded): socket path}


def dstack_zygote(preloaded: bool = False) -> str:
    """The socket of this process's zygote (tests.cloudsim.zygote), started at its first use; it ends with this
    process. `preloaded`: the one forked from it that has imported dstack's modules too, which the commands fork
    from."""
    if preloaded:
        if (os.getpid(), True) not in _zygotes:
            folder = os.path.dirname(dstack_zygote())
            path = os.path.join(folder, "preloaded")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(os.path.join(folder, "socket"))
                connection.sendall(json.dumps({"preload": path}).encode() + b"\n")
                answer = connection.makefile("r").readline()
            if not answer:
                raise RuntimeError("the preloaded dstack zygote did not start")
            import atexit
            import signal

            atexit.register(_end_process, json.loads(answer)["pid"], signal.SIGKILL)  # else it ends after the first
            _zygotes[os.getpid(), True] = path
        return _zygotes[os.getpid(), True]
    if (os.getpid(), False) not in _zygotes:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="dstack-zygote-")
        path = os.path.join(folder, "socket")
        zygote = subprocess.Popen([sys.executable, "-m", "tests.cloudsim.zygote", path], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)

        def end() -> None:
            zygote.kill()
            zygote.wait()
            shutil.rmtree(folder, ignore_errors=True)

        if zygote.stdout.readline().strip() != "ready":
            end()
            raise RuntimeError(f"the dstack zygote did not start (exit code {zygote.returncode})")
        atexit.register(end)
        _zygotes[os.getpid(), False] = path
    return _zygotes[os.getpid(), False]


def _end_process(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


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
