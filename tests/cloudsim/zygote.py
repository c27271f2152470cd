"""A warm interpreter the scenarios' `dstack` processes are forked from: `python -m tests.cloudsim.zygote SOCKET`
imports the heavy libraries once (pulumi and both providers, boto3 with EC2's parsed model, google-auth,
paramiko, typer, rich), then forks one child per request, which runs tests.cloudsim.cli as its own process: its own
pid and session (a Ctrl-C or SIGKILL reaches it alone), environment, working folder, output files and exit status.
Each `dstack` would otherwise spend most of its CPU importing (pulumi and its providers take seconds).

Only libraries are imported here, and no thread or connection exists when it forks. The `dstack` processes are
forked from a second zygote, forked from this one (a `preload` request), that has also imported every dstack module
(`preload_dstack`): each command would otherwise spend most of its CPU importing them. A scenario's child swaps
parts of dstack after that (tests.cloudsim.cli): the modules that use them import them when called, and the one
that imports one at its own import (stacks.gcp.leftovers' gcp_api) is swapped too, so the swapped ones are used.

A request is one JSON line (args, env, cwd, stdout, stderr; stdin: a file, else /dev/null; entry: the module whose
`main` runs, tests.cloudsim.cli unless named); the answer, two: the child's pid, then its exit status (negative: the
signal that killed it), from a monitor process that waits for it.

One such pair per test process (tests.helpers.dstack_zygote) serves the scenarios and tests.helpers.run_cli (the
plain `dstack`, entry cli.main), whose children end as `python -m cli.main` does (non-daemon threads joined, exit handlers
run). Without the cloud extras it imports only what every command imports (PLAIN_PRELOAD).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import traceback
from typing import Optional

PRELOAD = ("typer", "rich.console", "rich.table", "pydantic", "yaml", "paramiko", "cryptography.hazmat.primitives",
           "boto3", "botocore.session", "pulumi", "pulumi.automation", "pulumi.runtime", "pulumi_aws", "pulumi_gcp",
           "google.auth", "google.auth.transport.requests", "requests", "urllib3")


PLAIN_PRELOAD = ("typer", "rich.console", "rich.table", "pydantic", "yaml", "paramiko",
                 "cryptography.hazmat.primitives", "requests")


def warm_plain() -> None:
    import importlib

    for name in PLAIN_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # the command imports it itself, or says it is missing, as it would anyway
            pass


def warm() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import pulumi_aws
    import pulumi_gcp

    for loaded in (pulumi_aws.ec2.Instance, pulumi_aws.ebs.Volume, pulumi_gcp.compute.Instance,
                   pulumi_gcp.compute.Firewall, pulumi_gcp.serviceaccount.Account):
        assert loaded is not None  # providers load their modules lazily: touching one loads it
    from tests.cloudsim.cli import parse_botocore_models_once

    parse_botocore_models_once()
    import boto3

    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    for service in ("ec2", "sts"):  # parsed into the shared cache; no request is made
        session.client(service, endpoint_url="http://127.0.0.1:9")


DSTACK_PACKAGES = ("configuration", "offers", "stacks", "provisioner", "cli")


def preload_dstack() -> None:
    """Imports every module of dstack's packages (what a command imports, and more), as each command would. None of them reads the
    environment, the working folder or the standard files when imported (each command does when it runs), and none
    starts a thread or sets a signal handler: a child forked after this behaves as one that imported them itself."""
    import importlib
    import pkgutil

    for package in DSTACK_PACKAGES:
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            try:
                importlib.import_module(module.name)
            except ImportError:  # an extra not installed: the command that needs it imports it, and says so
                pass


def serve(path: str) -> None:
    try:
        warm()
    except ImportError:  # an install without the cloud extras: the scenarios skip, plain commands need none
        warm_plain()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the monitors are reaped by the kernel
    print("ready", flush=True)
    _accept(server, path, os.getppid())


def _preloaded(connection: socket.socket, path: str, parent: int) -> None:
    """The second zygote (a `preload` request's child): listens on `path`, answers its pid, imports dstack's
    modules (requests wait in the socket's backlog meanwhile), then serves as this one does."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    connection.close()
    preload_dstack()
    _accept(server, path, parent)


def _accept(server: socket.socket, path: str, parent: int) -> None:
    server.settimeout(2)
    while True:
        try:
            connection, _ = server.accept()
        except socket.timeout:
            if os.getppid() != parent:  # the test worker is gone (killed): so is the need for this, and its socket
                import shutil

                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                os._exit(0)
            continue
        connection.settimeout(None)
        request = json.loads(connection.makefile("r").readline())
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            if "preload" in request:
                _preloaded(connection, request["preload"], os.getppid())
                os._exit(0)
            _monitor(connection, request)
        connection.close()


def _monitor(connection: socket.socket, request: dict) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        connection.close()
        _run(request)
    try:
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        connection.sendall(json.dumps({"status": os.waitstatus_to_exitcode(status),
                                       "cpu": used.ru_utime + used.ru_stime}).encode() + b"\n")
    finally:
        os._exit(0)


def _run(request: dict) -> None:
    """The child: a process of its own as `python -m tests.cloudsim.cli ARGS` would be."""
    os.setsid()
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    for number in (signal.SIGPIPE, signal.SIGXFSZ):  # as the interpreter sets them at its start: a write to a closed
        signal.signal(number, signal.SIG_IGN)  # pipe or socket raises BrokenPipeError, never kills the process
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stdin = os.open(request.get("stdin") or os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    stderr = stdout if request["stderr"] == request["stdout"] else \
        os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(source, target)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["dstack", *request["args"]]
    code = 0
    entry = request.get("entry") or "tests.cloudsim.cli"
    try:
        import importlib

        importlib.import_module(entry).main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        if entry == "cli.main":  # as the interpreter's own end would: what the command left running ends first
            import atexit
            import threading

            threading._shutdown()
            atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1])


class Forked:
    """The test's side of one forked `dstack` (the interface of subprocess.Popen the scenarios use): `pid`, `poll`,
    `wait`, `send_signal`, `kill`, `returncode`, and `stdout` (the output file, for a `start`ed one)."""

    def __init__(self, socket_path: str, args, env: dict, cwd: str, stdout: str, stderr: str,
                 stdin: Optional[str] = None, entry: Optional[str] = None):
        self.args = list(args)
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.connect(socket_path)
        self.connection.sendall(json.dumps({"args": self.args, "env": env, "cwd": cwd, "stdout": stdout,
                                            "stderr": stderr, "stdin": stdin, "entry": entry}).encode() + b"\n")
        self.buffer = b""
        self.pid = json.loads(self._line(None))["pid"]
        self.returncode = None
        self.cpu = None
        self.stdout = None

    def _line(self, timeout):
        """The next answer line; None when none came within `timeout` (0: do not wait)."""
        import select

        while b"\n" not in self.buffer:
            if timeout is not None and not select.select([self.connection], [], [], timeout)[0]:
                return None
            chunk = self.connection.recv(4096)
            if not chunk:
                raise RuntimeError("the cloudsim zygote's monitor went away")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def poll(self):
        if self.returncode is None:
            self._ended(self._line(0))
        return self.returncode

    def wait(self, timeout=None):
        import subprocess

        if self.returncode is None:
            self._ended(self._line(timeout))
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _ended(self, line) -> None:
        if line is not None:
            answer = json.loads(line)
            self.returncode, self.cpu = answer["status"], answer["cpu"]  # cpu: the seconds it used, its children's too
            self.connection.close()

    def send_signal(self, number: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
