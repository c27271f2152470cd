"""Trying offers in price order, each in every zone of its region, until one provisions: what runs
(provisioner.runs.failover) and cloud fleets (provisioner.backends.cloud_fleets) share. A retryable failure rules out
its scope for the tries after it: its zone, its offer (every zone of it), its region, its instance type everywhere,
the whole cloud, or one host of an SSH fleet; any other failure stops at once."""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

from offers.offer import Offer
from provisioner.planning.reuse import InstanceOffer
from stacks.errors import StackFailure

HOST_BACKENDS = ("ssh", "local")  # hosts that exist: claiming one creates nothing
MAX_OFFERS_TRIED = 5  # offers that create something, not zones (the zones of one offer count as one try); hosts
# that exist (SSH fleets', this machine) are all tried

Provisioned = TypeVar("Provisioned")


class OffersExhausted(Exception):
    """No offer provisioned: `tried` offers were tried (each failure was handed to the caller as it came)."""

    def __init__(self, tried: int):
        super().__init__(f"tried {tried}")
        self.tried = tried


def scope_key(offer: Offer, scope: str) -> tuple:
    """What a failure of `scope` rules out for the next tries: the cloud, a region (an SSH fleet), a zone, the offer's
    instance type in its region (every zone), an instance type everywhere, or one host (of an SSH fleet: its region
    is the fleet, its instance the host)."""
    if scope == "zone" and isinstance(offer, InstanceOffer):  # an instance that exists: itself, not the zone-less
        return (offer.backend, "instance", offer.fleet, offer.num)  # key every other fleet instance's offer shares
    zone = offer.zones[0] if offer.zones else ""
    return {"cloud": (offer.backend,), "region": (offer.backend, offer.region),
            "zone": (offer.backend, offer.region, zone),
            "offer": (offer.backend, "offer", offer.region, offer.instance.name, offer.spot),
            "type": (offer.backend, "type", offer.instance.name),
            "host": (offer.backend, offer.region, "host", offer.instance.name)}[scope]


def ruled_out(offer: Offer, blocked: set) -> Optional[str]:
    for why in ("cloud", "region", "zone", "offer", "type", "host"):
        if scope_key(offer, why) in blocked:
            return why
    return None


def zone_offers(offer: Offer) -> List[Offer]:
    """The offer once per zone of its region, in the catalogue's order: a capacity error in one zone moves to the
    next zone of the same region before the next offer."""
    if len(offer.zones) <= 1:
        return [offer]
    return [dataclasses.replace(offer, zones=(zone,)) for zone in offer.zones]


def first_provisioned(offers: Sequence[Offer], attempt: Callable[[Offer], Provisioned],
                      failed: Callable[[Offer, StackFailure], None],
                      max_offers: int = MAX_OFFERS_TRIED) -> Tuple[Offer, Provisioned]:
    """`attempt(offer)` for each offer in turn, zone by zone, skipping what earlier failures ruled out, until one
    returns: that offer (its zone) and what it returned. Each StackFailure goes to `failed(offer, failure)` first
    (which may raise instead); a failure that is not retryable is raised then. At most `max_offers` offers that
    create something are tried, and every host that exists (HOST_BACKENDS); then OffersExhausted."""
    blocked: set = set()
    tried = creating = 0  # offers tried, and of them those that create something (max_offers)
    for whole_offer in offers:
        exists = whole_offer.backend in HOST_BACKENDS
        if creating >= max_offers and not exists:
            continue
        counted = False
        for offer in zone_offers(whole_offer):
            if ruled_out(offer, blocked):
                continue
            if not counted:
                tried, creating, counted = tried + 1, creating + (not exists), True
            try:
                return offer, attempt(offer)
            except StackFailure as failure:
                failed(offer, failure)
                if not failure.retryable:
                    raise
                if failure.scope != "attempt":  # a transient failure rules nothing out
                    blocked.add(scope_key(offer, failure.scope))
    raise OffersExhausted(tried)
