"""An offer: one instance type, in one region (with its zones), on-demand or spot, at a price per hour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from offers.catalog import InstanceType
from offers.tpus import VENDOR as TPU_VENDOR, tpu_hosts


@dataclass(frozen=True)
class Offer:
    backend: str
    instance: InstanceType
    region: str
    zones: Tuple[str, ...]
    spot: bool
    price: float  # the instance, $/hour
    disk_gb: float
    disk_price: float  # the disk, $/hour

    @property
    def total_price(self) -> float:
        return self.price + self.disk_price

    @property
    def tpu_slice(self) -> bool:
        """A GCP TPU slice: one offer for all of its hosts, each a node of the run (offers.tpus)."""
        return self.instance.gpu_vendor == TPU_VENDOR

    def run_price(self, nodes: int) -> float:
        """A run's price per hour on `nodes` nodes: the offer is one node's, except a TPU slice's (all its hosts')."""
        return self.total_price if self.tpu_slice else self.total_price * nodes

    def sort_key(self) -> tuple:
        return (self.price, self.backend, self.instance.name, self.region, self.spot, self.instance.gpu_name,
                self.instance.gpu_count)

    def describe_resources(self) -> str:
        """`8xH100 (80GB), 192 CPU, 2048GB, 100GB disk`; a TPU slice: `TPU v5litepod-16 (256GB, 4 hosts), 112 CPU,
        192GB per host, 100GB disk`."""
        t = self.instance
        parts = []
        hosts = tpu_hosts(t.name) if t.gpu_vendor == TPU_VENDOR else 1
        if t.gpu_vendor == TPU_VENDOR:
            parts.append(f"TPU {t.gpu_name} ({_gb(t.gpu_memory_gib)}" + (f", {hosts} hosts)" if hosts > 1 else ")"))
        elif t.gpu_count:
            parts.append(f"{t.gpu_count}x{t.gpu_name} ({_gb(t.gpu_memory_gib)})")
        parts.append(f"{t.cpus} CPU{'' if t.arch == 'x86' else ' (arm)'}")
        parts.append(_gb(t.memory_gib) + (" per host" if hosts > 1 else ""))
        parts.append(f"{_gb(self.disk_gb)} disk")
        return ", ".join(parts)

    def to_json(self) -> dict:
        """Shaped as dstack's `InstanceOfferWithAvailability`."""
        t = self.instance
        gpu = {"name": t.gpu_name, "memory_mib": round(t.gpu_memory_gib * 1024), "vendor": t.gpu_vendor}
        return {
            "backend": self.backend,
            "instance": {
                "name": t.name,
                "resources": {
                    "cpus": t.cpus,
                    "memory_mib": round(t.memory_gib * 1024),
                    "gpus": [dict(gpu) for _ in range(t.gpu_count)],
                    "spot": self.spot,
                    "disk": {"size_mib": round(self.disk_gb * 1024)},
                },
            },
            "region": self.region,
            "availability_zones": list(self.zones),
            "price": round(self.price, 6),
        }


def _gb(value: float) -> str:
    return f"{value:g}GB"
