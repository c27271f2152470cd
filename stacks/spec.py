"""What a stack program needs to know about a run, with no Pulumi or cloud SDK in sight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

PROJECT = "dstack"
DEFAULT_INGRESS = ("0.0.0.0/0",)


@dataclass(frozen=True)
class HostKey:
    """The VM's SSH host key, made by the run so the first connection is verified (no trust on first use)."""

    private_openssh: str
    public_openssh: str  # "ssh-ed25519 AAAA..."


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
    ports: Tuple[int, ...]  # the task's ports on the host, opened besides 22
    ssh_public_key: str
    host_key: HostKey
    ingress_cidrs: Tuple[str, ...] = DEFAULT_INGRESS
    project: str = PROJECT
    gcp_project_id: Optional[str] = None
    max_duration_s: Optional[int] = None

    @property
    def open_ports(self) -> Tuple[int, ...]:
        return tuple(sorted({22, *self.ports}))

    def tags(self) -> dict:
        """AWS tags; every resource of the run carries them, so `dstack gc` can find what a lost stack left."""
        return {"dstack:run": self.run_name, "dstack:project": self.project, "Name": f"dstack-{self.run_name}"}

    def labels(self) -> dict:
        """GCP labels: lowercase letters, digits, `-` and `_` only."""
        return {"dstack-run": self.run_name, "dstack-project": self.project}


def generate_host_key() -> HostKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return HostKey(private, public)


def cloud_init(spec: StackSpec) -> str:
    """cloud-config user data: install the run's host key (and no other), and power off at `max_duration`, so a
    forgotten run stops billing (AWS instances are set to terminate on shutdown; GCP spot VMs are deleted)."""
    private = "\n".join("    " + line for line in spec.host_key.private_openssh.strip().splitlines())
    lines = [
        "#cloud-config",
        "ssh_deletekeys: true",
        "ssh_genkeytypes: []",
        "ssh_keys:",
        "  ed25519_private: |",
        private,
        f"  ed25519_public: {spec.host_key.public_openssh}",
    ]
    if spec.max_duration_s:
        minutes = max(1, -(-spec.max_duration_s // 60))
        lines += ["runcmd:", f"  - [shutdown, -P, '+{minutes}', 'dstack: max_duration reached']"]
    return "\n".join(lines) + "\n"
