"""What a run's steps share: the state store, the configuration, where progress and output go, and the backend of
each offer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Dict, Optional, Tuple

from configuration.backends import DstackConfig
from provisioner.backends.base import Backend
from provisioner.backends.registry import backend_for
from provisioner.host.access import HostAccess
from provisioner.store.store import StateStore


@dataclass
class Reporter:
    info: Callable[[str], None] = lambda message: None
    step: Callable = lambda progress: None
    output: Callable[[bytes], None] = lambda data: None
    upload: Callable[[int, int], None] = lambda done, total: None  # bytes packed, bytes in all


class InterruptAction(str, Enum):
    """What an interrupt of a run whose job runs attached does: the run goes on detached, it is stopped (grace
    period, teardown), or it is aborted (no grace period, teardown)."""

    DETACH = "detach"
    STOP = "stop"
    ABORT = "abort"


@dataclass
class RunSession:
    store: StateStore
    config: DstackConfig
    reporter: Reporter = field(default_factory=Reporter)
    fleet_hosts: Dict[Tuple[str, str], HostAccess] = field(default_factory=dict)
    # (run name, the KeyboardInterrupt) -> what to do, asked once the job runs attached; before that, or without
    # it, an interrupt stops the run: nothing else looks after a run that is still being provisioned
    on_interrupt: Optional[Callable[[str, KeyboardInterrupt], InterruptAction]] = None

    def backend(self, name: str) -> Backend:
        return backend_for(name, self.config, self.store, self.fleet_hosts)
