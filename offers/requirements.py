"""What a run asks of an offer: resources plus placement policy, normalized from a configuration and flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple, Union

if TYPE_CHECKING:  # pydantic, which `dstack offers` does not import for flags alone (offers.resource_flags)
    from configuration import resources
    from offers import resource_flags


BACKENDS = ("aws", "gcp", "ssh", "local")
SPOT_POLICIES = ("spot", "on-demand", "auto")


def spot_from_policy(policy: str) -> Optional[bool]:
    """`spot` -> True, `on-demand` -> False, `auto` -> None (either; dstack's `Requirements.spot`)."""
    return {"spot": True, "on-demand": False, "auto": None}[policy]


@dataclass(frozen=True)
class Requirements:
    resources: Union[resources.ResourcesSpec, resource_flags.ResourcesSpec]
    spot: Optional[bool] = None
    max_price: Optional[float] = None
    backends: Optional[Tuple[str, ...]] = None
    regions: Optional[Tuple[str, ...]] = None
    instance_types: Optional[Tuple[str, ...]] = None
    reservation: Optional[str] = None  # a capacity reservation the run's VMs consume (offers.consumption)

    def to_json(self) -> dict:
        """The `requirements` object of `offers --json`, shaped as dstack's (`reservation` when there is one)."""
        document = {
            "resources": self.resources.model_dump(mode="json"),
            "max_price": self.max_price,
            "spot": self.spot,
        }
        return {**document, "reservation": self.reservation} if self.reservation else document

    def describe(self) -> str:
        spot = {True: "spot", False: "on-demand", None: "spot or on-demand"}[self.spot]
        parts = [self.resources.describe(), spot]
        if self.max_price is not None:
            parts.append(f"max ${self.max_price:g}/h")
        if self.backends:
            parts.append("backends " + ",".join(self.backends))
        if self.regions:
            parts.append("regions " + ",".join(self.regions))
        if self.instance_types:
            parts.append("types " + ",".join(self.instance_types))
        if self.reservation:
            parts.append(f"reservation {self.reservation}")
        return ", ".join(parts)
