"""Backends whose hosts already exist: this machine (`local`) and SSH fleets' hosts (`ssh`), claimed for a run and
handed back untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from configuration.errors import ConfigurationError
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import GroupedOffer, node_count
from provisioner.store.store import StateStore
from stacks.errors import CAPACITY, StackFailure


class LocalBackend:
    name = "local"

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        import shutil

        if configuration.image and not shutil.which("docker"):
            raise ConfigurationError("`image:` tasks on this machine need Docker, which is not installed: install it "
                                     "(https://docs.docker.com/engine/install/), or run with `python:` instead")
        return [HostAccess(kind="local")]

    def teardown(self, record, report) -> None:
        """Nothing was created: the job folder stays for `dstack logs`."""


def fleet_candidates(hosts: dict, offer) -> List[HostAccess]:
    """The hosts a run on `offer` (an SSH fleet host's) tries, in order: the offer's host, then the other hosts of its
    fleet among `hosts` ((fleet, hostname) -> HostAccess); a run of N nodes takes the first N that are idle."""
    first = hosts[(offer.region, offer.instance.name)]
    return [first] + [access for (fleet, _), access in hosts.items() if fleet == offer.region and access != first]


@dataclass
class FleetBackend:
    store: StateStore
    hosts: dict  # (fleet, hostname) -> HostAccess
    name: str = "ssh"

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        """The offer's host, and for `nodes: N` N-1 more idle hosts of its fleet among `hosts` (the session holds
        those that fit the run), claimed all or none. The offer's host busy rules out that host only (failover tries
        the fleet's next host); a fleet with too few idle hosts for the cluster rules out the fleet."""
        nodes = node_count(configuration)
        first = self.hosts[(offer.region, offer.instance.name)]
        if isinstance(offer, GroupedOffer):  # each group's nodes among the fleet's hosts that fit that group
            groups = [([self.hosts[(o.region, o.instance.name)].to_json() for o in group.candidates
                        if (o.region, o.instance.name) in self.hosts], group.nodes) for group in offer.groups]
            groups[0] = ([first.to_json()] + [h for h in groups[0][0] if h != first.to_json()], groups[0][1])
            claimed, held = self.store.claim_host_groups(run_name, groups)
        else:
            candidates = fleet_candidates(self.hosts, offer) if nodes > 1 else [first]
            claimed, held = self.store.claim_hosts(run_name, [host.to_json() for host in candidates], nodes)
        if claimed is None:
            holder = next((run for host, run in held if host == first.to_json()), None)
            if holder is not None:
                raise StackFailure(CAPACITY, "host", f"{first.description} is busy with run {holder}")
            runs = sorted({run for _, run in held})
            raise StackFailure(CAPACITY, "region", f"fleet {offer.region} has fewer than {nodes} idle hosts that fit "
                                                   f"(others are busy with run{'s' if len(runs) > 1 else ''} "
                                                   f"{', '.join(runs)})")
        return [HostAccess.from_json(host) for host in claimed]

    def teardown(self, record, report) -> None:
        """The host is the user's: nothing to remove."""
