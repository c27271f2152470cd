"""The offers of a task with `groups`: each group's offers searched with its own resources, then joined into one
offer per place that can host every group (provisioner.jobs.nodes.GroupedOffer): one SSH fleet with enough hosts
for each group (no host twice), or one cloud region and zone, each group on its own cheapest instance type there,
all in one stack. Ordered by the price of the whole cluster."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError
from offers.offer import Offer
from offers.requirements import Requirements
from offers.solver import OfferSearch
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import GroupedOffer, GroupOffer, cluster_price, node_count
from provisioner.planning.search import RunOffers, search_run_offers
from provisioner.store.store import StateStore


def search_group_offers(configuration, requirements: Requirements, config: DstackConfig, store: StateStore,
                        limit: Optional[int], all_clouds: bool, source: str) -> RunOffers:
    """The run's offers when `groups` is set: grouped offers in price order (the first `limit`), every group's
    hosts among `hosts`. Group 0's search (its cheapest offers) stands for the run in the plan's table."""
    groups = configuration.groups
    searches = [search_run_offers(dataclasses.replace(requirements, resources=group.resources), config, store,
                                  limit=limit if index == 0 else None, all_clouds=all_clouds, every_host=True)
                for index, group in enumerate(groups)]
    nodes = node_count(configuration)
    joined = [grouped for grouped in (_join(first, [s.search.offers for s in searches], groups, nodes)
                                      for first in searches[0].search.offers) if grouped is not None]
    joined.sort(key=lambda offer: cluster_price(offer, nodes))
    hosts: Dict[Tuple[str, str], HostAccess] = {}
    for found in searches:
        hosts.update(found.hosts)
    if not joined and any(s.search.offers for s in searches):
        empty = [f"group {g.name}" for g, s in zip(groups, searches) if not s.search.offers]
        why = (f"no offer fits {', '.join(empty)}" if empty else
               "no SSH fleet has hosts for every group (a host serves one node) and no cloud region offers every "
               "group's resources in one zone")
        if searches[0].search.offers and not empty and all(o.backend == "local" for o in searches[0].search.offers):
            why = "this machine (the local backend) is one node: use an SSH fleet (`--fleet`) or a cloud"
        if not all_clouds:
            raise ConfigurationError(f"{source}: `groups` ({nodes} nodes): {why}")
    search = OfferSearch(offers=joined[:limit] if limit is not None else joined, total=len(joined))
    return RunOffers(search, hosts, searches[0].catalogs)


def _join(first: Offer, offers: Sequence[Sequence[Offer]], groups, nodes: int) -> Optional[GroupedOffer]:
    """The grouped offer whose rank 0 is `first`, or None where its backend and region cannot host every group."""
    if first.backend == "local" and nodes > 1:
        return None
    if first.backend == "ssh":
        return _join_fleet(first, offers, groups)
    zones = set(first.zones)
    members = []
    for index, group in enumerate(groups):
        if index == 0:
            members.append(first)
            continue
        same = [o for o in offers[index] if o.backend == first.backend and o.region == first.region
                and o.spot == first.spot and (not zones or not o.zones or zones & set(o.zones))]
        if not same:
            return None
        members.append(same[0])
        zones = zones & set(same[0].zones) if zones and same[0].zones else zones or set(same[0].zones)
    kept = tuple(z for z in (first.zones or sorted(zones)) if not zones or z in zones)
    members = [dataclasses.replace(o, zones=kept) if o.zones else o for o in members]
    parts = tuple(GroupOffer(g.name, g.nodes, o, (o,)) for g, o in zip(groups, members))
    return GroupedOffer(**{f.name: getattr(members[0], f.name) for f in dataclasses.fields(Offer)}, groups=parts)


def _join_fleet(first: Offer, offers: Sequence[Sequence[Offer]], groups) -> Optional[GroupedOffer]:
    """On one SSH fleet: each group's hosts that fit it, `first` leading group 0; None unless every group gets its
    nodes with no host counted twice (groups take their cheapest free hosts in order)."""
    taken = {first.instance.name}
    parts = []
    for index, group in enumerate(groups):
        fitting = [o for o in offers[index] if o.backend == "ssh" and o.region == first.region]
        if index == 0:
            fitting = [first] + [o for o in fitting if o.instance.name != first.instance.name]
        free = [o for o in fitting if o.instance.name not in taken or (index == 0 and o is first)]
        if len(free) < group.nodes:
            return None
        taken.update(o.instance.name for o in free[:group.nodes])
        parts.append(GroupOffer(group.name, group.nodes, free[0], tuple(fitting)))
    return GroupedOffer(**{f.name: getattr(first, f.name) for f in dataclasses.fields(Offer)}, groups=tuple(parts))


def groups_json(offer: Optional[Offer]) -> List[dict]:
    """Each group's name, nodes, ranks and offer, for the plan document."""
    if not isinstance(offer, GroupedOffer):
        return []
    parts, rank = [], 0
    for group in offer.groups:
        parts.append({"name": group.name, "nodes": group.nodes, "ranks": list(range(rank, rank + group.nodes)),
                      "offer": group.offer.to_json(), "price_per_node": round(group.offer.total_price, 6),
                      "total_price": round(group.offer.total_price * group.nodes, 6)})
        rank += group.nodes
    return parts
