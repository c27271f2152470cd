"""A multi-node task (`nodes: N`) as one cluster: which offers can host N nodes, and what each node's job is told
about the others (dstack's cluster variables).

On an SSH fleet the N nodes are N idle hosts of one fleet that all fit the resources (claimed together, see
StateStore.claim_hosts); on a cloud, the offer's instance type N times in one stack; this machine (`local`) is one
node only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from configuration.errors import ConfigurationError
from offers.offer import Offer
from offers.tpus import VENDOR as TPU_VENDOR, tpu_hosts
from provisioner.host.access import HostAccess


def node_count(configuration) -> int:
    """How many nodes (instances) `configuration` has: a task's `nodes`; a fleet's `nodes`, a number or a range
    (its `target`, else its minimum: what dstack provisions when a fleet is applied)."""
    groups = getattr(configuration, "groups", None)
    if groups:
        return sum(group.nodes for group in groups)
    nodes = getattr(configuration, "nodes", None)
    if nodes is None:
        return 1
    if isinstance(nodes, int):
        return nodes or 1
    target = getattr(nodes, "target", None)
    return target if target is not None else nodes.min


@dataclass(frozen=True)
class GroupOffer:
    """One node group's part of a run: its offer, and for an SSH fleet the hosts of that fleet that fit the group
    (cheapest first: its nodes are claimed among them)."""
    name: str
    nodes: int
    offer: Offer
    candidates: Tuple[Offer, ...] = ()


@dataclass(frozen=True)
class GroupedOffer(Offer):
    """The offer of a task with `groups`: group 0's offer (rank 0's, the one the run record names), with every
    group's own, all on one backend and region (one SSH fleet, or one cloud stack in one zone)."""
    groups: Tuple[GroupOffer, ...] = ()

    def rank_offer(self, rank: int) -> Offer:
        for group in self.groups:
            if rank < group.nodes:
                return group.offer
            rank -= group.nodes
        raise ValueError("rank beyond the groups' nodes")


def rank_offers(offer: Offer, nodes: int) -> List[Offer]:
    """Each node's offer in rank order: a grouped offer's per group, else the one offer for every node."""
    if isinstance(offer, GroupedOffer):
        return [offer.rank_offer(rank) for rank in range(nodes)]
    return [offer] * nodes


def member_offers(offers: Sequence[Offer]) -> List[Offer]:
    """`offers` with each grouped offer's groups' own offers (and candidate hosts) beside it."""
    found: List[Offer] = []
    for offer in offers:
        found.append(offer)
        for group in getattr(offer, "groups", ()):
            found += [group.offer, *group.candidates]
    return found


def cluster_price(offer: Offer, nodes: int) -> float:
    """$/hour of the run's nodes together (a TPU slice's offer is already all its hosts': Offer.run_price)."""
    if isinstance(offer, GroupedOffer):
        return sum(o.total_price for o in rank_offers(offer, nodes))
    return offer.run_price(nodes)


def node_offers(offers: Sequence[Offer], nodes: int, source: str) -> List[Offer]:
    """The offers that can host `nodes` nodes: cloud offers as they are, the hosts of SSH fleets with at least
    `nodes` hosts that fit (each offer is a cluster's rank 0; the fleet backend claims the others), no `local`
    offer; a TPU slice when it has `nodes` hosts (tpu_node_offers). Raises, naming why, when none is left."""
    offers = tpu_node_offers(offers, nodes, source)
    if nodes == 1 or all(isinstance(offer, GroupedOffer) for offer in offers):
        return list(offers)  # a grouped offer has its hosts already (provisioner.planning.node_groups)
    fitting: Dict[str, int] = {}
    for offer in offers:
        if offer.backend == "ssh":
            fitting[offer.region] = fitting.get(offer.region, 0) + 1
    kept = [offer for offer in offers if offer.backend != "local" and
            (offer.backend != "ssh" or fitting[offer.region] >= nodes)]
    if kept or not offers:
        return kept
    why = []
    if any(o.backend == "local" for o in offers):
        why.append("this machine (the local backend) is one node: use an SSH fleet (`--fleet`) or a cloud")
    why += [f"fleet {fleet} has {count} host{'' if count == 1 else 's'} that fit{'s' if count == 1 else ''}"
            for fleet, count in sorted(fitting.items())]
    raise ConfigurationError(f"{source}: `nodes: {nodes}` needs {nodes} hosts that fit the resources: "
                             + "; ".join(why))


