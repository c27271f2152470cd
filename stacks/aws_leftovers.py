"""AWS resources tagged as dstack's that no stack owns any more: what an `up` interrupted before Pulumi recorded a
cloud id leaves behind, or what a lost state file forgot. Used by teardown (one run) and `dstack gc` (all runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional

from stacks.spec import PROJECT


@dataclass(frozen=True)
class Leftover:
    kind: str  # instance, security-group, key-pair, volume
    id: str  # the resource id; a key pair's name
    region: str
    run: str


def _tag(tags, key: str) -> str:
    return next((t["Value"] for t in tags or [] if t["Key"] == key), "")


def find_leftovers(ec2, region: str, run: Optional[str] = None) -> List[Leftover]:
    filters = [{"Name": "tag:dstack:project", "Values": [PROJECT]}]
    if run is not None:
        filters.append({"Name": "tag:dstack:run", "Values": [run]})
    found: List[Leftover] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                if instance["State"]["Name"] not in ("terminated", "shutting-down"):
                    found.append(Leftover("instance", instance["InstanceId"], region,
                                          _tag(instance.get("Tags"), "dstack:run")))
    for group in ec2.describe_security_groups(Filters=filters)["SecurityGroups"]:
        found.append(Leftover("security-group", group["GroupId"], region, _tag(group.get("Tags"), "dstack:run")))
    for key in ec2.describe_key_pairs(Filters=filters)["KeyPairs"]:
        found.append(Leftover("key-pair", key["KeyName"], region, _tag(key.get("Tags"), "dstack:run")))
    volume_filters = filters + [{"Name": "status", "Values": ["available"]}]
    for volume in ec2.describe_volumes(Filters=volume_filters)["Volumes"]:
        found.append(Leftover("volume", volume["VolumeId"], region, _tag(volume.get("Tags"), "dstack:run")))
    return found


def remove_leftovers(ec2, leftovers: Iterable[Leftover], wait: bool = True) -> None:
    """Instances first (and wait for them: their security groups cannot go while they exist), then the rest."""
    leftovers = list(leftovers)
    instances = [l.id for l in leftovers if l.kind == "instance"]
    if instances:
        ec2.terminate_instances(InstanceIds=instances)
        if wait:
            ec2.get_waiter("instance_terminated").wait(InstanceIds=instances,
                                                       WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    for leftover in leftovers:
        if leftover.kind == "security-group":
            ec2.delete_security_group(GroupId=leftover.id)
        elif leftover.kind == "key-pair":
            ec2.delete_key_pair(KeyName=leftover.id)
        elif leftover.kind == "volume":
            ec2.delete_volume(VolumeId=leftover.id)
