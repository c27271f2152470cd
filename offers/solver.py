"""Finds the offers that satisfy a run's requirements, cheapest first, with dstack's matching semantics.

Instance types are matched first (a few hundred per cloud); only the price groups of matching types are read.
"""

from __future__ import annotations

import dataclasses

import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

from offers.resource_flags import DEFAULT_DISK_GB
from offers.catalog import Catalog, InstanceType
from offers.consumption import RESERVATION_BACKENDS, needs_reservation, spot_sold, withheld_note
from offers.gpus import SPEC_VENDORS, compute_capability
from offers.offer import Offer
from offers.requirements import Requirements
from offers.tpus import BOOT_DISK_GB as TPU_BOOT_DISK_GB, VENDOR as TPU_VENDOR

if TYPE_CHECKING:  # either configuration.resources' models or offers.resource_flags' plain values
    from configuration.resources import GPUSpec, ResourcesSpec

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class DiskPricing:
    """The boot disk a cloud gives a run: its size limits and its list price per GB-month."""

    min_gb: float
    max_gb: float
    default_gb: float
    usd_per_gb_month: float


# AWS: EBS gp3, us-east-1 list price. GCP: pd-balanced, us-central1 list price. Local and SSH disks cost nothing.
DISKS = {
    "aws": DiskPricing(min_gb=8, max_gb=16384, default_gb=100, usd_per_gb_month=0.08),
    "gcp": DiskPricing(min_gb=10, max_gb=65536, default_gb=100, usd_per_gb_month=0.10),
}
FREE_DISK = DiskPricing(min_gb=0, max_gb=math.inf, default_gb=100, usd_per_gb_month=0.0)


def disk_size(resources: ResourcesSpec, pricing: DiskPricing) -> Optional[float]:
    """The disk an offer gets: the requested minimum, else 100GB capped by the requested maximum, within the cloud's
    limits; None when the request cannot be met (`..500GB` means 100GB, not "no offers")."""
    size = resources.disk.size
    wanted = size.min if size.min is not None else min(pricing.default_gb, size.max)
    wanted = max(wanted, pricing.min_gb)
    if (size.max is not None and wanted > size.max) or wanted > pricing.max_gb:
        return None
    return float(wanted)


def gpu_matches(instance: InstanceType, gpu: GPUSpec) -> bool:
    if not gpu.count.contains(instance.gpu_count):
        return False
    if instance.gpu_count == 0:
        return True
    if gpu.vendor is not None and instance.gpu_vendor != gpu.vendor.value:
        return False
    if gpu.name:
        if instance.gpu_name.lower() not in {n.lower() for n in gpu.name}:
            return False
    elif gpu.vendor is None and (instance.gpu_vendor not in SPEC_VENDORS or instance.gpu_vendor == TPU_VENDOR):
        return False  # TPUs too are offered only when asked for by name or vendor (`tpu`, `google`)
    if gpu.memory is not None and not gpu.memory.contains(instance.gpu_memory_gib):
        return False
    if gpu.total_memory is not None and not gpu.total_memory.contains(instance.gpu_memory_gib * instance.gpu_count):
        return False
    if gpu.compute_capability is not None:
        capability = compute_capability(instance.gpu_name)
        if capability is None or capability < tuple(gpu.compute_capability):
            return False
    return True


def instance_matches(instance: InstanceType, resources: ResourcesSpec) -> bool:
    cpu = resources.cpu
    if not cpu.count.contains(instance.cpus):
        return False
    if cpu.arch is not None and instance.arch != cpu.arch.value:
        return False
    if not resources.memory.contains(instance.memory_gib):
        return False
    return gpu_matches(instance, resources.gpu)


