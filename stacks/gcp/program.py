"""The Pulumi program of a GCP run: a firewall rule for the run's network tag, one instance per node with its boot
disk (and attached GPUs on N1 machines), running as the run's service account, which may delete the run's instances
and nothing else: a VM that ends itself (stacks.power_off) is deleted rather than stopped with its disk still billed.
The account itself is made before `up`, once per run (stacks.gcp.iam): IAM is eventually consistent, and an account
in the stack would be deleted and made again by every zone a run tries. A cluster adds a firewall rule letting its
nodes reach each other on every port and, where the machine series supports one, a compact placement policy."""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional

from stacks.spec import StackSpec, cloud_init
from stacks.volume_attach import attach_gcp_volumes

SSH_USER = "ubuntu"
# Catalogue GPU name (and memory, where one name has two sizes) -> GCP accelerator type, for attachable GPUs.
ACCELERATOR_TYPES = {
    ("T4", None): "nvidia-tesla-t4",
    ("V100", None): "nvidia-tesla-v100",
    ("P100", None): "nvidia-tesla-p100",
    ("P4", None): "nvidia-tesla-p4",
    ("K80", None): "nvidia-tesla-k80",
    ("A100", 40): "nvidia-tesla-a100",
    ("A100", 80): "nvidia-a100-80gb",
    ("L4", None): "nvidia-l4",
    ("H100", None): "nvidia-h100-80gb",
    ("H200", None): "nvidia-h200-141gb",
    ("B200", None): "nvidia-b200",
}
# Machine series whose disks must be Hyperdisk (no Persistent Disk): Compute Engine, "Choose a disk type" and each
# series' page. C3, C3D, H3, Z3 and A3 High/Mega/Edge take both.
HYPERDISK_ONLY = ("a3-ultragpu-", "a4-", "a4x-", "c4-", "c4a-", "c4d-", "g4-", "n4-", "n4a-", "n4d-", "m4-", "x4-",
                  "h4d-")
# Machine series whose network interface must be gVNIC, or that reach their bandwidth (Tier_1, GPUDirect) only with
# it: Compute Engine, "Using Google Virtual NIC" and the accelerator-optimized machine family. Both images support it.
GVNIC_SERIES = ("a2-", "a3-", "a4-", "a4x-", "g2-", "g4-", "c3-", "c3d-", "c4-", "c4a-", "c4d-", "h3-", "h4d-", "m3-",
                "m4-", "n4-", "n4a-", "n4d-", "t2a-", "x4-", "z3-")
RESERVATION_KEY = "compute.googleapis.com/reservation-name"
GPU_IMAGE = {"project": "deeplearning-platform-release", "family": "common-cu128-ubuntu-2204-nvidia-570"}
UBUNTU_IMAGE = {"x86": {"project": "ubuntu-os-cloud", "family": "ubuntu-2404-lts-amd64"},
                "arm": {"project": "ubuntu-os-cloud", "family": "ubuntu-2404-lts-arm64"}}


# The instance's own service account may delete that instance: a predefined role bound on the instance alone, so it
# reaches nothing else (a custom role holding only compute.instances.delete would ask the user for iam.roles.create
# on the project as well), used with the Compute scope alone.
SELF_DELETE_ROLE = "roles/compute.instanceAdmin.v1"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
# How the description of every firewall and resource policy begins, followed by the run's name and a colon: neither
# takes labels, so a sweep recognizes them by this and their names.
DESCRIPTION_PREFIX = "dstack run "
CLUSTER_FIREWALL_SUFFIX = "-nodes"  # the cluster's own rule: `dstack-OWNER-RUN-nodes`
# Machine series that take a compact placement policy (Compute Engine, "About compact placement policies", and AI
# Hypercomputer's list for the accelerator series); others (E2, N1, N4, T2D, M*, ...) do not.
COMPACT_PLACEMENT_SERIES = ("a2-", "a3-", "a4-", "a4x-", "g2-", "g4-", "c2-", "c2d-", "c3-", "c3d-", "c4-", "c4a-",
                            "c4d-", "h3-", "h4d-", "n2-", "n2d-")


def service_account_id(owner: str, run_name: str) -> str:
    """A run's service account id: 6 to 30 characters, so the run's name (up to 40) goes in as a hash; the owner
    stays readable, and the display name (`dstack-OWNER-RUN`) says whose it is."""
    digest = hashlib.sha256(f"{owner}/{run_name}".encode()).hexdigest()
    return f"dstack-{owner}-{digest[:13]}"


def service_account_email(spec: StackSpec) -> Optional[str]:
    """The account the run's VMs run as (None without `self_delete`): the one made before `up`; a plan rendered
    offline names it in the configured project."""
    if not spec.self_delete:
        return None
    project = spec.gcp_project_id or "PROJECT"
    return spec.service_account_email or \
        f"{service_account_id(spec.owner, spec.run_name)}@{project}.iam.gserviceaccount.com"


