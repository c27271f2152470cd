"""What `dstack attach` sets up for a task (a dev environment's side is provisioner.runs.dev_environments): the
run's `Host NAME` entry, the same mechanism (provisioner.runs.ssh_entries) a dev environment's `ssh NAME` and an
IDE's Remote-SSH use. A task's entry reaches the host its job runs on, with the key dstack reaches it with (or the
one `--ssh-identity` names); the run's end removes it (provisioner.runs.teardown)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from configuration.errors import ConfigurationError
from provisioner.host.access import HostAccess
from provisioner.jobs.cluster_ssh import host_keys
from provisioner.runs.ssh_entries import SSHEntry, add_entry


def with_identity(access: HostAccess, identity_file: Optional[str]) -> HostAccess:
    """The host reached with `--ssh-identity` instead of the key dstack keeps for it."""
    if identity_file is None:
        return access
    path = Path(identity_file).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"--ssh-identity {identity_file}: no such file (give the private key's path)")
    if access.kind != "ssh":
        return access  # this machine: no SSH
    return dataclasses.replace(access, identity_file=str(path.resolve()))


def open_task_entry(run_name: str, access: HostAccess, report: Callable[[str], None]) -> bool:
    """Writes a task's `Host NAME` entry; whether there is one (a job on this machine has no SSH to reach it by)."""
    if access.kind != "ssh":
        return False
    message = add_entry(SSHEntry(name=run_name, hostname=access.hostname, port=access.port,
                                 user=access.user or "root", identity_file=access.identity_file,
                                 host_keys=host_keys(access)))
    if message:
        report(message)
    report(f"`ssh {run_name}` reaches the host of {run_name}'s job ({access.description})")
    return True
