"""Whether EC2 took a run's spot instances back: an instance that is no longer running says why in its state reason
(EC2 user guide, "Spot Instance interruptions": `Server.SpotInstanceTermination`, or `Server.SpotInstanceShutdown`
for an instance whose interruption behavior is stop); a terminated instance stays listed for about an hour."""

from __future__ import annotations

import re
from typing import List, Sequence

from stacks.losses import InstanceLoss

SPOT_INTERRUPTION_CODES = ("Server.SpotInstanceTermination", "Server.SpotInstanceShutdown")
GUEST_SHUTDOWN_CODE = "Client.InstanceInitiatedShutdown"  # the VM powered itself off
_WHEN = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[^)]*\)")


def instance_losses(region: str, instance_ids: Sequence[str]) -> List[InstanceLoss]:
    """The instances of `instance_ids` that are no longer running, each with why (an interruption or not)."""
    import boto3
    from botocore.exceptions import ClientError

    ec2 = boto3.session.Session().client("ec2", region_name=region)
    try:
        reservations = ec2.describe_instances(InstanceIds=list(instance_ids))["Reservations"]
    except ClientError as e:
        if "NotFound" in e.response.get("Error", {}).get("Code", ""):  # long gone: nothing says why
            return [InstanceLoss(i, False, "the instance no longer exists") for i in instance_ids]
        raise
    losses = []
    for instance in (i for r in reservations for i in r["Instances"]):
        state = instance["State"]["Name"]
        if state in ("pending", "running"):
            continue
        code = (instance.get("StateReason") or {}).get("Code", "")
        when = _WHEN.search(instance.get("StateTransitionReason") or "")
        at = f" at {when[1]} UTC" if when else ""
        if code in SPOT_INTERRUPTION_CODES:
            why = f"taken back by EC2 (spot interruption, {code}){at}"
        else:
            why = f"{state} ({code or 'no reason given'}){at}"
        losses.append(InstanceLoss(instance["InstanceId"], code in SPOT_INTERRUPTION_CODES, why,
                                   code == GUEST_SHUTDOWN_CODE))
    return losses
