"""The narrow interface to each cloud, one function per operation (stacks/aws/ and stacks/gcp/ hold the code): a
caller names the backend and never imports a cloud's module, whose SDK (boto3, google-cloud, pulumi) loads only
when the function runs."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from stacks.losses import InstanceLoss
from stacks.spec import StackSpec
from stacks.volume_spec import VolumeSpec


def check_credentials(backend: str, region: str) -> None:
    """Before anything is created or destroyed: the cloud's credentials are there (and, on AWS, the region is
    enabled for the account); a ConfigurationError or a StackFailure says what is missing."""
    if backend == "aws":
        from stacks.aws.checks import require_region_enabled
        from stacks.aws.credentials import check_aws_credentials

        require_region_enabled(region)
        check_aws_credentials(region)
    else:
        from stacks.gcp.credentials import gcp_credentials_source

        gcp_credentials_source()


def program_for(spec: StackSpec) -> Callable[[], None]:
    """The Pulumi program of a run's or a fleet's stack."""
    if spec.backend == "aws":
        from stacks.aws.program import aws_program

        return lambda: aws_program(spec)
    if spec.backend == "gcp":
        from stacks.gcp.program import gcp_program

        return lambda: gcp_program(spec)
    raise ValueError(f"backend {spec.backend} has no stack program")


def volume_program_for(spec: VolumeSpec) -> Callable[[], None]:
    """The Pulumi program of a network volume's own stack."""
    if spec.backend == "aws":
        from stacks.aws.volume import aws_volume_program

        return lambda: aws_volume_program(spec)
    from stacks.gcp.volume import gcp_volume_program

    return lambda: gcp_volume_program(spec)


def placement_note(backend: str, instance_type: str) -> Optional[str]:
    """What the plan says when a cluster of `instance_type` goes without its placement group or policy."""
    if backend == "aws":
        from stacks.aws.program import placement_note as aws_note

        return aws_note(instance_type)
    from stacks.gcp.program import placement_note as gcp_note

    return gcp_note(instance_type)


def network_note(backend: str, instance_type: str) -> Optional[str]:
    """What the plan says of a cluster's network on `instance_type`: the EFA interfaces an AWS node gets, the GPU
    NICs a GCP A3 or A4 node goes without."""
    if backend == "aws":
        from stacks.aws.program import efa_note

        return efa_note(instance_type)
    from stacks.gcp.nics import gpu_nic_note

    return gpu_nic_note(instance_type)


def sweep_run(backend: str, region: str, project_id: Optional[str], owner: Optional[str], run_name: str) -> None:
    """Removes what an interrupted `up` of `run_name`'s stack created before Pulumi recorded it (found by the run's
    and its owner's tags or labels)."""
    if backend == "aws":
        from stacks.aws.leftovers import sweep_run as sweep_aws

        sweep_aws(region, owner, run_name)
    else:
        from stacks.gcp.leftovers import sweep_run as sweep_gcp

        sweep_gcp(project_id, owner, run_name)


def instance_losses(backend: str, region: str, zone: Optional[str], project_id: Optional[str],
                    instance_ids: Sequence[str]) -> List[InstanceLoss]:
    """Which of a stack's instances the cloud no longer runs, and why: AWS says it of every instance (its state
    reason), GCP of the preempted ones (their zone's operations)."""
    if backend == "aws":
        from stacks.aws.interruptions import instance_losses as aws_losses

        return aws_losses(region, instance_ids)
    from stacks.gcp.interruptions import instance_losses as gcp_losses

    return gcp_losses(project_id, zone or "", instance_ids)
