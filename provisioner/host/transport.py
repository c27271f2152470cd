"""How the provisioner runs a command on a host: over SSH (provisioner.host.ssh) or on this machine (LocalTransport).

The job code above it speaks only `run(command, stdin)`, so the same job scripts serve cloud VMs, fleet hosts and
the local backend.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol, Union

from configuration.errors import DstackError


@dataclass(frozen=True)
class CommandResult:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


Stdin = Union[bytes, Iterable[bytes]]  # bytes, or chunks as they are made (a job's archive)


class TransportError(DstackError):
    """The host could not be reached, or the connection broke; the caller may reconnect and go on."""


class HostUnreachable(TransportError):
    """The host answered nothing for the whole liveness timeout (provisioner.host.liveness), reconnecting meanwhile."""


class Transport(Protocol):
    description: str

    def run(self, command: str, stdin: Optional[Stdin] = None, timeout: Optional[float] = None) -> CommandResult:
        ...

    def close(self) -> None:
        ...


class LocalTransport:
    """This machine: commands run under `sh -c`, as the user running dstack, with jobs under `jobs_dir`."""

    description = "localhost"
    command_listed = True  # the command is `sh -c`'s argument, in every user's process list: it carries no secret

    def __init__(self, jobs_dir: str):
        self._env = dict(os.environ, DSTACK_JOBS_DIR=jobs_dir)

    def run(self, command: str, stdin: Optional[Stdin] = None, timeout: Optional[float] = None) -> CommandResult:
        data = stdin if stdin is None or isinstance(stdin, bytes) else b"".join(stdin)
        try:
            done = subprocess.run(["sh", "-c", command], input=data or b"", capture_output=True, timeout=timeout,
                                  env=self._env)
        except subprocess.TimeoutExpired:
            raise TransportError(f"{self.description}: no answer within {timeout}s") from None
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        pass
