"""The backend that serves an offer, by the offer's backend name."""

from __future__ import annotations

from typing import Optional

from configuration.backends import DstackConfig
from provisioner.backends.base import Backend
from provisioner.backends.cloud import CloudBackend
from provisioner.backends.hosts import FleetBackend, LocalBackend
from provisioner.backends.reusing import ReusingBackend
from provisioner.store.store import StateStore


def backend_for(name: str, config: DstackConfig, store: StateStore, fleet_hosts: Optional[dict] = None) -> Backend:
    """A cloud's backend reuses idle fleet instances (provisioner.planning.reuse) before creating any."""
    if name == "local":
        return LocalBackend()
    if name == "ssh":
        return FleetBackend(store, fleet_hosts or {})
    return ReusingBackend(CloudBackend(name, config, store), store)
