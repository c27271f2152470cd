"""Streams a job's log until it ends, reconnecting when the connection drops: the log continues from the byte the
client had, so nothing is lost or repeated."""

from __future__ import annotations

import time
from typing import Callable, Optional

from provisioner.job import read_log
from provisioner.transport import Transport, TransportError


class LogFollower:
    def __init__(self, connect: Callable[[], Transport], run_name: str, offset: int = 0,
                 reconnect_wait: float = 120.0, log: Callable[[str], None] = lambda _: None):
        self._connect = connect
        self.run_name = run_name
        self.offset = offset
        self.transport: Optional[Transport] = None
        self._reconnect_wait = reconnect_wait
        self._log = log

    def _transport(self) -> Transport:
        if self.transport is None:
            self.transport = self._connect()
        return self.transport

    def poll(self, write: Callable[[bytes], None]) -> Optional[int]:
        """Writes what is new; returns the exit code once the job has ended. Reconnects (bounded) on a lost link."""
        deadline = time.monotonic() + self._reconnect_wait
        while True:
            try:
                chunk = read_log(self._transport(), self.run_name, self.offset)
                break
            except TransportError as e:
                self._drop()
                if time.monotonic() > deadline:
                    raise
                self._log(f"connection lost ({e}); reconnecting")
                time.sleep(1.0)
        if chunk.data:
            write(chunk.data)
            self.offset += len(chunk.data)
        return chunk.exit_code

    def follow(self, write: Callable[[bytes], None], interval: float = 0.2,
               should_stop: Callable[[], bool] = lambda: False) -> Optional[int]:
        while True:
            code = self.poll(write)
            if code is not None or should_stop():
                return code
            time.sleep(interval)

    def _drop(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:  # closing a broken connection can fail in many ways; it is gone either way
                pass
            self.transport = None