def accelerator_type(gpu_name: str, memory_gib: float) -> str:
    by_memory = ACCELERATOR_TYPES.get((gpu_name, int(memory_gib)))
    found = by_memory or ACCELERATOR_TYPES.get((gpu_name, None))
    if found is None:
        raise ValueError(f"no GCP accelerator type is known for {gpu_name} ({memory_gib:g}GB)")
    return found


def guest_accelerators(spec: StackSpec) -> Optional[List[dict]]:
    """Only N1 machines take attached GPUs; A2/A3/A4/G2 machines have theirs built in."""
    if spec.gpu_count and spec.instance_type.startswith("n1-"):
        return [{"type": accelerator_type(spec.gpu_name, spec.gpu_memory_gib), "count": spec.gpu_count}]
    return None


def image(spec: StackSpec) -> Dict[str, str]:
    return GPU_IMAGE if spec.gpu_vendor == "nvidia" else UBUNTU_IMAGE[spec.arch]


def hyperdisk_only(machine_type: str) -> bool:
    return machine_type.startswith(HYPERDISK_ONLY)


def boot_disk_type(machine_type: str) -> str:
    return "hyperdisk-balanced" if hyperdisk_only(machine_type) else "pd-balanced"


def supports_compact_placement(machine_type: str) -> bool:
    return machine_type.startswith(COMPACT_PLACEMENT_SERIES)


def compact_placement(spec: StackSpec) -> bool:
    return spec.cluster and all(supports_compact_placement(t) for t in spec.instance_types)


def placement_note(machine_type: str) -> Optional[str]:
    """What the plan says when a cluster of `machine_type` goes without its compact placement policy."""
    if supports_compact_placement(machine_type):
        return None
    return (f"{machine_type} takes no compact placement policy (its machine series does not support one): the nodes "
            "share a zone, without the policy")


def scheduling(spec: StackSpec) -> dict:
    """Spot VMs are deleted when preempted; with max_duration, every VM is deleted (not stopped: a stopped VM's disk
    is still billed) at its deadline after boot. VMs under a compact placement policy are not live-migrated
    (TERMINATE, which every series that takes the policy accepts)."""
    terminate = spec.gpu_count or spec.spot or compact_placement(spec)
    settings: dict = {"automatic_restart": not spec.spot and not spec.gpu_count,
                      "on_host_maintenance": "TERMINATE" if terminate else "MIGRATE"}
    if spec.spot:
        settings.update(provisioning_model="SPOT", preemptible=True, instance_termination_action="DELETE")
    if spec.deadline_min:
        settings.update(max_run_duration={"seconds": spec.deadline_min * 60}, instance_termination_action="DELETE")
    if spec.reservation and spec.reservation_bound:
        # what Google sells only through a reservation is bound to it, and deleted (not stopped) when it ends
        settings.update(provisioning_model="RESERVATION_BOUND", instance_termination_action="DELETE")
    return settings


def reservation_affinity(spec: StackSpec) -> Optional[dict]:
    """The run's `reservation`, consumed by name (on-demand offers only: offers.solver)."""
    if not spec.reservation:
        return None
    return {"type": "SPECIFIC_RESERVATION",
            "specific_reservation": {"key": RESERVATION_KEY, "values": [spec.reservation]}}


def network_interface(spec: StackSpec) -> dict:
    interface = {"network": spec.vpc_name or "default", "access_configs": [{}]}
    if spec.subnet:
        interface["subnetwork"] = spec.subnet
    if spec.instance_type.startswith(GVNIC_SERIES):
        interface["nic_type"] = "GVNIC"
    return interface


def network_tag(spec: StackSpec) -> str:
    return spec.resource_name


def gcp_program(spec: StackSpec) -> None:
    import pulumi
    import pulumi_gcp as gcp

    provider = gcp.Provider("gcp", project=spec.gcp_project_id, region=spec.region, zone=spec.zone,
                            default_labels=spec.labels())
    opts = pulumi.ResourceOptions(provider=provider)
    images: dict = {}  # one lookup per distinct image (node groups may differ)
    for rank in spec.ranks:
        wanted = image(spec.node(rank))
        key = tuple(sorted(wanted.items()))
        if key not in images:
            images[key] = gcp.compute.get_image(opts=pulumi.InvokeOptions(provider=provider), **wanted).self_link
    account = service_account_email(spec)
    firewalls(spec, opts)
    policy = placement_policy(spec, opts)
    instances = []
    for rank in spec.ranks:
        node = spec.node(rank)
        instance = node_instance(node, rank, images[tuple(sorted(image(node).items()))], account, policy, opts)
        if account is not None:
            allow_self_delete(spec, rank, instance, account, opts)
        instances.append(instance)
    if instances:  # a cloud fleet's stack may have none (`nodes: 0..N`)
        attach_gcp_volumes(spec, instances[0], opts)  # network volumes are refused with nodes > 1
    export_nodes(instances)


