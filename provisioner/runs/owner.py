"""Whether the dstack process that owns a run is still alive, and so whether a run is looked after (what `dstack ps`
asks before it imports the reconciliation's modules: provisioner.runs.reconcile).

A pid alone is not enough: once the owner has exited, the system may give its pid to an unrelated process, and the
run would look owned forever. The owner's start time (from /proc, in clock ticks since boot) is recorded with its
pid, and a process only counts as the owner when both match. Where /proc is missing, only the pid is checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from configuration.owner import another_homes
from provisioner.store.records import RunRecord
from provisioner.store.statuses import RUNNING

_PROC = Path("/proc")


def process_start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot, or None where it is gone or /proc is missing."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; the start time is field 22.
    return int(stat.rsplit(")", 1)[1].split()[19])


def current_owner() -> tuple:
    """(pid, start time) of this process, as recorded with a run it owns."""
    pid = os.getpid()
    return pid, process_start_time(pid)


def owner_alive(pid: Optional[int], started: Optional[int] = None) -> bool:
    if not pid:
        return False
    if started is not None and _PROC.is_dir():
        return process_start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_owner_alive(record: RunRecord) -> bool:
    """Whether the dstack process that owns the run (its pid and start time) still lives. A teammate's run's owner
    lives on another machine: its pid means nothing here, and counts as gone."""
    return not another_homes(record.owner_id) and owner_alive(record.owner_pid, record.owner_started)


def looked_after(record: RunRecord) -> bool:
    """Whether a live dstack process looks after the run: an attached owner until the run ends, a detached one
    until it has started the job (or, stopped meanwhile, torn the run down). A teammate's run (a team database) is
    its owner's to look after, which this machine cannot ask, but for a detached job already running on a host
    this machine reaches too: its end is recorded by whichever laptop sees it first."""
    if another_homes(record.owner_id):
        return not (record.detached and record.status in RUNNING and (record.host or {}).get("kind") != "local")
    return run_owner_alive(record) and (not record.detached or record.status not in RUNNING)
