"""How to reach a run's host again, from the run record: this machine, or SSH with the key and host key to use.

Only paths and public keys are stored; a cloud run's private key lives in its own 0600 file under `$DSTACK_HOME`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

from configuration.home import dstack_home
from provisioner.host.ssh import SSHTarget, connect
from provisioner.host.transport import LocalTransport, Transport


@dataclass(frozen=True)
class HostAccess:
    kind: str  # "local" or "ssh"
    hostname: Optional[str] = None
    port: int = 22
    user: Optional[str] = None
    identity_file: Optional[str] = None
    host_key: Optional[str] = None  # the public host key, for VMs whose key the run made
    internal_ip: Optional[str] = None  # the address the other nodes of a cluster reach it at (a VM's private one)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "HostAccess":
        return cls(**data)

    @property
    def description(self) -> str:
        return "this machine" if self.kind == "local" else f"{self.user}@{self.hostname}:{self.port}"

    def ssh_target(self):
        return SSHTarget(hostname=self.hostname, port=self.port, user=self.user or "root",
                         identity_file=self.identity_file, host_key=self.host_key)

    def connect(self, total_wait: float = 60.0, log: Callable[[str], None] = lambda _: None,
                booting: bool = False) -> Transport:
        """`booting`: the first connection to a VM the run just made (see provisioner.host.ssh.connect)."""
        if self.kind == "local":
            return LocalTransport(str(dstack_home() / "jobs"))

        return connect(self.ssh_target(), total_wait=total_wait, log=log, booting=booting and bool(self.host_key))
