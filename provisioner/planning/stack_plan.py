"""From a chosen cloud offer to the stack that provisions it: the StackSpec, its program, and its offline rendering."""

from __future__ import annotations

from typing import List, Optional, Tuple

from configuration.backends import CLOUD_BACKENDS, DstackConfig
from configuration.owner import owner_id
from offers.consumption import needs_reservation
from offers.gpus import compute_capability
from offers.offer import Offer
from offers.tpus import VENDOR as TPU_VENDOR
from provisioner.jobs.nodes import GroupedOffer, node_count, rank_offers
from provisioner.planning.task_volumes import volume_attachments
from stacks import clouds
from stacks.spec import DEFAULT_INGRESS, HostKey, NodeType, StackSpec, generate_host_key

OPEN_DRIVER_MIN_CAPABILITY = (7, 5)
RENDERED_NODES = 3  # the nodes a dry run renders through the program: rank 0 (which may differ: volumes attach to it)
# and two more, the last of which the others repeat (repeat_last_node)


def forms_cluster(configuration) -> bool:
    """Whether the nodes form a cluster (placed close together, reaching each other on every port): a task of
    several nodes always does; a fleet (or what has a fleet's `placement`) does with `placement: cluster`."""
    if getattr(configuration, "type", None) == "fleet" or hasattr(configuration, "placement"):
        placement = getattr(configuration, "placement", None)
        return getattr(placement, "value", placement) == "cluster"
    return node_count(configuration) > 1


def placement_notes(configuration, offer: Optional[Offer]) -> List[str]:
    """What the plan says about a cluster whose instance type takes no placement group or policy."""
    if offer is None or offer.backend not in CLOUD_BACKENDS or not forms_cluster(configuration):
        return []
    note = clouds.placement_note(offer.backend, offer.instance.name)
    return [note] if note else []


def stack_notes(configuration, offer: Optional[Offer], config: Optional[DstackConfig]) -> List[str]:
    """What the plan says about the stack of `offer`: a cluster's placement and network (stacks.clouds), and, in a
    named AWS VPC without a `subnet`, which subnet the nodes get."""
    if offer is None or offer.backend not in CLOUD_BACKENDS:
        return []
    notes = placement_notes(configuration, offer)
    if forms_cluster(configuration):
        network = clouds.network_note(offer.backend, offer.instance.name)
        notes += [network] if network else []
    backend_config = config.backend(offer.backend) if config is not None else None
    vpc_name = getattr(backend_config, "vpc_name", None)
    if offer.backend == "aws" and vpc_name and not getattr(backend_config, "subnet", None):
        zone = offer.zones[0] if offer.zones else "the offer's zone"
        notes.append(f"subnet: VPC {vpc_name}'s subnet in {zone} that maps public IPs on launch (the first by id), "
                     "looked up at apply and named in the log; set `subnet` for the aws backend to choose it")
    return notes


def generate_host_keys(configuration) -> Tuple[HostKey, ...]:
    """One SSH host key per node of the stack."""

    return tuple(generate_host_key() for _ in range(node_count(configuration)))


