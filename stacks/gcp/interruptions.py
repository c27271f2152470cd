"""Whether Compute Engine preempted a run's Spot VMs: a preemption is a zone operation of type
`compute.instances.preempted` whose target is the instance (Compute Engine, "Detect if a VM was preempted"); on the
VM itself, the metadata key `instance/preempted` turns TRUE."""

from __future__ import annotations

from typing import List, Optional, Sequence

from stacks.losses import InstanceLoss

PREEMPTED_OPERATION = "compute.instances.preempted"


def instance_losses(project_id: Optional[str], zone: str, instance_ids: Sequence[str]) -> List[InstanceLoss]:
    """The instances of `instance_ids` (numeric ids) that Compute Engine preempted, each with when."""
    from stacks.gcp.api import list_items
    from stacks.gcp.leftovers import gcp_api

    api = gcp_api(project_id)
    wanted = {str(i) for i in instance_ids}
    losses = []
    operations = list_items(api, f"{api.compute_url}/zones/{zone}/operations",
                            {"filter": f'operationType = "{PREEMPTED_OPERATION}"'})
    for operation in operations:
        target = str(operation.get("targetId", ""))
        if operation.get("operationType") == PREEMPTED_OPERATION and target in wanted:
            at = f" at {operation['insertTime']}" if operation.get("insertTime") else ""
            losses.append(InstanceLoss(target, True, f"preempted by Compute Engine (Spot VM){at}"))
            wanted.discard(target)
    return losses
