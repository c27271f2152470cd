"""A dev environment's run beyond a task's: its key, the wait for `init`, the `Host NAME` entry and the IDE's link,
the session an attached dstack holds, and what its end removes (docs/runs.md, "Dev environments").

The run's key (`$DSTACK_HOME/runs/NAME/ssh_key`, 0600) is made before the job starts; the job's start puts its line
in the host's authorized_keys and the job's end takes it out (provisioner.jobs.dev_env). Once `init` is done, the
entry goes in the ssh config dstack keeps (provisioner.runs.ssh_entries) and `dev_environment.json` next to the key
says where `ssh NAME` lands and the IDE's link (for `dstack ps --json`). The run's end removes the entry and the key,
and takes the key's line out of a host that outlives the run (an SSH fleet's, a kept instance) once more, should the
job's own end not have run (a host rebooted under it).
"""

from __future__ import annotations

import json
import posixpath
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from configuration.errors import DstackError
from configuration.home import private_file
from configuration.owner import another_homes
from provisioner.host.access import HostAccess
from provisioner.host.keys import generate_key, home_key_name
from provisioner.jobs.dev_env import (
    CONTAINER_WORKDIR,
    IDE_NAMES,
    hold_command,
    ide_url,
    revoke_command,
    state_command,
)
from provisioner.jobs.cluster_ssh import host_keys
from provisioner.jobs.layout import parse_exit_code
from provisioner.jobs.run_jobs import exit_status
from provisioner.jobs.team_keys import seal_home_key, unsealed_home_key
from provisioner.runs.listing import info_path
from provisioner.runs.ssh_entries import SSHEntry, add_entry, remove_entry
from provisioner.store.run_files import run_folder
from provisioner.store.store import StateStore

READY_POLL_S = 0.5


def key_path(run_name: str) -> Path:
    return run_folder(run_name) / "ssh_key"


def make_key(run_name: str, store: StateStore) -> str:
    """The run's key pair (sealed into a team database: a teammate's `dstack attach` uses it); returns the public
    key line its job authorizes."""
    public = generate_key(key_path(run_name), f"dstack-dev-{run_name}")
    key_path(run_name).with_suffix(".pub").write_text(public + "\n")
    seal_home_key(store, key_path(run_name))
    return public


class InitFailed(DstackError):
    pass


def wait_ready(access: HostAccess, run_name: str, report: Callable[[str], None],
               stop: Optional[threading.Event] = None) -> Optional[str]:
    """Waits until `init` is done; returns the job folder's absolute path on the host (None once `stop` is set).
    Raises InitFailed when the job has ended."""
    transport = access.connect(total_wait=60)
    try:
        said = False
        while stop is None or not stop.is_set():
            result = transport.run(state_command(run_name), timeout=30)
            lines = result.text.split()
            code = parse_exit_code(result.stderr.decode(errors="replace"))
            ready = "ready" in lines[1:]
            if code is not None:
                why = exit_status(code)[1] or "exit code 0"
                raise InitFailed(f"{run_name}: its job has ended ({why}){'' if ready else ' before `init` was done'}"
                                 f" (`dstack logs {run_name}` shows its output)")
            if ready:
                return lines[0]
            if not said:
                report(f"Waiting for `init` to finish (`dstack logs {run_name} -f` follows it)")
                said = True
            time.sleep(READY_POLL_S)
        return None
    finally:
        transport.close()


def session_path(configuration: dict, folder: str) -> str:
    """Where `ssh NAME` lands: the repo's folder (in the container with `image:`), or `working_dir`."""
    base = CONTAINER_WORKDIR if configuration.get("image") else posixpath.join(folder, "repo")
    working_dir = configuration.get("working_dir")
    return posixpath.normpath(posixpath.join(base, working_dir)) if working_dir else base


