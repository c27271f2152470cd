"""What a stack program needs to know about a run, with no Pulumi or cloud SDK in sight."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from stacks.power_off import POWER_OFF_PATH, power_off_script

if TYPE_CHECKING:
    from stacks.volume_spec import VolumeAttachment

PROJECT = "dstack"
DEFAULT_INGRESS = ("0.0.0.0/0",)
# Every cloud VM powers itself off when no job has started this long after boot (a client that died between `up` and
# the job's start leaves no VM billing forever), and, with max_duration, at boot + max_duration + this allowance:
# the job's own deadline counts from its start, within the allowance after boot, so the job always ends first and
# its log's end and exit code can still be read (the VM also stays up POWER_OFF_AFTER_EXIT_MIN after the job).
START_ALLOWANCE_MIN = 20
JOBS_GLOB = "/home/*/.dstack-jobs/*/pid"  # provisioner.jobs.script writes a run's pid file there when its job starts
# GCP's guest agent leaves host keys alone: cloud-init's bootcmd runs at every boot, so the setting is written once.
GUEST_AGENT_CONFIG = "/etc/default/instance_configs.cfg"
GUEST_AGENT_HOST_KEYS_OFF = (f"mkdir -p /etc/default && {{ grep -qsx \"set_host_keys = false\" {GUEST_AGENT_CONFIG} "
                             f"|| printf \"[InstanceSetup]\\nset_host_keys = false\\n\" >> {GUEST_AGENT_CONFIG}; }}")


def gcp_label(text: str, key: bool = False) -> str:
    """A tag's name or value as a GCP label's: lowercase letters, digits, `_` and `-` (others become `-`), at most
    63 characters; a name starts with a letter (else gets a `t-` prefix)."""
    label = re.sub(r"[^a-z0-9_-]", "-", text.lower())
    if key and not label[:1].isalpha():
        label = "t-" + label
    return label[:63]


@dataclass(frozen=True)
class HostKey:
    """The VM's SSH host key, made by the run so the first connection is verified (no trust on first use)."""

    private_openssh: str
    public_openssh: str  # "ssh-ed25519 AAAA..."


@dataclass(frozen=True)
class NodeType:
    """One node's machine where a stack's nodes differ (a task's node groups): what StackSpec says for every node
    otherwise."""

    instance_type: str
    arch: str
    gpu_vendor: str
    gpu_name: str
    gpu_count: int
    gpu_memory_gib: float
    disk_gb: int
    nvidia_open_driver: bool = True


