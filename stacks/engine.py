"""How the Pulumi engine process is run: in a process group of its own, so that a Ctrl-C reaches it exactly once,
from us, and waited for.

The automation API's own runner leaves the engine in the terminal's process group (a Ctrl-C reaches it directly) and,
on KeyboardInterrupt, returns after a quarter of a second while the engine is still cancelling. Teardown then starts a
second engine (`refresh`, `destroy`) against a stack the first one still holds. Here the first Ctrl-C (or SIGTERM,
which the CLI turns into one) is forwarded as one SIGINT, the engine's graceful cancel, and the interrupt waits for
the engine to exit, at most ENGINE_CANCEL_WAIT_S; a second Ctrl-C during that wait forwards a second SIGINT (the
engine's forced stop) and stops waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Callable, List, Mapping, Optional

ENGINE_CANCEL_WAIT_S = 120.0


def run_engine(command: str, args: List[str], cwd: str, env: Mapping[str, str],
               on_output: Optional[Callable[[str], None]] = None,
               on_error: Optional[Callable[[str], None]] = None,
               cancel_wait_s: Optional[float] = None):
    """Runs `command args` and returns (stdout, stderr, exit code); KeyboardInterrupt only once the engine is gone
    (or the wait is over)."""
    process = subprocess.Popen([command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                               env=dict(env), encoding="utf-8", errors="replace", start_new_session=True)
    chunks: dict = {"out": [], "err": []}
    readers = [threading.Thread(target=_consume, args=(process.stdout, on_output, chunks["out"]), daemon=True),
               threading.Thread(target=_consume, args=(process.stderr, on_error, chunks["err"]), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        code = process.wait()
    except KeyboardInterrupt:
        _cancel(process, ENGINE_CANCEL_WAIT_S if cancel_wait_s is None else cancel_wait_s)
        raise
    for reader in readers:
        reader.join()
    return "\n".join(chunks["out"]), "\n".join(chunks["err"]), code


def _consume(stream, callback, chunks: list) -> None:
    for line in iter(stream.readline, ""):
        line = line.rstrip()
        if callback:
            callback(line)
        chunks.append(line)
    stream.close()


def _cancel(process: subprocess.Popen, wait_s: float) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:  # a second Ctrl-C: the engine's forced stop, and no more waiting
        if process.poll() is None:
            process.send_signal(signal.SIGINT)


def engine_command_class():
    """A PulumiCommand whose `run` goes through run_engine (imported lazily: pulumi is heavy)."""
    from pulumi.automation import PulumiCommand
    from pulumi.automation._cmd import CommandResult
    from pulumi.automation.errors import create_command_error

    class EngineCommand(PulumiCommand):
        def run(self, args, cwd, additional_env, on_output=None, on_error=None):
            separator = args.index("--") if "--" in args else len(args)
            if "--non-interactive" not in args[:separator]:
                args = ["--non-interactive", *args]
            env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
            if os.path.isabs(self.command):  # the plugins beside the binary come first
                env["PATH"] = os.pathsep.join([os.path.dirname(self.command), env.get("PATH", "")])
            stdout, stderr, code = run_engine(self.command, args, cwd, env, on_output, on_error)
            result = CommandResult(stdout=stdout, stderr=stderr, code=code)
            if code != 0:
                raise create_command_error(result)
            return result

    return EngineCommand