def open_entry(run_name: str, access: HostAccess, configuration: dict, folder: str,
               report: Callable[[str], None]) -> dict:
    """Writes the run's `Host NAME` entry and its dev_environment.json; reports how to connect. Returns the JSON."""
    proxy = access.proxy_access()  # an SSH fleet's `proxy_jump`: `ProxyJump NAME-jump`
    jump = SSHEntry(name=f"{run_name}-jump", hostname=proxy.hostname, port=proxy.port, user=proxy.user,
                    identity_file=proxy.identity_file, host_keys=host_keys(proxy)) if proxy is not None else None
    message = add_entry(SSHEntry(name=run_name, hostname=access.hostname, port=access.port, user=access.user or "root",
                                 identity_file=str(key_path(run_name)), host_keys=host_keys(access), jump=jump))
    if message:
        report(message)
    path = session_path(configuration, folder)
    ide = configuration.get("ide")
    info = {"ssh_host": run_name, "path": path, "ide": ide,
            "ide_url": ide_url(ide, run_name, path) if ide else None,
            "inactivity_duration": configuration.get("inactivity_duration")}
    private_file(info_path(run_name)).write_text(json.dumps(info))
    report(f"{run_name} is ready: `ssh {run_name}` opens a shell in {path}")
    if ide:
        report(f"To open in {IDE_NAMES[ide]}: {info['ide_url']}")
    return info


def reopen_entry(store: StateStore, record, access: HostAccess, report: Callable[[str], None]) -> dict:
    """`dstack attach`: the entry written again (the job folder's path asked from the host); a teammate's run's key
    unsealed into this home first (provisioner.jobs.team_keys)."""
    run_name, configuration = record.name, record.configuration
    if store.team is not None and another_homes(record.owner_id):
        unsealed_home_key(store, home_key_name(key_path(run_name)), f"run {run_name} is {record.user_name}'s")
    if not key_path(run_name).exists():
        raise DstackError(f"{run_name}'s SSH key ({key_path(run_name)}) is gone: `ssh {run_name}` cannot be set up "
                          f"again; `dstack stop {run_name}` ends the run")
    folder = wait_ready(access, run_name, report)
    return open_entry(run_name, access, configuration, folder, report)


def close(run_name: str, hosts, report: Callable[[str], None]) -> None:
    """The run's end: its key's line out of each host that outlives it, its entry and key removed."""
    public = key_path(run_name).with_suffix(".pub")
    if public.exists():
        line = public.read_text().strip()
        for access in hosts:
            try:
                transport = access.connect(total_wait=20)
                try:
                    transport.run(revoke_command(line), timeout=30)
                finally:
                    transport.close()
            except Exception as e:  # the user is told what is left where
                report(f"could not remove {run_name}'s key from {access.description}'s authorized_keys (the line "
                       f"ending `dstack-dev-{run_name}`): {e}")
    remove_entry(run_name)
    for path in (key_path(run_name), public):
        path.unlink(missing_ok=True)


class Attachment:
    """An attached dstack's side of a dev environment, in a thread of its own: waits for `init` (announcing the entry
    and link once done, with `announce`), then holds a marked session on the host while attached (being attached is
    activity for `inactivity_duration`), reconnecting when its connection drops."""

    def __init__(self, access: HostAccess, run_name: str, configuration: dict, report: Callable[[str], None],
                 announce: bool):
        self._stop = threading.Event()
        self._args = (access, run_name, configuration, report, announce)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"dev-{run_name}")
        self._thread.start()

    def _run(self) -> None:
        access, run_name, configuration, report, announce = self._args
        try:
            if announce:
                folder = wait_ready(access, run_name, lambda message: None, self._stop)
                if folder is None:
                    return
                open_entry(run_name, access, configuration, folder, report)
        except Exception:  # the job ended or the host went: the attached dstack reports that itself
            return
        while not self._stop.is_set():
            try:
                transport = access.connect(total_wait=30)
            except Exception:
                self._stop.wait(5)
                continue
            try:
                channel = transport.transport.open_session(timeout=10)
                channel.exec_command(hold_command(run_name))
                while not self._stop.is_set() and not channel.exit_status_ready() and not channel.closed:
                    self._stop.wait(1)
            except Exception:
                pass
            finally:
                transport.close()
            self._stop.wait(5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
