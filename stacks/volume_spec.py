"""What the stack of a network volume, and a run's stack that attaches volumes, need to know: no Pulumi in sight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from stacks.spec import PROJECT, gcp_label

AWS_DEVICE_NAMES = tuple(f"/dev/sd{letter}" for letter in "fghijklmnop")  # what EC2 takes for data volumes


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    backend: str  # "aws" or "gcp"
    region: str
    zone: str
    size_gb: int
    owner: str
    project: str = PROJECT
    gcp_project_id: Optional[str] = None
    user_tags: Tuple[Tuple[str, str], ...] = ()

    @property
    def resource_name(self) -> str:
        return f"dstack-{self.owner}-vol-{self.name}"

    @property
    def stack_name(self) -> str:
        return volume_stack_name(self.name, self.owner)

    def tags(self) -> dict:
        ours = {"dstack:volume": self.name, "dstack:owner": self.owner, "dstack:project": self.project,
                "Name": self.resource_name}
        return {**dict(self.user_tags), **ours}

    def labels(self) -> dict:
        ours = {"dstack-volume": self.name, "dstack-owner": self.owner, "dstack-project": self.project}
        return {**{gcp_label(k, key=True): gcp_label(v) for k, v in self.user_tags}, **ours}


def volume_stack_name(name: str, owner: str) -> str:
    return f"volume-{name}-{owner}"


@dataclass(frozen=True)
class VolumeAttachment:
    """A network volume a run's instance attaches: the cloud's id (EBS volume id, GCP disk name) and the device name
    it is attached under (AWS `/dev/sdf`; GCP the `google-<name>` of /dev/disk/by-id)."""

    name: str
    volume_id: str
    device_name: str


def aws_device_path(volume_id: str) -> str:
    """Where an EBS volume appears on a Nitro instance: its NVMe serial is the volume id without the dash."""
    return f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"


def gcp_device_name(name: str) -> str:
    return gcp_label(f"dstack-{name}", key=True)


def gcp_device_path(device_name: str) -> str:
    return f"/dev/disk/by-id/google-{device_name}"
