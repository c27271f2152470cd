"""A GCP instance's state, read from the Compute API before an idle fleet instance is claimed for reuse: a VM that
ended itself (its idle watchdog, stacks.power_off) is gone or stopped, and a run must not be given it."""

from __future__ import annotations

from stacks.gcp.api import GcpApi, rest_request


def instance_state(api: GcpApi, zone: str, name: str) -> str:
    """`running`, `gone`, or the instance's other status in lowercase (`terminated` is a stopped VM's)."""
    instance = rest_request(api, "GET", f"{api.compute_url}/zones/{zone}/instances/{name}", missing_ok=True,
                            timeout=30)
    return instance["status"].lower() if instance else "gone"
