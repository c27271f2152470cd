"""The upload's progress bar: rich, on stderr, only on a terminal, and only once the upload has taken a second (a
small repo goes unnoticed)."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

SHOW_AFTER_S = 1.0


class UploadProgress:
    """Called as `progress(bytes packed, bytes in all)` by provisioner.jobs.archive.archive_stream."""

    def __init__(self, make_console: Callable):
        self._make_console = make_console  # a rich console on stderr, made when a bar is first shown
        self._started: Optional[float] = None
        self._bar = None
        self._task = None

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if self._bar is None and done < total and now - self._started >= SHOW_AFTER_S:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._bar = Progress(TextColumn("Uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 console=self._make_console(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("upload", total=total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        if done >= total:
            if self._bar is not None:
                self._bar.stop()
            self._started = self._bar = self._task = None
