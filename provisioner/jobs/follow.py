"""Streams a job's log until it ends, reconnecting when the connection drops: the log continues from the byte the
client had, so nothing is lost or repeated. A host that answers nothing for the liveness timeout (reconnecting
meanwhile) raises HostUnreachable; the job itself runs on in its own session on the host, so the run is kept."""

from __future__ import annotations

import time
from typing import Callable, Optional

from provisioner.host.liveness import Liveness, liveness
from provisioner.host.transport import HostUnreachable, Transport, TransportError
from provisioner.jobs.control import LOG_READ_LIMIT, OUTPUT_WAIT_S, LogChunk, read_log


def kept_run_hint(run_name: str) -> str:
    """What a user can do about a run whose host stopped answering: dstack keeps it as it is."""
    return (f"{run_name} is kept as it is (its job goes on if the host is up): `dstack attach {run_name}` follows it "
            f"again once the host answers, `dstack stop {run_name}` stops it and removes what it created")


class LogFollower:
    def __init__(self, connect: Callable[..., Transport], run_name: str, offset: int = 0,
                 live: Optional[Liveness] = None, log: Callable[[str], None] = lambda _: None,
                 host: str = "the host", on_lost: Callable[[], None] = lambda: None):
        """`connect(total_wait=seconds)` opens a connection to the host within the time given; `host` names it in
        messages until a connection does. `on_lost()` runs when the connection is lost and may raise, to end the
        follow sooner than the liveness timeout (a cloud that says the VM is gone)."""
        self._on_lost = on_lost
        self._connect = connect
        self.run_name = run_name
        self.offset = offset
        self.transport: Optional[Transport] = None
        self._live = live or liveness()
        self._log = log
        self._answered_at = time.monotonic()
        self._host = host
        self.notice: Optional[str] = None  # the host's spot interruption notice, once a read has seen it
        self._polled_at = float("-inf")  # when the last poll began (time.monotonic)
        self._brought = False  # whether it brought output

    def _transport(self) -> Transport:
        if self.transport is None:
            silent = time.monotonic() - self._answered_at
            self.transport = self._connect(total_wait=max(1.0, self._live.unreachable_after - silent))
        self._host = self.transport.description
        return self.transport

    def poll(self, write: Callable[[bytes], None], wait: float = 0.0) -> Optional[int]:
        """Writes what is new, in pieces of at most LOG_READ_LIMIT bytes (a log of any size in constant memory);
        returns the exit code once the job has ended and its whole log is written (`notice` holds the host's spot
        interruption notice once read: its line is in what was written). `wait`: where the log has nothing new,
        the read waits on the host up to that long for its next bytes (control.read_log)."""
        self._polled_at, self._brought = time.monotonic(), False
        while True:
            chunk = self._read(wait)
            self.notice = chunk.notice or self.notice
            if chunk.data:
                self._brought = True
                write(chunk.data)
                self.offset += len(chunk.data)
            if len(chunk.data) < LOG_READ_LIMIT:
                return chunk.exit_code

    def pause(self, interval: float) -> float:
        """Seconds to let pass before the next poll: `interval` after one that brought output (a log that grows fast
        is read that often, as before reads waited); after one that brought nothing, what is left of `interval`
        since it began: nothing after one that waited on the host (the next waits in turn), the rest after one that
        returned at once (a host that can not wait: no GNU tail or no `timeout`), as a poll."""
        if self._brought:
            return interval
        return max(0.0, interval - (time.monotonic() - self._polled_at))

    def _read(self, wait: float) -> LogChunk:
        """The next piece of the log. Reconnects while the host has been silent for less than the liveness timeout,
        then raises HostUnreachable."""
        lost = False
        while True:
            try:
                chunk = read_log(self._transport(), self.run_name, self.offset, timeout=self._live.silent_after,
                                 limit=LOG_READ_LIMIT, wait=wait)
                break
            except TransportError as e:
                self._drop()
                silent = time.monotonic() - self._answered_at
                why = str(e).removeprefix(self._host).lstrip(": ")  # the host is named once
                if silent >= self._live.unreachable_after:
                    raise HostUnreachable(f"{self._host} unreachable for {silent:.0f}s: {why}") from None
                if not lost:
                    self._on_lost()
                    self._log(f"lost the connection to {self._host} ({why}); reconnecting for up to "
                              f"{self._live.unreachable_after - silent:.0f}s")
                    lost = True
                time.sleep(min(1.0, self._live.unreachable_after - silent))
        self._answered_at = time.monotonic()
        if lost:
            self._log(f"reconnected to {self._host}")
        return chunk

    def follow(self, write: Callable[[bytes], None], interval: float = 0.2,
               should_stop: Callable[[], bool] = lambda: False) -> Optional[int]:
        while True:
            code = self.poll(write, wait=OUTPUT_WAIT_S)
            if code is not None or should_stop():
                return code
            time.sleep(self.pause(interval))

    def _drop(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:  # closing a broken connection can fail in many ways; it is gone either way
                pass
            self.transport = None