def default_arch_allows(instance: InstanceType, resources: ResourcesSpec) -> bool:
    """Cloud offers are x86 unless the task asks for ARM (as dstack assumes: most images and wheels are x86-only).
    Asking means `cpu: arm:..`, or naming a GPU that ARM hosts carry (T4g, GH200, GB200). Hosts the user owns (local,
    SSH) are what they are and skip this default."""
    if resources.cpu.arch is not None or instance.arch == "x86":
        return True
    names = resources.gpu.name or ()
    return instance.gpu_count > 0 and instance.gpu_name.lower() in {n.lower() for n in names}


def _within_regions(req: Requirements, configured: Optional[Sequence[str]]) -> Requirements:
    """The requirements with their regions narrowed to the configured ones (none left: no offer from there)."""
    if not configured:
        return req
    regions = [r for r in configured if _allowed(r, req.regions)]
    return dataclasses.replace(req, regions=tuple(regions))


def _allowed(value: str, allowed: Optional[Sequence[str]]) -> bool:
    return allowed is None or value.lower() in {a.lower() for a in allowed}


def _catalog_candidates(catalog: Catalog, req: Requirements, disk_gb: float, withheld: Dict[str, float]
                        ) -> Iterable[tuple]:
    """Sort keys of the matching price groups: (price, backend, type, region, spot, gpu, count, type index, groups).
    Offers are only built for the keys that are shown, which keeps a query over the whole catalogue cheap. On-demand
    prices are per region: the groups of a type and region that differ only in their zones' spot prices make one
    on-demand offer with all their zones (spot offers stay per group, since their prices differ by zone).

    Types sold on demand only through a reservation (offers.consumption) make on-demand offers only for a run that
    names one; those left out go into `withheld`, with their cheapest price. A run with a reservation takes on-demand
    offers alone on the backends that consume it (a spot VM consumes no reservation)."""
    regions = None if req.regions is None else {r.lower() for r in req.regions}
    region_ok = [regions is None or r.lower() in regions for r in catalog.regions]
    types = None if req.instance_types is None else {t.lower() for t in req.instance_types}
    max_price = math.inf if req.max_price is None else req.max_price
    backend, region_names, region_of, prices, spot_prices = (
        catalog.backend, catalog.regions, catalog.region, catalog.price, catalog.spot_price)
    want_on_demand, want_spot = req.spot is not True, req.spot is not False
    reserved = bool(req.reservation) and backend in RESERVATION_BACKENDS
    want_spot = want_spot and not reserved
    for index, instance in enumerate(catalog.types):
        if types is not None and instance.name.lower() not in types:
            continue
        if not instance_matches(instance, req.resources) or not default_arch_allows(instance, req.resources):
            continue
        if instance.gpu_vendor == TPU_VENDOR and not req.resources.disk.size.contains(TPU_BOOT_DISK_GB):
            continue
        name, gpu, count = instance.name, instance.gpu_name, instance.gpu_count
        spot_ok = want_spot and instance.spot_supported and spot_sold(backend, name)
        on_demand_ok = want_on_demand and (reserved or not needs_reservation(backend, name))
        start, end = catalog.type_slices[index]
        on_demand: Dict[Tuple[int, float], List[int]] = {}
        for group in range(start, end):
            region = region_of[group]
            if not region_ok[region]:
                continue
            price = prices[group]
            if on_demand_ok and price <= max_price:
                on_demand.setdefault((region, price), []).append(group)
            elif want_on_demand and price <= max_price:
                withheld[name] = min(price, withheld.get(name, math.inf))
            price = spot_prices[group]
            if spot_ok and price <= max_price:  # NaN (no spot price) compares false
                yield (price, backend, name, region_names[region], True, gpu, count, index, (group,))
        for (region, price), groups in on_demand.items():
            yield (price, backend, name, region_names[region], False, gpu, count, index, tuple(groups))


