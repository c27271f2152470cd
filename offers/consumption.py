"""How a cloud sells an instance type, where that is not simply on demand and spot: Google sells its largest GPU
machines only through reservations, flex-start and spot (Compute Engine, "Accelerator-optimized machine family":
consumption options; AI Hypercomputer, "Consumption options"). The catalogue lists an on-demand price for them all
the same, and those are the cheapest H100, H200 and B200 offers: offered on demand, a run would take them and fail
at `up` (or wait on a capacity that on-demand never gets).

So the solver offers these types as spot only, and on demand only to a run that names a `reservation` (its VMs then
consume it: stacks.gcp.program); flex-start is not targeted, so it opens nothing here.
"""

from __future__ import annotations

from typing import Dict, Tuple

# Machine types (name prefixes) that are not sold on demand: A4X, A4, A3 Ultra, A3 Mega and A3 High with 8 GPUs.
RESERVATION_BOUND: Dict[str, Tuple[str, ...]] = {
    "gcp": ("a4x-", "a4-", "a3-ultragpu-", "a3-megagpu-", "a3-highgpu-8g"),
}
# Of those, the ones not sold as spot either (A4X: reservations only).
RESERVATION_ONLY: Dict[str, Tuple[str, ...]] = {"gcp": ("a4x-",)}
# The backends whose VMs can consume a named reservation (the run's `reservation`).
RESERVATION_BACKENDS = ("gcp",)


def needs_reservation(backend: str, instance_type: str) -> bool:
    """Whether the type is sold on demand only through a reservation."""
    return instance_type.startswith(RESERVATION_BOUND.get(backend, ()))


def spot_sold(backend: str, instance_type: str) -> bool:
    return not instance_type.startswith(RESERVATION_ONLY.get(backend, ()))


def withheld_note(backend: str, instance_types) -> str:
    """What the plan and `dstack offers` say about the on-demand offers left out."""
    names = ", ".join(sorted(instance_types))
    return (f"{backend} {names}: offered as spot only; Google sells these machine types on demand only through a "
            "reservation (set `reservation` to the name of one you hold) or flex-start")
