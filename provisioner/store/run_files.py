"""What a run leaves besides its state row, for `dstack event` and `dstack logs --since/-d`: when each piece of its
output arrived (`output.times`, next to the local copy of the output) and the progress lines of its provisioning
(`diagnostics.log`). Both live in `$DSTACK_HOME/runs/<run>/`, mode 0600."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from configuration.home import append_private, dstack_home


def run_folder(run_name: str) -> Path:
    return dstack_home() / "runs" / run_name


def remove_run_folder(run_name: str) -> None:
    """What a deleted run left: its output, arrival times and diagnostics go with it."""
    shutil.rmtree(run_folder(run_name), ignore_errors=True)


def move_run_folder(run_name: str, kept: str) -> None:
    """A finished run kept apart as `kept` (provisioner.store.run_tables.archive_run) takes its files along: the
    next run of the name starts with none."""
    folder = run_folder(run_name)
    if folder.exists():
        folder.rename(run_folder(kept))


def output_times_path(run_name: str) -> Path:
    return run_folder(run_name) / "output.times"


def diagnostics_path(run_name: str) -> Path:
    return run_folder(run_name) / "diagnostics.log"


def mark_output(run_name: str, offset: int, at: Optional[float] = None) -> None:
    """Output from byte `offset` of the local copy arrived at `at` (now)."""
    with append_private(output_times_path(run_name)) as f:
        f.write(f"{time.time() if at is None else at:.3f} {offset}\n".encode())


def offset_since(run_name: str, since: float) -> Optional[int]:
    """The first byte of output that arrived at or after `since` (past the end when none did); None when the
    arrival times were not recorded (dstack records them while it streams an attached run's output)."""
    path = output_times_path(run_name)
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        at, _, offset = line.partition(" ")
        try:
            if float(at) >= since:
                return int(offset)
        except ValueError:  # a line cut short by a crash
            continue
    return sys.maxsize


def log_diagnostic(run_name: str, line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with append_private(diagnostics_path(run_name)) as f:
        f.write(f"{stamp} {line}\n".encode(errors="replace"))


def local_log_path(run_name: str, rank: int = 0) -> Path:
    """Node 0's copy is `output.log` (as a single node's always was); node K's `output.node-K.log`."""
    folder = dstack_home() / "runs" / run_name
    return folder / ("output.log" if rank == 0 else f"output.node-{rank}.log")
