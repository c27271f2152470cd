"""The Pulumi program of a GCP run on a TPU slice: the run's firewall rules (stacks.gcp.program) and one TPU VM node
(`gcp.tpu.V2Vm`), which is the whole slice: one host, or each host of a multi-host slice, whose workers are the run's
nodes in rank order (their network endpoints, as the TPU API lists them).

A TPU VM takes no cloud-init user data: its startup script (metadata `startup-script`, run as root by the guest
agent at every boot, on every worker) installs the worker's own host key, picked by its `agent-worker-number`, with
the power-off script and the VM's deadlines (stacks.spec.cloud_init does the same on a VM). The login key is
metadata `ssh-keys`, as for a VM. A TPU node takes no IAM binding of its own, so it cannot be let delete itself
alone: a TPU VM powers off at its deadlines (`self_delete` does not apply) and the stack's destroy deletes it.
"""

from __future__ import annotations

from typing import Dict

from stacks.power_off import POWER_OFF_PATH, power_off_script
from stacks.spec import GUEST_AGENT_HOST_KEYS_OFF, JOBS_GLOB, START_ALLOWANCE_MIN, StackSpec

VENDOR = "google"  # the catalogue's accelerator vendor of a TPU (offers.tpus)
SSH_USER = "ubuntu"
V2VM_TYPE = "gcp:tpu/v2Vm:V2Vm"
# The TPU VM software version per generation, as dstack 0.22 boots them: the v5e and v6e base images, else the
# generic Ubuntu 22.04 TPU image (Cloud TPU, "TPU software versions").
RUNTIME_VERSIONS: Dict[str, str] = {"v5litepod": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
DEFAULT_RUNTIME_VERSION = "tpu-ubuntu2204-base"
# Generations sold as Spot TPUs; the older ones (v2, v3, v4) as preemptible TPUs (Cloud TPU, "Spot VMs" and
# "Preemptible TPUs").
SPOT_GENERATIONS = ("v5litepod", "v5p", "v6e")
METADATA_WORKER = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"


GENERATIONS = ("v2", "v3", "v4", "v5p", "v5litepod", "v6e")  # offers.tpus knows their shapes


def is_tpu(spec: StackSpec) -> bool:
    return spec.backend == "gcp" and spec.gpu_vendor == VENDOR


def is_tpu_type(accelerator_type: str) -> bool:
    """Whether a GCP offer's type is a TPU slice (`v5litepod-16`) rather than a machine type."""
    return generation(accelerator_type) in GENERATIONS


def generation(accelerator_type: str) -> str:
    return accelerator_type.rpartition("-")[0]


def runtime_version(accelerator_type: str) -> str:
    return RUNTIME_VERSIONS.get(generation(accelerator_type), DEFAULT_RUNTIME_VERSION)


def scheduling_config(spec: StackSpec) -> dict:
    if not spec.spot:
        return {}
    return {"spot": True} if generation(spec.instance_type) in SPOT_GENERATIONS else {"preemptible": True}


def startup_script(spec: StackSpec) -> str:
    """The workers' startup script: each installs its own host key (worker K is rank K), the power-off script and
    the deadlines. It holds every worker's private host key, so it travels as a secret."""
    lines = ["#!/bin/bash", "# dstack: this TPU worker's host key, power-off script and deadlines (stacks.gcp.tpu)",
             f"worker=$(curl -fsS --max-time 10 -H 'Metadata-Flavor: Google' {METADATA_WORKER} || echo 0)",
             GUEST_AGENT_HOST_KEYS_OFF, "umask 077", 'case "$worker" in']
    for rank, key in enumerate(spec.host_keys):
        lines += [f"  {rank})", f"    cat > /etc/ssh/ssh_host_ed25519_key <<'DSTACK_HOST_KEY'",
                  key.private_openssh.strip(), "DSTACK_HOST_KEY",
                  f"    echo '{key.public_openssh}' > /etc/ssh/ssh_host_ed25519_key.pub ;;"]
    lines += ["esac", "chmod 600 /etc/ssh/ssh_host_ed25519_key && chmod 644 /etc/ssh/ssh_host_ed25519_key.pub",
              "rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key*",
              "systemctl restart ssh || systemctl restart sshd",
              f"cat > {POWER_OFF_PATH} <<'DSTACK_POWER_OFF'", power_off_script(False).rstrip("\n"), "DSTACK_POWER_OFF",
              f"chmod 755 {POWER_OFF_PATH}",
              f"systemd-run --on-active={START_ALLOWANCE_MIN}min --unit=dstack-start-watchdog sh -c "
              f"'ls {JOBS_GLOB} >/dev/null 2>&1 || {POWER_OFF_PATH}'"]
    if spec.deadline_min:
        lines.append(f"{POWER_OFF_PATH} {spec.deadline_min}")
    return "\n".join(lines) + "\n"


def tpu_program(spec: StackSpec) -> None:
    import pulumi
    import pulumi_gcp as gcp

    from stacks.gcp.program import firewalls, network_tag

    provider = gcp.Provider("gcp", project=spec.gcp_project_id, region=spec.region, zone=spec.zone,
                            default_labels=spec.labels())
    opts = pulumi.ResourceOptions(provider=provider)
    firewalls(spec, opts)
    network = {"network": spec.vpc_name or "default", "enable_external_ips": True}
    if spec.subnet:
        network["subnetwork"] = spec.subnet
    node = gcp.tpu.V2Vm(
        spec.resource_name,
        name=spec.resource_name,
        zone=spec.zone,
        accelerator_type=spec.instance_type,
        runtime_version=runtime_version(spec.instance_type),
        scheduling_config=scheduling_config(spec) or None,
        network_config=network,
        metadata={"ssh-keys": f"{SSH_USER}:{spec.ssh_public_key}",
                  "startup-script": pulumi.Output.secret(startup_script(spec))},
        labels=spec.labels(),
        tags=[network_tag(spec)],
        description=f"dstack run {spec.run_name}: its TPU slice",
        opts=opts,
    )
    export_workers(node, spec.nodes)


def export_workers(node, hosts: int) -> None:
    """The slice's workers as a VM stack's nodes (stacks.gcp.program.export_nodes): their addresses in rank order."""
    import pulumi

    def addresses(endpoints, public: bool) -> list:
        found = []
        for endpoint in (endpoints or [])[:hosts]:
            if public:
                configs = endpoint.access_configs or []
                found.append(configs[0].external_ip if configs else None)
            else:
                found.append(endpoint.ip_address)
        return found

    public_ips = node.network_endpoints.apply(lambda e: addresses(e, True))
    private_ips = node.network_endpoints.apply(lambda e: addresses(e, False))
    pulumi.export("instance_id", node.id)
    pulumi.export("instance_ids", [node.id])
    pulumi.export("public_ip", public_ips.apply(lambda ips: ips[0] if ips else None))
    pulumi.export("public_ips", public_ips)
    pulumi.export("private_ip", private_ips.apply(lambda ips: ips[0] if ips else None))
    pulumi.export("private_ips", private_ips)
    pulumi.export("ssh_user", SSH_USER)
    pulumi.export("zone", node.zone)
