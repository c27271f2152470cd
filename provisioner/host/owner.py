"""Whether a dstack process (the owner of a run, the holder of a fleet stack's lock) is still alive.

A pid alone is not enough: once the owner has exited, the system may give its pid to an unrelated process, and the
run would look owned forever. The owner's start time (from /proc, in clock ticks since boot) is recorded with its
pid, and a process only counts as the owner when both match. Where /proc is missing, only the pid is checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

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
