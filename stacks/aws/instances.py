"""An EC2 instance's state, read before an idle fleet instance is claimed for reuse: a VM that ended itself (its idle
watchdog, stacks.power_off) is shutting down or terminated, and a run must not be given it. Found by the tags the
stack gave it (its Name and its owner), as the leftover sweep finds instances."""

from __future__ import annotations

from stacks.spec import PROJECT

LIVE_STATES = ("pending", "running", "stopping", "stopped")


def instance_state(region: str, owner: str, name: str) -> str:
    """`running`, `gone` (terminated or shutting down: an instance whose shutdown terminates it), or its other
    state."""
    import boto3

    ec2 = boto3.client("ec2", region_name=region)
    filters = [{"Name": "tag:dstack:project", "Values": [PROJECT]}, {"Name": "tag:dstack:owner", "Values": [owner]},
               {"Name": "tag:Name", "Values": [name]}, {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
    states = [instance["State"]["Name"] for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
              for reservation in page["Reservations"] for instance in reservation["Instances"]]
    return "running" if "running" in states else states[0] if states else "gone"
