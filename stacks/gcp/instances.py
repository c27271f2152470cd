"""A GCP instance's state, read from the Compute API before an idle fleet instance is claimed for reuse: a VM that
ended itself (its idle watchdog, stacks.power_off) is gone or stopped, and a run must not be given it."""

from __future__ import annotations

from stacks.gcp.api import GcpApi


def instance_state(api: GcpApi, zone: str, name: str) -> str:
    """`running`, `gone`, or the instance's other status in lowercase (`terminated` is a stopped VM's)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import compute_v1

    try:
        instance = api.compute(compute_v1.InstancesClient).get(project=api.project, zone=zone, instance=name,
                                                               timeout=30)
    except NotFound:
        return "gone"
    return instance.status.lower()
