"""What a run leaves besides its state row, for `dstack event` and `dstack logs --since/-d`: when each piece of its
output arrived (`output.times`, next to the local copy of the output) and the progress lines of its provisioning
(`diagnostics.log`). Both live in `$DSTACK_HOME/runs/<run>/`, mode 0600."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

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


def output_times_path(run_name: str, rank: int = 0) -> Path:
    """Beside node `rank`'s local copy of the output (local_log_path): `output.times`, `output.node-K.times`."""
    return run_folder(run_name) / ("output.times" if rank == 0 else f"output.node-{rank}.times")


def diagnostics_path(run_name: str) -> Path:
    return run_folder(run_name) / "diagnostics.log"


def mark_output(run_name: str, offset: int, at: Optional[float] = None) -> None:
    """Output from byte `offset` of the local copy arrived at `at` (now)."""
    with append_private(output_times_path(run_name)) as f:
        f.write(f"{time.time() if at is None else at:.3f} {offset}\n".encode())


def offset_since(run_name: str, since: float, rank: int = 0) -> Optional[int]:
    """The first byte of node `rank`'s output that arrived at or after `since` (past the end when none did); None
    when no arrival times were kept here (they are while dstack streams an attached run's output, and copied from
    the host with the log of a run that ended unattended)."""
    path = output_times_path(run_name, rank)
    if not path.exists():
        return None
    return first_offset_since(parse_times(path.read_text()), since)


def parse_times(text: str) -> List[Tuple[float, int]]:
    times = []
    for line in text.splitlines():
        at, _, offset = line.partition(" ")
        try:
            times.append((float(at), int(offset)))
        except ValueError:  # a line cut short by a crash
            continue
    return times


def first_offset_since(times: Sequence[Tuple[float, int]], since: float) -> int:
    """Of (arrival time, offset) pairs: the offset of the first output that arrived at or after `since`."""
    return next((offset for at, offset in times if at >= since), sys.maxsize)


def append_times(run_name: str, rank: int, times: Sequence[Tuple[float, int]], start: int = 0) -> None:
    """Arrival times of the output from byte `start` of the local copy on, added to those kept."""
    ends = [offset for _, offset in times[1:]] + [sys.maxsize]
    kept = [(at, max(offset, start)) for (at, offset), end in zip(times, ends) if end > start]
    if kept:
        with append_private(output_times_path(run_name, rank)) as f:
            f.write("".join(f"{at:.3f} {offset}\n" for at, offset in kept).encode())


def log_diagnostic(run_name: str, line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with append_private(diagnostics_path(run_name)) as f:
        f.write(f"{stamp} {line}\n".encode(errors="replace"))


def local_log_path(run_name: str, rank: int = 0) -> Path:
    """Node 0's copy is `output.log` (as a single node's always was); node K's `output.node-K.log`."""
    folder = dstack_home() / "runs" / run_name
    return folder / ("output.log" if rank == 0 else f"output.node-{rank}.log")
