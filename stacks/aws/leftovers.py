"""AWS resources tagged as dstack's that no stack owns any more: what an `up` interrupted before Pulumi recorded a
cloud id leaves behind, or what a lost state file forgot. Used by teardown (one run) and `dstack gc` (all runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from stacks.spec import PROJECT


@dataclass(frozen=True)
class Leftover:
    kind: str  # instance, security-group, key-pair, volume, placement-group, elastic-ip, launch-template
    id: str  # the resource id (an Elastic IP's allocation id); a key pair's or placement group's name
    region: str
    run: str
    owner: str  # the `dstack:owner` tag ("" on resources from before owners existed)


def _tag(tags, key: str) -> str:
    return next((t["Value"] for t in tags or [] if t["Key"] == key), "")


def find_leftovers(ec2, region: str, owner: Optional[str], run: Optional[str] = None) -> List[Leftover]:
    """dstack's resources in `region`: one owner's (configuration.owner), or every owner's with owner=None; one
    run's, or every run's."""
    filters = [{"Name": "tag:dstack:project", "Values": [PROJECT]}]
    if owner is not None:
        filters.append({"Name": "tag:dstack:owner", "Values": [owner]})
    if run is not None:
        filters.append({"Name": "tag:dstack:run", "Values": [run]})

    def leftover(kind: str, resource_id: str, tags) -> Leftover:
        return Leftover(kind, resource_id, region, _tag(tags, "dstack:run"), _tag(tags, "dstack:owner"))

    found: List[Leftover] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                if instance["State"]["Name"] not in ("terminated", "shutting-down"):
                    found.append(leftover("instance", instance["InstanceId"], instance.get("Tags")))
    for group in ec2.describe_security_groups(Filters=filters)["SecurityGroups"]:
        found.append(leftover("security-group", group["GroupId"], group.get("Tags")))
    for key in ec2.describe_key_pairs(Filters=filters)["KeyPairs"]:
        found.append(leftover("key-pair", key["KeyName"], key.get("Tags")))
    for group in ec2.describe_placement_groups(Filters=filters)["PlacementGroups"]:
        found.append(leftover("placement-group", group["GroupName"], group.get("Tags")))
    for address in ec2.describe_addresses(Filters=filters)["Addresses"]:  # an EFA node's public address
        found.append(leftover("elastic-ip", address["AllocationId"], address.get("Tags")))
    for template in ec2.describe_launch_templates(Filters=filters)["LaunchTemplates"]:  # an EFA cluster's interfaces
        found.append(leftover("launch-template", template["LaunchTemplateId"], template.get("Tags")))
    volume_filters = filters + [{"Name": "status", "Values": ["available"]}]
    for volume in ec2.describe_volumes(Filters=volume_filters)["Volumes"]:
        if not _tag(volume.get("Tags"), "dstack:volume"):  # a network volume outlives runs: its own stack has it
            found.append(leftover("volume", volume["VolumeId"], volume.get("Tags")))
    return found


def remove_leftovers(ec2, leftovers: Iterable[Leftover], wait: bool = True) -> None:
    """Instances first (and wait for them: their security groups, placement group and Elastic IPs cannot go while they
    exist), then the rest."""
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
        elif leftover.kind == "placement-group":
            ec2.delete_placement_group(GroupName=leftover.id)
        elif leftover.kind == "elastic-ip":
            ec2.release_address(AllocationId=leftover.id)
        elif leftover.kind == "launch-template":
            ec2.delete_launch_template(LaunchTemplateId=leftover.id)


def sweep_run(region: str, owner: Optional[str], run_name: str) -> None:
    """What an interrupted `up` created before Pulumi recorded it: found by the run's and its owner's tags (another
    user's run of the same name is not touched) and removed. A run recorded before owners existed has none."""
    import boto3

    from stacks.aws.credentials import aws_errors
    from stacks.aws.leftovers import find_leftovers, remove_leftovers

    ec2 = boto3.session.Session().client("ec2", region_name=region)
    with aws_errors(f"removing what run {run_name} left in AWS {region}"):
        remove_leftovers(ec2, find_leftovers(ec2, region, owner, run=run_name))


def sweep_instances(region: str, owner: str, run_name: str, names: Sequence[str]) -> None:
    """The instances of `run_name`'s stack named `names` (their Name tag) that an interrupted `up` created before
    Pulumi recorded them (a cloud fleet's instance whose grow was killed), once the stack no longer has them."""
    import boto3

    from stacks.aws.credentials import aws_errors

    ec2 = boto3.session.Session().client("ec2", region_name=region)
    filters = [{"Name": "tag:dstack:project", "Values": [PROJECT]}, {"Name": "tag:dstack:owner", "Values": [owner]},
               {"Name": "tag:dstack:run", "Values": [run_name]}, {"Name": "tag:Name", "Values": list(names)}]
    with aws_errors(f"removing what {run_name} left in AWS {region}"):
        found = [Leftover("instance", instance["InstanceId"], region, run_name, owner)
                 for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
                 for reservation in page["Reservations"] for instance in reservation["Instances"]
                 if instance["State"]["Name"] not in ("terminated", "shutting-down")]
        remove_leftovers(ec2, found)
