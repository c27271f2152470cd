"""A damaged state store: kept aside, never silently replaced, and what it may have left running salvaged.

The damaged file (with its WAL) becomes `state.db.damaged-<time>`, the reason it was judged damaged goes next to it
(`...-reason`) and the marker goes, so the next command starts a new, empty store, as the message says. What the
damaged copy still yields (fleets, active runs) is read as far as it can be; the caller searches the job folders of
this machine and of those hosts for jobs still running (provisioner.jobs.orphans.damage_report), since after this no
store knows them.

Several commands may meet the damage at once. Setting the store aside and making a missing one happen under one
lock (`state.db.lock`), and a store is set aside only while it is still the very file (device and inode) that was
found damaged: a command that finds the file it used already moved aside names that copy and its recorded reason,
and never moves aside the fresh store another command has made meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple
from urllib.parse import quote

from configuration.errors import DstackError
from provisioner.store.errors import StoreDamaged
from provisioner.store.statuses import ACTIVE

COPY_SIDE_FILES = ("-wal", "-shm", "-reason")  # what goes with a damaged copy: its WAL files, why it was set aside
_lock_guard = threading.RLock()
_lock_depth = {}  # lock file -> (its descriptor, how many `with store_lock` of this process hold it)


def stat_of(path: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def file_identity(path: Path) -> Optional[Tuple[int, int]]:
    """(device, inode) of the file at `path`, which a rename keeps; None when there is none."""
    found = stat_of(path)
    return (found.st_dev, found.st_ino) if found else None


@contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """The lock under which the store at `path` is set aside or made; re-entrant within a process."""
    lock = str(path.with_name(path.name + ".lock"))
    with _lock_guard:
        if lock not in _lock_depth:
            try:
                descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                raise DstackError(f"cannot open {lock}, the state store's lock: {e.strerror}") from None
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            _lock_depth[lock] = (descriptor, 0)
        descriptor, depth = _lock_depth[lock]
        _lock_depth[lock] = (descriptor, depth + 1)
        try:
            yield
        finally:
            descriptor, depth = _lock_depth.pop(lock)
            if depth > 1:
                _lock_depth[lock] = (descriptor, depth - 1)
            else:
                os.close(descriptor)


def set_aside(path: Path, reason: str) -> Optional[Path]:
    """Renames the store and its WAL files to `<name>.damaged-<time>` and writes `reason` beside them; None when it
    is not there. Under store_lock."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while os.path.lexists(target):
        target = target.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    try:
        os.rename(path, target)
    except FileNotFoundError:  # gone: a store deleted while its marker says it was made here
        return None
    for suffix in ("-wal", "-shm"):
        try:
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
        except FileNotFoundError:
            pass
    try:
        Path(f"{target}-reason").write_text(reason + "\n")
    except OSError:  # a full disk: the copy is kept all the same, and this command's message says why
        pass
    return target


def copy_of(path: Path, identity: Optional[Tuple[int, int]]) -> Optional[Path]:
    """The damaged copy of `path` that is the file `identity` names (set aside by another command); None if none."""
    if identity is None:
        return None
    return next((copy for copy in sorted(path.parent.glob(f"{path.name}.damaged-*"))
                 if not copy.name.endswith(COPY_SIDE_FILES) and file_identity(copy) == identity), None)


def recorded_reason(copy: Path) -> str:
    try:
        return Path(f"{copy}-reason").read_text().strip() or "another dstack command found it damaged"
    except OSError:
        return "another dstack command found it damaged"


