"""The backend that serves an offer, by the offer's backend name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from provisioner.backends.base import Backend
from provisioner.backends.hosts import FleetBackend, LocalBackend
from provisioner.store.store import StateStore

if TYPE_CHECKING:
    from configuration.backends import DstackConfig


def backend_for(name: str, config: DstackConfig, store: StateStore, fleet_hosts: Optional[dict] = None) -> Backend:
    """A cloud's backend reuses idle fleet instances (provisioner.planning.reuse) before creating any."""
    if name == "local":
        return LocalBackend()
    if name == "ssh":
        return FleetBackend(store, fleet_hosts or {})
    # a cloud's modules (its stacks, the job plans) only for a run on a cloud: `dstack ps` on hosts loads none
    from provisioner.backends.cloud import CloudBackend
    from provisioner.backends.reusing import ReusingBackend

    return ReusingBackend(CloudBackend(name, config, store), store)
