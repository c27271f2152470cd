"""Which backends a run may use and the offers they make, from `$DSTACK_HOME/config.yml`, the fleets and flags.

Without configured clouds the embedded default is this machine (`local`) plus any SSH fleets; with clouds, the
configured clouds plus fleets. `-b` on the command line (or `backends:` in the file) picks among all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from offers.catalog import SHIPPED_BACKENDS as CLOUD_BACKENDS, Catalog, load_catalogs
from offers.offer import Offer
from offers.requirements import Requirements
from offers.solver import OfferSearch, find_offers
from provisioner.host.access import HostAccess
from provisioner.planning.host_offers import fleet_offers, local_offer
from provisioner.store.store import StateStore

if TYPE_CHECKING:  # pydantic: `dstack offers` without a config.yml passes None and does not import it
    from configuration.backends import DstackConfig


def default_backends(config: Optional[DstackConfig], has_fleets: bool) -> List[str]:
    """None: no config.yml (no cloud configured)."""
    clouds = list(config.cloud_backends) if config is not None else []
    chosen = list(clouds)
    if has_fleets:
        chosen.append("ssh")
    if not clouds or config.backend("local") is not None:
        chosen.append("local")
    return chosen


@dataclass
class RunOffers:
    search: OfferSearch
    hosts: Dict[Tuple[str, str], HostAccess]  # (region, host name) of each host offer -> how to reach it
    catalogs: List[Catalog]  # the catalogues searched, for their snapshot dates


def search_run_offers(requirements: Requirements, config: Optional[DstackConfig], store: StateStore,
                      limit: Optional[int], all_clouds: bool = False, every_host: bool = False) -> RunOffers:
    """The offers a run (or `dstack offers`, with all_clouds) can use, and how to reach each host offer. With
    every_host (a run's plan), every SSH fleet host that fits is among them beyond the cheapest `limit`: a run tries
    each, as they cost nothing to try. The hosts that an active run holds come after the other offers at their
    price, so a run tries the idle ones first."""

    fleets = fleet_offers(store)
    if requirements.backends:
        backends: Sequence[str] = requirements.backends
    else:
        backends = default_backends(config, bool(fleets))
        if all_clouds:
            backends = sorted(set(backends) | {"aws", "gcp"})
        requirements = dataclasses.replace(requirements, backends=tuple(backends))
    hosts = [pair for pair in fleets if "ssh" in backends]
    if "local" in backends:
        hosts.append(local_offer())
    catalogs = load_catalogs([b for b in backends if b in CLOUD_BACKENDS])
    configured_regions = {name: entry.regions for name in CLOUD_BACKENDS
                          if config is not None and (entry := config.backend(name)) is not None and entry.regions}
    search = find_offers(requirements, catalogs, [offer for offer, _ in hosts],
                         limit=limit + len(hosts) if limit is not None and every_host else limit,
                         backend_regions=configured_regions)
    by_key = {(offer.region, offer.instance.name): access for offer, access in hosts}
    busy = store.busy_hosts() if fleets else {}

    def held(offer: Offer) -> bool:
        access = by_key.get((offer.region, offer.instance.name)) if offer.backend == "ssh" else None
        return access is not None and (access.hostname, access.port) in busy

    search.offers.sort(key=lambda offer: (offer.price, held(offer)))  # stable: the solver's order otherwise
    return RunOffers(search, by_key, catalogs)