def remove_leftovers(path: Path) -> None:
    """A store about to be made at `path` (under store_lock) starts without WAL files: any there belong to no
    store (a command still reading the copy set aside may have opened them by name)."""
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def _rows(copy: Path, query: str, parameters: tuple = ()) -> list:
    """Rows of the damaged copy, as far as they can be read; none where they cannot."""
    for options in ("mode=ro", "mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(f"file:{quote(str(copy))}?{options}", uri=True, timeout=5)
            try:
                return db.execute(query, parameters).fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            continue
    return []


def _json(text) -> object:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def salvage(copy: Optional[Path]) -> Tuple[List[tuple], List[tuple]]:
    """(fleets as (name, source, hosts), active runs as (name, backend, region, host)) of the damaged copy."""
    if copy is None or not copy.is_file():
        return [], []
    fleets = [(name, source, _json(hosts)) for name, source, hosts in
              _rows(copy, "SELECT name, source, hosts FROM fleets")]
    marks = ", ".join("?" for _ in ACTIVE)
    runs = [(name, backend, region, _json(host)) for name, backend, region, host in
            _rows(copy, f"SELECT name, backend, region, host FROM runs WHERE status IN ({marks})", ACTIVE)]
    return fleets, runs


def salvaged_hosts(fleets: List[tuple], runs: List[tuple]) -> List[dict]:
    """Every fleet host's and every active run's host as recorded (provisioner.host.access.HostAccess JSON), as far
    as the damaged copy still says where they are."""
    fleet_hosts = [h.get("access") for _, _, hosts in fleets if isinstance(hosts, list) for h in hosts
                   if isinstance(h, dict)]
    return fleet_hosts + [host for _, _, _, host in runs]


def set_aside_and_report(path: Path, marker: Path, reason: str, identity: Optional[Tuple[int, int]]) -> DstackError:
    """Moves the damaged store aside and says so (report). `identity` is the file found damaged (None: it was
    missing). When another command has moved that file aside meanwhile, nothing is moved: that copy is named with the
    reason that command recorded (this one's may be an error of reading the new store at the path while it was
    being made); a file found damaged that is gone with no copy of it was replaced, and the command is to be run
    again."""
    with store_lock(path):
        if file_identity(path) == identity:
            copy = set_aside(path, reason) if identity is not None else None
            marker.unlink(missing_ok=True)
            return report(path, reason, copy)
        copy = copy_of(path, identity)
    if copy is None:
        return DstackError(f"{path} was replaced while dstack was using it; run the command again")
    return report(path, recorded_reason(copy), copy, by_another=True)


def moved_aside(path: Path, identity: Optional[Tuple[int, int]]) -> Optional[StoreDamaged]:
    """When a store operation failed (busy, gone, an I/O error) because another command was moving the file it used
    aside as damaged: the damage, with the reason recorded with that copy. None otherwise."""
    if identity is None or file_identity(path) == identity:
        return None
    with store_lock(path):  # the other command may be midway
        copy = copy_of(path, identity)
    return report(path, recorded_reason(copy), copy, by_another=True) if copy is not None else None


def report(path: Path, reason: str, copy: Optional[Path], by_another: bool = False) -> StoreDamaged:
    """The damage said, with what the damaged copy still yields: the hosts where jobs may still run
    (StoreDamaged.hosts, which the caller searches: this layer never reaches a host), the cloud runs that may have
    left resources, and the fleets to register again."""
    fleets, runs = salvage(copy)
    if copy is None:
        kept = "The"
    else:
        kept = f"{'Another dstack command moved it' if by_another else 'It was moved'} to {copy.name}, for " \
               "inspection; the"
    head = [f"the state store {path} is damaged: {reason}.",
            f"{kept} next dstack command starts a new, empty store, which knows none of its runs."]
    from configuration.backends import CLOUD_BACKENDS  # pydantic: not on every command's path to the store

    tail = [f"run {name} was active on {backend} {region}: `dstack gc` lists the cloud resources that runs left behind"
            for name, backend, region, _ in runs if backend in CLOUD_BACKENDS]
    tail += [f"fleet {name} must be registered again: `dstack apply -f {source}`" for name, source, _ in fleets]
    return StoreDamaged(head, tail, salvaged_hosts(fleets, runs))