def firewalls(spec: StackSpec, opts) -> None:
    """From `ingress_cidrs`: SSH and the opened task ports. Within a cluster: every protocol and port, from the
    run's network tag to the run's network tag, so only its own nodes are let in."""
    import pulumi_gcp as gcp

    name, network, tag = spec.resource_name, spec.vpc_name or "default", network_tag(spec)
    gcp.compute.Firewall(
        f"{name}-fw",
        name=name,
        network=network,
        direction="INGRESS",
        allows=[{"protocol": "tcp", "ports": [str(p) for p in spec.open_ports]}],
        source_ranges=list(spec.ingress_cidrs),
        target_tags=[tag],
        description=f"{DESCRIPTION_PREFIX}{spec.run_name}: ssh" + (" and the task's ports" if spec.ports else ""),
        opts=opts,
    )
    if spec.cluster:
        gcp.compute.Firewall(
            f"{name}{CLUSTER_FIREWALL_SUFFIX}-fw",
            name=f"{name}{CLUSTER_FIREWALL_SUFFIX}",
            network=network,
            direction="INGRESS",
            allows=[{"protocol": "all"}],
            source_tags=[tag],
            target_tags=[tag],
            description=f"{DESCRIPTION_PREFIX}{spec.run_name}: every port between its nodes",
            opts=opts,
        )


def placement_policy(spec: StackSpec, opts):
    """A cluster's compact placement policy (its nodes close together in the zone), or None."""
    import pulumi_gcp as gcp

    if not compact_placement(spec):
        return None
    return gcp.compute.ResourcePolicy(
        f"{spec.resource_name}-placement",
        name=spec.resource_name,
        region=spec.region,
        group_placement_policy={"collocation": "COLLOCATED"},
        description=f"{DESCRIPTION_PREFIX}{spec.run_name}: its nodes placed close together",
        opts=opts,
    )


def node_instance(spec: StackSpec, rank: int, image_link, account: Optional[str], policy, opts):
    """One node's VM, in the offer's zone like every node of the stack, with its own host key. Its network volumes
    are AttachedDisk resources of their own (stacks.volume_attach), so the instance ignores its `attachedDisks`: else
    the next update would detach them (the provider's documented pairing)."""
    import pulumi
    import pulumi_gcp as gcp

    labels = spec.labels()
    name = spec.node_name(rank)
    ignored = (["attachedDisks"] if spec.volumes else []) + (["metadata"] if spec.made_before_numbering(rank) else [])
    if ignored:  # a fleet's instance made before numbering: its host key was not kept, its user data stays
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=ignored))
    return gcp.compute.Instance(
        name,
        name=name,
        machine_type=spec.instance_type,
        zone=spec.zone,
        boot_disk={"auto_delete": True, "initialize_params": {
            "image": image_link, "size": spec.disk_gb, "type": boot_disk_type(spec.instance_type),
            "labels": labels}},
        network_interfaces=[network_interface(spec)],
        guest_accelerators=guest_accelerators(spec),
        scheduling=scheduling(spec),
        reservation_affinity=reservation_affinity(spec),
        resource_policies=policy.self_link if policy is not None else None,  # one at most: the provider's type
        metadata={"ssh-keys": f"{SSH_USER}:{spec.ssh_public_key}",
                  "user-data": pulumi.Output.secret(cloud_init(spec, rank))},
        labels=labels,
        tags=[network_tag(spec)],
        service_account={"email": account, "scopes": [COMPUTE_SCOPE]} if account else None,
        allow_stopping_for_update=False,
        opts=opts,
    )


def allow_self_delete(spec: StackSpec, rank: int, instance, account: str, opts) -> None:
    """The run's account may delete this instance: bound on the instance alone. One account serves all of a run's
    VMs, so a node's token could delete another node of the same run (which can already reach it over SSH), and
    nothing outside the run."""
    import pulumi_gcp as gcp

    gcp.compute.InstanceIAMMember(
        f"{spec.node_name(rank)}-self-delete",
        zone=instance.zone,
        instance_name=instance.name,
        role=SELF_DELETE_ROLE,
        member=f"serviceAccount:{account}",
        opts=opts,
    )


def export_nodes(instances: list) -> None:
    """Each node's address in rank order (`public_ips`, `private_ips`), and rank 0's alone as before (a fleet with
    no instance has lists alone)."""
    import pulumi

    def public(instance):
        return instance.network_interfaces[0].access_configs[0].nat_ip

    def private(instance):
        return instance.network_interfaces[0].network_ip

    pulumi.export("instance_ids", [i.instance_id for i in instances])
    pulumi.export("public_ips", [public(i) for i in instances])
    pulumi.export("private_ips", [private(i) for i in instances])
    pulumi.export("ssh_user", SSH_USER)
    if instances:
        first = instances[0]
        pulumi.export("instance_id", first.instance_id)
        pulumi.export("public_ip", public(first))
        pulumi.export("private_ip", private(first))
        pulumi.export("zone", first.zone)
