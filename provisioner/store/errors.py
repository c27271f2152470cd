"""What a failing SQLite call on the state store means for the user: damage, a full disk, a busy or vanished file.

SQLite's messages are stable (they are `sqlite3_errstr` texts), so they are matched here rather than the error
codes, which Python exposes only from 3.11 on.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import List

from configuration.errors import DstackError

DAMAGED, FULL, BUSY, GONE, READ_ONLY, IO, OTHER = "damaged", "full", "busy", "gone", "read-only", "io", "other"

_MESSAGES = (
    ("database or disk is full", FULL),
    ("file is not a database", DAMAGED),
    ("malformed", DAMAGED),
    ("no such table", DAMAGED),
    ("no such column", DAMAGED),
    ("database is locked", BUSY),
    ("database table is locked", BUSY),
    ("unable to open database file", GONE),
    ("readonly database", READ_ONLY),
    ("disk I/O error", IO),
)
_NEARLY_FULL_BYTES = 1 << 20  # SQLite reports a failed allocation of its shared-memory file as an I/O error


class StoreDamaged(DstackError):
    """The state store cannot be read. The message says which file, where it was moved and what to do (`head`, then
    `tail`); `hosts` are the hosts (HostAccess JSON) where jobs that no store knows any more may still run, for the
    caller to search and name between the two (provisioner.jobs.orphans.damage_report)."""

    def __init__(self, head: List[str], tail: List[str], hosts: List[dict]):
        super().__init__("\n".join(head + tail))
        self.head, self.tail, self.hosts = head, tail, hosts


class DiskFull(DstackError):
    """A change could not be written: the disk holding $DSTACK_HOME is full."""


class Damage(Exception):
    """A check of the store or of a row failed: the store is damaged, for `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConnectionLost(DstackError):
    """The team database's connection broke during an operation: a read is tried again once (read_again); a
    write is reported, never repeated (it may have been recorded: repeating it could record it twice)."""


class Conflict(Exception):
    """A row with that key exists (a name taken): either engine's constraint error, for the caller to explain."""


def failure_kind(error: sqlite3.Error, folder: Path) -> str:
    text = str(error)
    for needle, kind in _MESSAGES:
        if needle in text:
            return FULL if kind == IO and _disk_nearly_full(folder) else kind
    return OTHER


def _disk_nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def store_error(kind: str, path: Path, error: Exception) -> DstackError:
    """The user's message for every kind but DAMAGED (which moves the file aside first: see store_damage)."""
    if kind == FULL:
        return DiskFull(f"cannot write {path}: the disk is full; free some space on it and run the command again "
                        "(reading commands such as `dstack ps` and `dstack logs` still work)")
    if kind == BUSY:
        return DstackError(f"{path} is busy: another dstack command has held it for 30 s; run the command again")
    if kind == GONE:
        if not path.exists():
            return DstackError(f"{path} disappeared while dstack was using it (a dstack command that finds it "
                               "damaged moves it aside and says so); run the command again")
        return DstackError(f"cannot open {path}: check that it and its folder belong to you and are writable")
    if kind == READ_ONLY:
        return DstackError(f"cannot write {path}: the file or its folder is read-only")
    if kind == IO:
        return DstackError(f"{path}: the disk reported an I/O error; check the disk (`dmesg`)")
    return DstackError(f"{path}: {error}")