def tpu_node_offers(offers: Sequence[Offer], nodes: int, source: str) -> List[Offer]:
    """A TPU slice runs one job per host (offers.tpus): its offers fit `nodes: N` when the slice has N hosts. Raises,
    naming the slices and their hosts, when only TPU offers of other sizes matched."""
    kept = [o for o in offers if o.instance.gpu_vendor != TPU_VENDOR or tpu_hosts(o.instance.name) == nodes]
    if kept or not offers:
        return kept
    slices = sorted({(tpu_hosts(o.instance.name), o.instance.name) for o in offers})
    sizes = "; ".join(f"{name} is {hosts} TPU host{'s' if hosts > 1 else ''} (`nodes: {hosts}`)"
                      for hosts, name in slices[:4]) + ("; ..." if len(slices) > 4 else "")
    raise ConfigurationError(f"{source}: `nodes: {nodes}` does not fit the TPU slices that match, which run one "
                             f"job per host: {sizes}")


def node_address(access: HostAccess) -> str:
    """The address the other nodes reach a node at: a VM's private address, else the host name."""
    return access.internal_ip or access.hostname or "127.0.0.1"


@dataclass(frozen=True)
class Cluster:
    """The run's nodes in rank order, as seen from the node of `rank`."""
    hosts: Sequence[HostAccess]
    rank: int = 0

    @property
    def size(self) -> int:
        return len(self.hosts)


def cluster_env(cluster: Optional[Cluster], gpus_per_node: Union[int, Sequence[int]]) -> Dict[str, str]:
    """dstack's cluster variables for one node's job; `gpus_per_node`: every node's, or each one's in rank order
    (node groups differ). A single
    node leaves DSTACK_MASTER_NODE_IP and DSTACK_NODES_IPS to its host, which knows its own address
    (provisioner.jobs.script); the host writes DSTACK_MPI_HOSTFILE from DSTACK_NODES_IPS either way."""
    size = cluster.size if cluster is not None else 1
    rank = cluster.rank if cluster is not None else 0
    if isinstance(gpus_per_node, int):
        gpus_per_node = [gpus_per_node] * size
    env = {"DSTACK_NODES_NUM": str(size), "DSTACK_NODE_RANK": str(rank),
           "DSTACK_GPUS_PER_NODE": str(gpus_per_node[rank]), "DSTACK_GPUS_NUM": str(sum(gpus_per_node))}
    if cluster is not None and size > 1:
        addresses = [node_address(host) for host in cluster.hosts]
        env["DSTACK_MASTER_NODE_IP"] = addresses[0]
        env["DSTACK_NODES_IPS"] = "\n".join(addresses)
    return env


STARTUP_ORDERS = ("any", "master-first", "workers-first")
NODE_THREADS = 16  # on_every_node's actions at a time


def startup_waves(startup_order: Optional[str], size: int) -> List[List[int]]:
    """The ranks to start, wave by wave: a wave starts once every job of the one before runs its commands."""
    ranks = list(range(size))
    if size == 1 or startup_order in (None, "any"):
        return [ranks]
    if startup_order == "master-first":
        return [[0], ranks[1:]]
    return [ranks[1:], [0]]


def on_every_node(action: Callable, items: Sequence) -> list:
    """`action(item)` for every item at once (at most NODE_THREADS at a time); results in order; the first error (by
    item order) is raised after every action has finished. Ctrl-C is not held up by them: the actions run in daemon
    threads, which the interrupted caller leaves behind (a pool's threads would be joined first, and a node that does
    not answer yet would keep a boot's wait, and the process's exit, going until its deadline)."""
    if len(items) == 1:
        return [action(items[0])]
    slots = threading.BoundedSemaphore(NODE_THREADS)
    results: list = [None] * len(items)
    errors: List[Optional[BaseException]] = [None] * len(items)

    def run(index: int) -> None:
        with slots:
            try:
                results[index] = action(items[index])
            except BaseException as e:  # noqa: B036 - handed to the caller's thread
                errors[index] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True, name=f"node-{i}") for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    return results
