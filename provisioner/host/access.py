"""How to reach a run's host again, from the run record: this machine, or SSH with the key and host key to use.

Only paths and public keys are stored; a cloud run's private key lives in its own 0600 file under `$DSTACK_HOME`.
The SSH module is imported when a host is reached over SSH: `dstack ps` reaches this machine alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from configuration.home import dstack_home
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
    proxy_jump: Optional[str] = None  # `user@host:port` of an SSH fleet's proxy host (`proxy_jump`), reached first
    proxy_identity_file: Optional[str] = None  # the proxy host's private key file

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "HostAccess":
        return cls(**data)

    @property
    def description(self) -> str:
        if self.kind == "local":
            return "this machine"
        return f"{self.user}@{self.hostname}:{self.port}" + (f" (via {self.proxy_jump})" if self.proxy_jump else "")

    def ssh_target(self):
        from provisioner.host.ssh import SSHTarget

        proxy = self.proxy_access()
        return SSHTarget(hostname=self.hostname, port=self.port, user=self.user or "root",
                         identity_file=self.identity_file, host_key=self.host_key,
                         proxy=proxy.ssh_target() if proxy is not None else None)

    def proxy_access(self) -> Optional["HostAccess"]:
        """The proxy host this one is reached through, or None."""
        if not self.proxy_jump:
            return None
        user, address = self.proxy_jump.split("@", 1)
        hostname, port = address.rsplit(":", 1)
        return HostAccess(kind="ssh", hostname=hostname, port=int(port), user=user,
                          identity_file=self.proxy_identity_file)

    def connect(self, total_wait: float = 60.0, log: Callable[[str], None] = lambda _: None,
                booting: bool = False) -> Transport:
        """`booting`: the first connection to a VM the run just made (see provisioner.host.ssh.connect). Through the
        host's kept connection (provisioner.host.keeper_client) unless keepers are off."""
        if self.kind == "local":
            return LocalTransport(str(dstack_home() / "jobs"))

        from provisioner.host.keeper_client import connect_kept
        from provisioner.host.ssh import connect

        target = self.ssh_target()
        booting = booting and bool(self.host_key)
        deadline = time.monotonic() + total_wait
        kept = connect_kept(target, total_wait, log, booting=booting)  # the host's kept connection, or None
        if kept is not None:
            return kept
        # a keeper that refused (a host that did not answer its key check) spent part of the wait
        return connect(target, total_wait=max(1.0, deadline - time.monotonic()), log=log, booting=booting)


def announce_use(hosts: Sequence[HostAccess], remember_as: Optional[str] = None) -> None:
    """Tells the kept connections of `hosts` (SSH ones) that this command is about to use them: each begins its host
    key check now, while the command goes on (provisioner.host.keeper_wire.announce); remembered for the next command
    for `remember_as` (a configuration file's path) to announce as it begins."""
    targets = [host.ssh_target() for host in hosts if host.kind == "ssh"]
    if targets:
        from provisioner.host.keeper_client import announce_kept

        announce_kept(targets, remember_as)
    elif remember_as is not None:
        from provisioner.host.keeper_wire import forget_uses

        forget_uses(remember_as)

