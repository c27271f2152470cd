"""The AWS answers of `dstack config check` (stacks.checks): credentials, enabled regions, the network a run will
use, and GPU quotas, from the APIs a run itself calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

from stacks.checks import FAIL, OK, WARN, Check, regions_check

# Service Quotas codes of the vCPU limits that gate GPU and accelerator instances (EC2, per region).
GPU_QUOTAS = {
    "L-DB2E81BA": "on-demand G and VT",
    "L-417A185B": "on-demand P",
    "L-3819A6DF": "spot G and VT",
    "L-7212CCBC": "spot P",
}
HOME_REGION = "us-east-1"  # where account-wide questions (which regions are enabled) are asked


def check_aws(regions: Sequence[str], vpc_name: Optional[str] = None, session=None, clients=None) -> List[Check]:
    """`regions`: the ones runs may use (the backend's `regions`, else every region of the catalogue).
    `clients(service, region)` makes a boto3 client (tests hand in stubbed ones)."""
    import boto3
    import botocore.exceptions

    session = session or boto3.session.Session()
    make = clients or (lambda service, region: session.client(service, region_name=region))
    try:
        arn = make("sts", HOME_REGION).get_caller_identity()["Arn"]
    except botocore.exceptions.NoCredentialsError:
        from configuration.errors import MISSING_AWS_CREDENTIALS

        return [Check("aws", "credentials", FAIL, MISSING_AWS_CREDENTIALS)]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        return [Check("aws", "credentials", FAIL, f"AWS rejected the credentials: {e}")]
    checks = [Check("aws", "credentials", OK, arn)]
    status = opt_in_status(make("ec2", HOME_REGION), regions)
    enabled = [r for r in regions if r in status and status[r] != "not-opted-in"]
    checks.append(regions_check("aws", regions, enabled, "enabled", {
        "not enabled (opt-in regions, skipped by runs)": [r for r, s in status.items() if s == "not-opted-in"],
        "unknown to AWS": [r for r in regions if r not in status]}))
    if not enabled:
        return checks
    with ThreadPoolExecutor(max_workers=8) as pool:
        networks = dict(zip(enabled, pool.map(lambda r: _network(make("ec2", r), vpc_name), enabled)))
        quotas = dict(zip(enabled, pool.map(lambda r: _gpu_quotas(make("service-quotas", r)), enabled)))
    missing = sorted(r for r, found in networks.items() if not found)
    what = f"VPC {vpc_name!r}" if vpc_name else "default VPC"
    if missing:
        fix = "create it there" if vpc_name else "set `vpc_name` (and `subnet`) for the aws backend"
        checks.append(Check("aws", "network", FAIL if len(missing) == len(enabled) else WARN,
                            f"no {what} in {', '.join(missing)}: {fix} in $DSTACK_HOME/config.yml"))
    else:
        checks.append(Check("aws", "network", OK, f"{what} in every enabled region"))
    checks.append(_quota_check(quotas))
    return checks


def opt_in_status(ec2, regions: Sequence[str]) -> Dict[str, str]:
    """Region -> `opt-in-not-required`, `opted-in` or `not-opted-in`, for the regions AWS knows."""
    found = ec2.describe_regions(AllRegions=True)["Regions"]
    wanted = set(regions)
    return {r["RegionName"]: r.get("OptInStatus", "opt-in-not-required") for r in found if r["RegionName"] in wanted}


def require_region_enabled(region: str) -> None:
    """Before a run's `up`: an opt-in region the account has not enabled is skipped like a region out of capacity
    (the credentials would be rejected there, which used to end the run)."""
    import boto3
    import botocore.exceptions

    from stacks.errors import UNAVAILABLE, StackFailure

    try:
        status = opt_in_status(boto3.session.Session().client("ec2", region_name=HOME_REGION), [region])
    except botocore.exceptions.NoCredentialsError:
        from configuration.errors import MISSING_AWS_CREDENTIALS, ConfigurationError

        raise ConfigurationError(MISSING_AWS_CREDENTIALS) from None
    if status.get(region) == "not-opted-in":
        raise StackFailure(UNAVAILABLE, "region", f"{region} is an opt-in region this account has not enabled "
                                                  "(AWS console, Account, AWS Regions)")


def _network(ec2, vpc_name: Optional[str]) -> bool:
    filters = [{"Name": "tag:Name", "Values": [vpc_name]}] if vpc_name else [{"Name": "isDefault", "Values": ["true"]}]
    return bool(ec2.describe_vpcs(Filters=filters)["Vpcs"])


def _gpu_quotas(client) -> Dict[str, Optional[float]]:
    import botocore.exceptions

    values: Dict[str, Optional[float]] = {}
    for code in GPU_QUOTAS:
        try:
            values[code] = client.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            values[code] = None  # no permission (servicequotas:GetServiceQuota) or not in this region
    return values


def _quota_check(quotas: Dict[str, Dict[str, Optional[float]]]) -> Check:
    with_gpus = sorted(r for r, values in quotas.items() if any(v for v in values.values()))
    unread = sorted(r for r, values in quotas.items() if all(v is None for v in values.values()))
    parts = []
    for region in with_gpus:
        values = quotas[region]
        parts.append(f"{region} " + ", ".join(f"{GPU_QUOTAS[c]} {int(v)} vCPUs" for c, v in values.items() if v))
    detail = "; ".join(parts) if parts else "every GPU vCPU quota is 0: request an increase (Service Quotas, EC2) " \
                                            "before a GPU run"
    if unread:
        detail += f"; could not read the quotas of {', '.join(unread)} (servicequotas:GetServiceQuota)"
    return Check("aws", "gpu quota", OK if with_gpus else WARN, detail)