@dataclass(frozen=True)
class StackSpec:
    run_name: str
    backend: str  # "aws" or "gcp"
    instance_type: str
    region: str
    zone: Optional[str]
    spot: bool
    arch: str  # "x86" or "arm"
    gpu_vendor: str  # "" for none
    gpu_name: str
    gpu_count: int
    gpu_memory_gib: float
    disk_gb: int
    ports: Tuple[int, ...]  # ports opened to ingress_cidrs besides 22: the task's with the backend's `public_ports`
    ssh_public_key: str  # the run's login key, shared by its nodes
    host_keys: Tuple[HostKey, ...]  # one per node, in rank order: each VM's first connection is verified
    owner: str  # configuration.owner: this $DSTACK_HOME's id, in every name and an owner tag
    ingress_cidrs: Tuple[str, ...] = DEFAULT_INGRESS
    project: str = PROJECT
    gcp_project_id: Optional[str] = None
    max_duration_s: Optional[int] = None
    vpc_name: Optional[str] = None  # None: AWS's default VPC, GCP's `default` network
    self_delete: bool = True  # GCP: the VM's own service account may delete it (the gcp backend's `self_delete`)
    subnet: Optional[str] = None  # AWS subnet id, GCP subnetwork; None: the network's own in the zone or region
    nvidia_open_driver: bool = True  # NVIDIA's open kernel modules need Turing (compute capability 7.5) or newer
    user_tags: Tuple[Tuple[str, str], ...] = ()  # the task's `tags`, on every resource; ours win a clash
    volumes: Tuple["VolumeAttachment", ...] = ()  # network volumes to attach (stacks.volume_attach)
    cluster: bool = False  # the nodes form a cluster: placed close together, reaching each other on every port
    reservation: Optional[str] = None  # GCP: the reservation the VMs consume (the run's `reservation`)
    reservation_bound: bool = False  # the machine type is sold on demand only through a reservation
    service_account_email: Optional[str] = None  # GCP self_delete: the run's account, made before `up`
    node_types: Tuple[NodeType, ...] = ()  # per rank where nodes differ (node groups); () : every node as above
    # A cloud fleet's stack: each node's number in the fleet, kept for its life and in its names (`NAME-3`), so an
    # `up` with another list adds and removes instances without renaming (so replacing) the others; a fleet may have
    # none. None: a run's nodes, named by rank.
    instance_nums: Optional[Tuple[int, ...]] = None
    # A cloud fleet's stack made before its instances were numbered, of this many nodes: its instances 0..N-1 keep
    # the names they were made with (a run's nodes': node_name), and their user data, made with host keys that were
    # not kept then, is left as it is (made_before_numbering); 0: none.
    legacy_nodes: int = 0

    def __post_init__(self):
        if not self.host_keys and self.instance_nums is None:
            raise ValueError("a stack has at least one node, and one host key per node")
        if self.instance_nums is not None and len(self.instance_nums) != len(self.host_keys):
            raise ValueError("one instance number per node")
        if self.node_types and len(self.node_types) != len(self.host_keys):
            raise ValueError("one node type per node, or none")

    def node(self, rank: int) -> "StackSpec":
        """The spec as node `rank` sees it: its own instance type, image and disk (node_types, kept: what the stack
        shares, such as its placement, still sees every node)."""
        if not self.node_types:
            return self
        return dataclasses.replace(self, **dataclasses.asdict(self.node_types[rank]))

    @property
    def instance_types(self) -> Tuple[str, ...]:
        """The distinct instance types of the stack's nodes."""
        return tuple(sorted({t.instance_type for t in self.node_types} or {self.instance_type}))

    @property
    def uniform(self) -> bool:
        """Every node of the same instance type."""
        return len(self.instance_types) == 1

    @property
    def nodes(self) -> int:
        return len(self.host_keys)

    @property
    def ranks(self) -> range:
        return range(self.nodes)

    @property
    def open_ports(self) -> Tuple[int, ...]:
        return tuple(sorted({22, *self.ports}))

    @property
    def deadline_min(self) -> Optional[int]:
        """Minutes after boot at which the VM powers off for good; None without max_duration."""
        if not self.max_duration_s:
            return None
        return -(-self.max_duration_s // 60) + START_ALLOWANCE_MIN

    @property
    def resource_name(self) -> str:
        """The cloud name of the run's resources: unique per owner, so users of one account never collide."""
        return f"dstack-{self.owner}-{self.run_name}"

    def node_name(self, rank: int) -> str:
        if self.instance_nums is not None:
            return self.name_of(self.instance_nums[rank])
        return node_name(self.owner, self.run_name, rank, self.nodes)

    def name_of(self, num: int) -> str:
        """The name of a fleet's instance `num` (instance_nums), or of a run's node of rank `num`."""
        if self.instance_nums is not None:
            return fleet_instance_name(self.owner, self.run_name, num, self.legacy_nodes)
        return node_name(self.owner, self.run_name, num, self.nodes)

    def made_before_numbering(self, rank: int) -> bool:
        """Whether node `rank` is a fleet's instance made before instances were numbered (legacy_nodes): its user
        data is not to be changed (that would replace it)."""
        return self.instance_nums is not None and self.instance_nums[rank] < self.legacy_nodes

    @property
    def stack_name(self) -> str:
        return stack_name(self.run_name, self.owner)

    def tags(self, rank: Optional[int] = None) -> dict:
        """AWS tags; every resource of the run carries them, so `dstack gc` can find what a lost stack left. A
        node's own resources (`rank`) are named after it."""
        ours = {"dstack:run": self.run_name, "dstack:owner": self.owner, "dstack:project": self.project,
                "Name": self.resource_name if rank is None else self.node_name(rank)}
        return {**dict(self.user_tags), **ours}

    def labels(self) -> dict:
        """GCP labels: lowercase letters, digits, `-` and `_` only; the task's tags are made so (gcp_label)."""
        ours = {"dstack-run": self.run_name, "dstack-owner": self.owner, "dstack-project": self.project}
        return {**{gcp_label(k, key=True): gcp_label(v) for k, v in self.user_tags}, **ours}


def node_name(owner: str, run_name: str, rank: int, nodes: int) -> str:
    """The cloud name of one node's instance (and its AWS Name tag): the run's resource name, with the rank when the
    stack has several nodes."""
    name = f"dstack-{owner}-{run_name}"
    return name if nodes == 1 else f"{name}-{rank}"


def fleet_instance_name(owner: str, fleet: str, num: int, legacy_nodes: int = 0) -> str:
    """The cloud name of a cloud fleet's instance `num` (StackSpec.instance_nums): always numbered, whatever the
    count, so the count can change; one of the `legacy_nodes` a fleet was made with before numbering keeps the name
    it was made with."""
    if num < legacy_nodes:
        return node_name(owner, fleet, num, legacy_nodes)
    return f"dstack-{owner}-{fleet}-{num}"


def stack_name(run_name: str, owner: str) -> str:
    """The Pulumi stack of a run: a shared state backend holds many users' stacks."""
    return f"{run_name}-{owner}"


def generate_host_key() -> HostKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return HostKey(private, public)


def cloud_init(spec: StackSpec, rank: int = 0) -> str:
    """cloud-config user data for node `rank`: install its host key (and no other) and the run's login key, the
    power-off script (stacks.power_off: a GCP VM deletes itself, an AWS one powers off and so terminates) and the
    VM's own deadlines (START_ALLOWANCE_MIN) that call it, so a forgotten run stops billing.

    GCP's guest agent makes new host keys on a new instance's first boot. `bootcmd` (at every boot, writing the
    setting once) turns that off before the agent reads its configuration where cloud-init runs first; where the agent
    ran first, the final stage writes the run's host key again (`write_files` with `defer`) and restarts sshd, so the
    key the client expects is the one served."""
    host_key = spec.host_keys[rank]
    private = _indent(host_key.private_openssh, 4)
    lines = [
        "#cloud-config",
        "ssh_deletekeys: true",
        "ssh_genkeytypes: []",
        "ssh_keys:",
        "  ed25519_private: |",
        private,
        f"  ed25519_public: {host_key.public_openssh}",
        "ssh_authorized_keys:",
        f"  - {spec.ssh_public_key}",
    ]
    write_files = [
        f"  - path: {POWER_OFF_PATH}",
        "    permissions: '0755'",
        "    content: |",
        _indent(power_off_script(spec.backend == "gcp" and spec.self_delete), 6),
    ]
    runcmd = [f"  - [systemd-run, --on-active={START_ALLOWANCE_MIN}min, --unit=dstack-start-watchdog, sh, -c, "
              f"'ls {JOBS_GLOB} >/dev/null 2>&1 || {POWER_OFF_PATH}']"]
    if spec.backend == "gcp":
        lines += ["bootcmd:", f"  - [sh, -c, '{GUEST_AGENT_HOST_KEYS_OFF}']"]
        write_files += [
            "  - path: /etc/ssh/ssh_host_ed25519_key",
            "    permissions: '0600'",
            "    defer: true",
            "    content: |",
            _indent(host_key.private_openssh, 6),
            "  - path: /etc/ssh/ssh_host_ed25519_key.pub",
            "    permissions: '0644'",
            "    defer: true",
            f"    content: {host_key.public_openssh}",
        ]
        runcmd.append("  - [sh, -c, 'rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key*; "
                      "systemctl restart ssh || systemctl restart sshd']")
    if spec.deadline_min:
        runcmd.append(f"  - [{POWER_OFF_PATH}, '{spec.deadline_min}']")
    return "\n".join(lines + ["write_files:"] + write_files + ["runcmd:"] + runcmd) + "\n"


def _indent(text: str, spaces: int) -> str:
    """A YAML block scalar's lines."""
    return "\n".join(" " * spaces + line if line else "" for line in text.strip().splitlines())
