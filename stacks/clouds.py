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
    """The Pulumi program of a run's or a fleet's stack (on GCP, a TPU slice's own: stacks.gcp.tpu)."""
    if spec.backend == "aws":
        from stacks.aws.program import aws_program

        return lambda: aws_program(spec)
    if spec.backend == "gcp":
        from stacks.gcp.tpu import is_tpu, tpu_program

        if is_tpu(spec):
            return lambda: tpu_program(spec)
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
    from stacks.gcp.tpu import is_tpu_type

    return None if is_tpu_type(instance_type) else gcp_note(instance_type)  # a TPU slice is its own interconnect


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


def sweep_instances(backend: str, region: str, project_id: Optional[str], owner: str, run_name: str,
                    names: Sequence[str]) -> None:
    """Removes the instances named `names` that an interrupted `up` of `run_name`'s stack created before Pulumi
    recorded them, found by their tags or labels and names (a cloud fleet's other instances are kept)."""
    if backend == "aws":
        from stacks.aws.leftovers import sweep_instances as sweep_aws

        sweep_aws(region, owner, run_name, names)
    else:
        from stacks.gcp.leftovers import sweep_instances as sweep_gcp

        sweep_gcp(project_id, owner, run_name, names)


def self_delete_check(project_id: Optional[str]):
    """GCP `self_delete`: what the credentials lack for it (stacks.gcp.iam.SelfDeleteCheck)."""
    from stacks.gcp.api import gcp_api
    from stacks.gcp.iam import check_self_delete

    return check_self_delete(gcp_api(project_id))


def self_delete_warning(project_id: Optional[str], missing) -> str:
    from stacks.gcp.iam import fallback_warning

    return fallback_warning(project_id or "(the credentials' project)", tuple(missing))


def run_service_account(project_id: Optional[str], owner: str, name: str) -> str:
    """GCP `self_delete`: the email of the service account the VMs of stack `name` run as, made (once) before
    `up` and read back (stacks.gcp.iam.run_account)."""
    from stacks.gcp.api import gcp_api
    from stacks.gcp.iam import run_account

    return run_account(gcp_api(project_id), owner, name)


def attaches_network_volumes(backend: str, instance_type: str) -> bool:
    """Whether `instance_type` can attach the backend's network volumes: a GCP volume is a pd-balanced disk, which
    the Hyperdisk-only machine series cannot attach."""
    if backend != "gcp":
        return True
    from stacks.gcp.program import hyperdisk_only

    return not hyperdisk_only(instance_type)


def instance_state(backend: str, region: str, zone: str, project_id: Optional[str], owner: str, name: str) -> str:
    """A stack's VM as the cloud has it now, found by its name (stacks.spec.node_name): `running`, `gone`, or its
    other state (stopped, terminated, ...)."""
    if backend == "aws":
        from stacks.aws.instances import instance_state as aws_state

        return aws_state(region, owner, name)
    from stacks.gcp.api import gcp_api
    from stacks.gcp.instances import instance_state as gcp_state

    return gcp_state(gcp_api(project_id), zone, name)
def instance_losses(backend: str, region: str, zone: Optional[str], project_id: Optional[str],
                    instance_ids: Sequence[str]) -> List[InstanceLoss]:
    """Which of a stack's instances the cloud no longer runs, and why: AWS says it of every instance (its state
    reason), GCP of the preempted ones (their zone's operations)."""
    if backend == "aws":
        from stacks.aws.interruptions import instance_losses as aws_losses

        return aws_losses(region, instance_ids)
    from stacks.gcp.interruptions import instance_losses as gcp_losses

    return gcp_losses(project_id, zone or "", instance_ids)
