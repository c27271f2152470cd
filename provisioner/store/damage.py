"""A damaged state store: kept aside, never silently replaced, and what it may have left running salvaged.

The damaged file (with its WAL) becomes `state.db.damaged-<time>` and the marker goes, so the next command starts a
new, empty store, as the message says. What the damaged copy still yields (fleets, active runs) is read as far as
it can be; the caller searches the job folders of this machine and of those hosts for jobs still running
(provisioner.jobs.orphans.damage_report), since after this no store knows them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import quote

from configuration.backends import CLOUD_BACKENDS
from provisioner.store.errors import StoreDamaged
from provisioner.store.statuses import ACTIVE


def set_aside(path: Path) -> Optional[Path]:
    """Renames the store and its WAL files to `<name>.damaged-<time>`; None when it is not there (any more)."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while os.path.lexists(target):
        target = target.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    try:
        os.rename(path, target)
    except FileNotFoundError:  # gone already, or another dstack command moved it a moment ago
        return None
    for suffix in ("-wal", "-shm"):
        try:
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
        except FileNotFoundError:
            pass
    return target


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


def set_aside_and_report(path: Path, marker: Path, reason: str) -> StoreDamaged:
    """Moves the damaged store aside and says so, with what the damaged copy still yields: the hosts where jobs may
    still run (StoreDamaged.hosts, which the caller searches: this layer never reaches a host), the cloud runs that
    may have left resources, and the fleets to register again."""
    copy = set_aside(path)
    marker.unlink(missing_ok=True)
    fleets, runs = salvage(copy)
    kept = f"It was moved to {copy.name}, for inspection; the" if copy else "The"
    head = [f"the state store {path} is damaged: {reason}.",
            f"{kept} next dstack command starts a new, empty store, which knows none of its runs."]
    tail = [f"run {name} was active on {backend} {region}: `dstack gc` lists the cloud resources that runs left behind"
            for name, backend, region, _ in runs if backend in CLOUD_BACKENDS]
    tail += [f"fleet {name} must be registered again: `dstack apply -f {source}`" for name, source, _ in fleets]
    return StoreDamaged(head, tail, salvaged_hosts(fleets, runs))