def host_offers(offers: Iterable[Offer], req: Requirements) -> Iterable[Offer]:
    """Filters offers that are not from a catalogue (local machine, SSH fleet hosts) by the same rules. Their
    `disk_gb` is the host's free space: an explicit disk request must fit in it; the default request (100GB..) does
    not exclude a host, whose disk is whatever it has."""
    for offer in offers:
        if req.spot is True or not _allowed(offer.backend, req.backends):
            continue
        if req.regions is not None and not _allowed(offer.region, req.regions):
            continue
        if req.instance_types is not None and not _allowed(offer.instance.name, req.instance_types):
            continue
        if req.max_price is not None and offer.price > req.max_price:
            continue
        disk_gb: Optional[float] = offer.disk_gb
        size = req.resources.disk.size
        if (size.min, size.max) != (DEFAULT_DISK_GB, None):  # not the default `100GB..`
            disk_gb = disk_size(req.resources, DiskPricing(0, offer.disk_gb, DEFAULT_DISK_GB, 0.0))
        if disk_gb is None or not instance_matches(offer.instance, req.resources):
            continue
        yield Offer(offer.backend, offer.instance, offer.region, offer.zones, False, offer.price, disk_gb, 0.0)


@dataclass
class OfferSearch:
    offers: List[Offer]  # the cheapest `limit` offers, in order
    total: int  # how many offers matched in all
    notes: List[str] = field(default_factory=list)  # what it left out of the offers shown, and why


def find_offers(
    req: Requirements, catalogs: Sequence[Catalog], hosts: Sequence[Offer] = (), limit: Optional[int] = None,
    backend_regions: Optional[Dict[str, Sequence[str]]] = None,
) -> OfferSearch:
    """Matching offers, cheapest first, ties broken by backend, instance, region and spot. `backend_regions` limits
    a backend's catalogue offers to those regions (the `regions` of its entry in config.yml), within the run's own."""
    host_matches = list(host_offers(hosts, req))
    keyed: List[tuple] = [o.sort_key() + (-1, i, ()) for i, o in enumerate(host_matches)]
    disks = {}
    withheld: Dict[str, Dict[str, float]] = {}  # backend -> type -> its cheapest on-demand price left out
    for number, catalog in enumerate(catalogs):
        if not _allowed(catalog.backend, req.backends):
            continue
        pricing = DISKS.get(catalog.backend, FREE_DISK)
        disk_gb = disk_size(req.resources, pricing)
        if disk_gb is None:
            continue
        disks[number] = (disk_gb, disk_gb * pricing.usd_per_gb_month / HOURS_PER_MONTH)
        catalog_req = _within_regions(req, (backend_regions or {}).get(catalog.backend))
        keyed.extend(key[:-2] + (number,) + key[-2:] for key in _catalog_candidates(
            catalog, catalog_req, disk_gb, withheld.setdefault(catalog.backend, {})))
    total = len(keyed)
    chosen = heapq.nsmallest(limit, keyed) if limit is not None and limit < total else sorted(keyed)
    # what was left out is said where it would have been shown: priced within the offers shown
    shown_up_to = chosen[-1][0] if chosen and limit is not None and limit < total else math.inf
    notes = [withheld_note(backend, names) for backend, prices in withheld.items()
             if (names := [name for name, price in prices.items() if price <= shown_up_to])]
    offers = []
    for key in chosen:
        price, spot, number, index, groups = key[0], key[4], key[-3], key[-2], key[-1]
        if number < 0:
            offers.append(host_matches[index])
            continue
        catalog = catalogs[number]
        disk_gb, disk_price = disks[number]
        if catalog.types[index].gpu_vendor == TPU_VENDOR:
            disk_gb, disk_price = float(TPU_BOOT_DISK_GB), 0.0  # a TPU VM's boot disk is fixed, in the TPU's price
        zones = tuple(sorted({zone for group in groups for zone in catalog.zones(group)}))
        offers.append(Offer(catalog.backend, catalog.types[index], key[3], zones, spot, price, disk_gb, disk_price))
    return OfferSearch(offers, total, notes)
