"""How long dstack waits on a host that stopped answering, and the keep-alives that notice it.

One setting scales the rest: `DSTACK_HOST_TIMEOUT` (seconds, default 45). SSH and TCP keep-alives go every
timeout/9; a connection whose peer acknowledges nothing (TCP_USER_TIMEOUT) or that answers no command within
timeout/3 is dropped, and dstack reconnects; once the host has answered nothing for the whole timeout, it is
unreachable and the command following the run says so, and what happens next, instead of retrying for minutes.
Stopping a job tries its host for 30 s, or for the whole timeout where that is shorter, then tears down anyway;
registering a fleet waits as long for each host to answer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from configuration.errors import ConfigurationError

HOST_TIMEOUT_VARIABLE = "DSTACK_HOST_TIMEOUT"
DEFAULT_HOST_TIMEOUT_S = 45.0
_BOUNDS = (3.0, 3600.0)
STOP_WAIT_S = 30.0


@dataclass(frozen=True)
class Liveness:
    unreachable_after: float = DEFAULT_HOST_TIMEOUT_S

    @property
    def keepalive(self) -> int:
        """Seconds between keep-alives (whole seconds: that is what paramiko and the TCP options take)."""
        return max(1, round(self.unreachable_after / 9))

    @property
    def silent_after(self) -> float:
        """Seconds without an answer (to a command, or a TCP acknowledgement) after which a connection is dead."""
        return max(2.0, self.unreachable_after / 3)

    @property
    def stop_wait(self) -> float:
        """Seconds a stop (of a job, or a cluster key's removal at a run's end), or a fleet's registration, tries
        to reach a host."""
        return min(STOP_WAIT_S, self.unreachable_after)


def liveness() -> Liveness:
    text = os.environ.get(HOST_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return Liveness()
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    low, high = _BOUNDS
    if not low <= seconds <= high:  # NaN fails both comparisons
        raise ConfigurationError(f"{HOST_TIMEOUT_VARIABLE}={text!r}: expected a number of seconds from "
                                 f"{low:.0f} to {high:.0f}")
    return Liveness(seconds)