def stack_spec(run_name: str, configuration, offer: Offer, ssh_public_key: str, host_keys: Tuple[HostKey, ...],
               config: DstackConfig) -> StackSpec:
    """The stack of `configuration` on `offer`: as many nodes as `host_keys` (generate_host_keys)."""
    backend_config = config.backend(offer.backend)
    ingress = tuple(backend_config.ingress_cidrs) if backend_config is not None else DEFAULT_INGRESS
    max_duration = getattr(configuration, "max_duration", None)  # a fleet has none, nor ports or tags, until it does
    max_duration = max_duration if isinstance(max_duration, int) else None
    t = offer.instance
    groups = getattr(configuration, "groups", None) or [configuration]  # every group's ports are opened
    ports = {p.container_port for group in groups for p in getattr(group, "ports", None) or ()}
    return StackSpec(
        run_name=run_name,
        backend=offer.backend,
        instance_type=t.name,
        region=offer.region,
        zone=offer.zones[0] if offer.zones else None,
        spot=offer.spot,
        arch=t.arch,
        gpu_vendor=t.gpu_vendor,
        gpu_name=t.gpu_name,
        gpu_count=t.gpu_count,
        gpu_memory_gib=t.gpu_memory_gib,
        disk_gb=int(round(offer.disk_gb)),
        ports=tuple(sorted(ports)) if getattr(backend_config, "public_ports", False) else (),
        ssh_public_key=ssh_public_key,
        host_keys=host_keys,
        owner=owner_id(),
        ingress_cidrs=ingress,
        gcp_project_id=getattr(backend_config, "project_id", None),
        vpc_name=getattr(backend_config, "vpc_name", None),
        self_delete=getattr(backend_config, "self_delete", True) and t.gpu_vendor != TPU_VENDOR,  # stacks.gcp.tpu
        subnet=getattr(backend_config, "subnet", None) or getattr(backend_config, "subnetwork", None),
        max_duration_s=max_duration,
        nvidia_open_driver=_open_driver(t.gpu_name),
        user_tags=tuple(sorted((getattr(configuration, "tags", None) or {}).items())),
        cluster=forms_cluster(configuration),
        volumes=volume_attachments(configuration, offer),
        reservation=getattr(configuration, "reservation", None),
        reservation_bound=needs_reservation(offer.backend, t.name),
        node_types=tuple(_node_type(o) for o in rank_offers(offer, len(host_keys)))
        if isinstance(offer, GroupedOffer) else (),
        instance_nums=getattr(configuration, "instance_nums", None),  # a cloud fleet's (FleetShape)
        legacy_nodes=getattr(configuration, "legacy_nodes", 0),
    )


def _open_driver(gpu_name: str) -> bool:
    return (compute_capability(gpu_name) or OPEN_DRIVER_MIN_CAPABILITY) >= OPEN_DRIVER_MIN_CAPABILITY


def _node_type(offer: Offer) -> NodeType:
    """One node's machine in a stack of node groups."""
    t = offer.instance
    return NodeType(instance_type=t.name, arch=t.arch, gpu_vendor=t.gpu_vendor, gpu_name=t.gpu_name,
                    gpu_count=t.gpu_count, gpu_memory_gib=t.gpu_memory_gib, disk_gb=int(round(offer.disk_gb)),
                    nvidia_open_driver=_open_driver(t.gpu_name))


def render_plan_resources(spec: StackSpec) -> List[dict]:
    from stacks.render import render_program

    return render_program(clouds.program_for(spec), spec.run_name,
                          secrets=tuple(key.private_openssh for key in spec.host_keys))


def placeholder_key(run_name: str) -> str:
    return f"(the run's ed25519 key, generated at apply: {run_name})"


def dry_run_resources(run_name: str, configuration, offer: Optional[Offer], config: DstackConfig) -> List[dict]:
    """The resources the stack of `configuration` on `offer` would create, rendered offline: its first
    RENDERED_NODES nodes through the program, the others repeated from the last of them (repeat_last_node)."""
    if offer is None or offer.backend not in CLOUD_BACKENDS:
        return []
    from stacks.extras import require_extra

    require_extra(offer.backend, f"rendering the {offer.backend} stack of the plan")
    nodes = node_count(configuration)
    # node groups differ node by node (their instance types): every node is rendered
    rendered = nodes if isinstance(offer, GroupedOffer) else min(nodes, RENDERED_NODES)
    host_keys = tuple(generate_host_key() for _ in range(rendered))
    spec = stack_spec(run_name, configuration, offer, placeholder_key(run_name), host_keys, config)
    return repeat_last_node(spec, render_plan_resources(spec), nodes)


def repeat_last_node(spec: StackSpec, resources: List[dict], nodes: int) -> List[dict]:
    """The resources of a stack of `nodes` nodes from those rendered for `spec`, its first nodes: the last rendered
    node's own resources (those named after it) once more for each further rank, its name replaced by theirs.

    Nodes past the first differ only by name (and host key, inside user data that the plan masks):
    tests/test_plan_scale.py holds this equal to a full rendering on each cloud. It keeps a dry run linear and lean
    in the node count: each resource Pulumi's mocks render costs milliseconds and a few hundred KB, and a full
    rendering grows worse than linearly with its heap."""
    if nodes <= spec.nodes:
        return resources
    last = spec.node_name(spec.nodes - 1)
    own = [r for r in resources if r["name"] == last or r["name"].startswith(last + "-")]
    more = [_renamed(r, last, spec.name_of(rank)) for rank in range(spec.nodes, nodes) for r in own]
    return sorted(resources + more, key=lambda r: (r["type"], r["name"]))


def _renamed(value, old: str, new: str):
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return value
