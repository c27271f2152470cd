"""The Pulumi program of a GCP run: a firewall rule for the run's network tag, the instance with its boot disk
(and attached GPUs on N1 machines), and the service account the instance runs as, which may delete that instance and
nothing else: a VM that ends itself (stacks.power_off) is deleted rather than stopped with its disk still billed."""

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
# Machine series whose disks must be Hyperdisk (no Persistent Disk): GCP's machine series pages.
HYPERDISK_ONLY = ("a3-ultragpu-", "a4-", "a4x-", "c4-", "c4a-", "c4d-", "n4-", "n4a-", "n4d-", "m4-", "x4-", "h4d-")
GPU_IMAGE = {"project": "deeplearning-platform-release", "family": "common-cu128-ubuntu-2204-nvidia-570"}
UBUNTU_IMAGE = {"x86": {"project": "ubuntu-os-cloud", "family": "ubuntu-2404-lts-amd64"},
                "arm": {"project": "ubuntu-os-cloud", "family": "ubuntu-2404-lts-arm64"}}


# The instance's own service account may delete that instance: a predefined role bound on the instance alone, so it
# reaches nothing else (a custom role holding only compute.instances.delete would ask the user for iam.roles.create
# on the project as well), used with the Compute scope alone.
SELF_DELETE_ROLE = "roles/compute.instanceAdmin.v1"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
FIREWALL_DESCRIPTION = "dstack run "  # how every firewall's description begins; firewalls take no labels


def service_account_id(owner: str, run_name: str) -> str:
    """A run's service account id: 6 to 30 characters, so the run's name (up to 40) goes in as a hash; the owner
    stays readable, and the display name (`dstack-OWNER-RUN`) says whose it is."""
    digest = hashlib.sha256(f"{owner}/{run_name}".encode()).hexdigest()
    return f"dstack-{owner}-{digest[:13]}"


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


def boot_disk_type(machine_type: str) -> str:
    return "hyperdisk-balanced" if machine_type.startswith(HYPERDISK_ONLY) else "pd-balanced"


def scheduling(spec: StackSpec) -> dict:
    """Spot VMs are deleted when preempted; with max_duration, every VM is deleted (not stopped: a stopped VM's disk
    is still billed) at its deadline after boot."""
    settings: dict = {"automatic_restart": not spec.spot and not spec.gpu_count,
                      "on_host_maintenance": "TERMINATE" if spec.gpu_count or spec.spot else "MIGRATE"}
    if spec.spot:
        settings.update(provisioning_model="SPOT", preemptible=True, instance_termination_action="DELETE")
    if spec.deadline_min:
        settings.update(max_run_duration={"seconds": spec.deadline_min * 60}, instance_termination_action="DELETE")
    return settings


def network_interface(spec: StackSpec) -> dict:
    interface = {"network": spec.vpc_name or "default", "access_configs": [{}]}
    if spec.subnet:
        interface["subnetwork"] = spec.subnet
    return interface


def network_tag(spec: StackSpec) -> str:
    return spec.resource_name


def gcp_program(spec: StackSpec) -> None:
    import pulumi
    import pulumi_gcp as gcp

    labels = spec.labels()
    provider = gcp.Provider("gcp", project=spec.gcp_project_id, region=spec.region, zone=spec.zone,
                            default_labels=labels)
    opts = pulumi.ResourceOptions(provider=provider)
    name = spec.resource_name
    boot_image = gcp.compute.get_image(opts=pulumi.InvokeOptions(provider=provider), **image(spec))
    account = None
    if spec.self_delete:
        account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=service_account_id(spec.owner, spec.run_name),
            display_name=name,
            description=f"dstack run {spec.run_name} (owner {spec.owner}): may delete its own VM and nothing else",
            opts=opts,
        )
    gcp.compute.Firewall(
        f"{name}-fw",
        name=name,
        network=spec.vpc_name or "default",
        direction="INGRESS",
        allows=[{"protocol": "tcp", "ports": [str(p) for p in spec.open_ports]}],
        source_ranges=list(spec.ingress_cidrs),
        target_tags=[network_tag(spec)],
        description=f"{FIREWALL_DESCRIPTION}{spec.run_name}: ssh" + (" and the task's ports" if spec.ports else ""),
        opts=opts,
    )
    instance = gcp.compute.Instance(
        name,
        name=name,
        machine_type=spec.instance_type,
        zone=spec.zone,
        boot_disk={"auto_delete": True, "initialize_params": {
            "image": boot_image.self_link, "size": spec.disk_gb, "type": boot_disk_type(spec.instance_type),
            "labels": labels}},
        network_interfaces=[network_interface(spec)],
        guest_accelerators=guest_accelerators(spec),
        scheduling=scheduling(spec),
        metadata={"ssh-keys": f"{SSH_USER}:{spec.ssh_public_key}",
                  "user-data": pulumi.Output.secret(cloud_init(spec))},
        labels=labels,
        tags=[network_tag(spec)],
        service_account={"email": account.email, "scopes": [COMPUTE_SCOPE]} if account else None,
        allow_stopping_for_update=False,
        opts=opts,
    )
    if account is not None:
        gcp.compute.InstanceIAMMember(
            f"{name}-self-delete",
            zone=instance.zone,
            instance_name=instance.name,
            role=SELF_DELETE_ROLE,
            member=account.member,
            opts=opts,
        )
    attach_gcp_volumes(spec, instance, opts)
    pulumi.export("instance_id", instance.instance_id)
    pulumi.export("public_ip", instance.network_interfaces[0].access_configs[0].nat_ip)
    pulumi.export("ssh_user", SSH_USER)
    pulumi.export("zone", instance.zone)
