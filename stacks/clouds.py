"""The narrow interface to each cloud, one function per operation (stacks/aws/ and stacks/gcp/ hold the code): a
caller names the backend and never imports a cloud's module, whose SDK (boto3, google-cloud, pulumi) loads only
when the function runs."""

from __future__ import annotations

from typing import Callable, List, Optional

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


def setup_problems(backend: str, purpose: str) -> List[str]:
    """What a run on `backend` would fail on before creating anything, found without asking the cloud: the extra
    (its SDKs), the Pulumi CLI, credentials that are not there. One line each; empty when nothing is missing."""
    from stacks.extras import MissingExtra, require_extra

    try:
        require_extra(backend, purpose)
    except MissingExtra as e:
        return [str(e)]  # without the SDK the other checks cannot run
    from stacks import automation
    from configuration.errors import ConfigurationError

    problems = []
    try:
        automation.require_pulumi()
    except automation.PulumiMissing as e:
        problems.append(" ".join(str(e).split()))
    try:
        if backend == "aws":
            import boto3

            from configuration.errors import MISSING_AWS_CREDENTIALS

            if boto3.session.Session().get_credentials() is None:
                problems.append(MISSING_AWS_CREDENTIALS)
        else:
            from stacks.gcp.credentials import gcp_credentials_source

            gcp_credentials_source()
    except ConfigurationError as e:
        problems.append(str(e))
    return problems


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
