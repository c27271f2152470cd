"""Why a stack failed, read from the cloud's error text: try the next offer (capacity, quota) or stop (configuration,
credentials). The scope says what the failure rules out for the next tries: the zone, the region or the whole cloud.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from configuration.errors import DstackError

CAPACITY = "capacity"
QUOTA = "quota"
CREDENTIALS = "credentials"
CONFIGURATION = "configuration"
UNAVAILABLE = "unavailable"  # the region, zone or type is not usable here: skip it, like capacity
UNREACHABLE = "unreachable"  # the VM never answered SSH within its boot budget: its offer is given up
TRANSIENT = "transient"  # IAM's eventual consistency: the same offer again after a moment (scope "attempt")

# (pattern, kind, scope); the first match wins, so the more specific patterns come first.
_RULES: Tuple[Tuple[str, str, str], ...] = (
    (r"GPUS_ALL_REGIONS", QUOTA, "cloud"),
    (r"Maximum number of service accounts on project reached", QUOTA, "cloud"),
    (r"Quota '[A-Z0-9_]*GPUS?[A-Z0-9_]*' exceeded", QUOTA, "region"),
    (r"QUOTA_EXCEEDED|quotaExceeded|Quota '[^']+' exceeded", QUOTA, "region"),
    (r"VcpuLimitExceeded|InstanceLimitExceeded|MaxSpotInstanceCountExceeded|VolumeLimitExceeded", QUOTA, "region"),
    (r"InsufficientInstanceCapacity|InsufficientHostCapacity|InsufficientCapacity|InsufficientFreeAddressesInSubnet",
     CAPACITY, "zone"),
    (r"ZONE_RESOURCE_POOL_EXHAUSTED|does not have enough resources available|resource pool exhausted", CAPACITY,
     "zone"),
    (r"Unsupported: .*(instance type|Availability Zone)|is not supported in your requested Availability Zone|"
     r"Unsupported: The requested configuration is currently not supported", CAPACITY, "zone"),
    # A zone the run cannot use, though others of the region may do: one with no default subnet (Local and Wavelength
    # Zones have none), none of the VPC's (stacks.aws.program), or one the account has not enabled (an opt-in zone).
    (r"No default subnet for availability zone|has no (default )?subnet in \S+|Invalid [Aa]vailability [Zz]one",
     UNAVAILABLE, "zone"),
    (r"SpotMaxPriceTooLow|capacity-not-available|UnfulfillableCapacity", CAPACITY, "zone"),
    (r"STOCKOUT|stockout", CAPACITY, "zone"),
    (r"OptInRequired", UNAVAILABLE, "region"),
    # A run's service account just made (stacks.gcp.iam) that Compute or IAM does not see yet, or one an earlier try
    # made that reads as existing: IAM is eventually consistent, and the same offer works a moment later.
    (r"[Ss]ervice account \S+ (does not exist|already exists)|serviceAccounts?/\S+ (does not exist|not found)",
     TRANSIENT, "attempt"),
    # A boot disk type the machine series does not take (stacks.gcp.program.HYPERDISK_ONLY should prevent it): that machine
    # type is unusable here, other types are not.
    (r"[Dd]isk type .{0,80}(not supported|cannot be used)|diskType.{0,120}(not supported|not compatible)|"
     r"UNSUPPORTED_OPERATION.{0,120}[Hh]yperdisk", UNAVAILABLE, "type"),
    (r"AuthFailure|UnauthorizedOperation|InvalidClientTokenId|ExpiredToken|SignatureDoesNotMatch|"
     r"NoCredentialProviders|no valid credential sources|could not find default credentials|"
     r"invalid_grant|Error 401|Request had invalid authentication credentials", CREDENTIALS, "cloud"),
    (r"Error 403: Required '[^']+' permission|PERMISSION_DENIED|AccessDenied", CREDENTIALS, "cloud"),
)


# Each GCP VM runs as its own service account, allowed to delete that VM only (stacks/gcp.py): what that asks of the
# user's credentials, in the words of docs/clouds.md.
GCP_SELF_DELETE_HINT = ("dstack gives each GCP VM its own service account, allowed to delete only that VM, so that a "
                        "VM that ends itself is deleted rather than stopped: the credentials need "
                        "roles/iam.serviceAccountAdmin, roles/iam.serviceAccountUser and "
                        "compute.instances.setIamPolicy (roles/compute.instanceAdmin.v1; the Editor role lacks it); "
                        "or set `self_delete: false` for the gcp backend in $DSTACK_HOME/config.yml; see docs/clouds.md")

# What to do about a failure whose cloud text does not say it: (pattern, hint appended to the message).
_HINTS: Tuple[Tuple[str, str], ...] = (
    (r"(?i)iam\.serviceAccounts\.(create|delete|actAs)|compute\.instances\.setIamPolicy|iam\.serviceAccountUser|"
     r"SERVICE_ACCOUNT_ACCESS_DENIED|does not have access to service account", GCP_SELF_DELETE_HINT),
    (r"Maximum number of service accounts on project reached",
     "each GCP run holds a service account while it exists (a project may have 100 by default): stop finished runs, "
     "`dstack gc` what lost runs left, or ask for more service accounts in the project's IAM quotas"),
    (r"iam\.googleapis\.com.*(has not been used|is disabled)|(has not been used|is disabled).*iam\.googleapis\.com",
     "enable the IAM API in the project: `gcloud services enable iam.googleapis.com`"),
    (r"no matching EC2 VPC found", "this region has no default VPC (or none with that Name tag): set `vpc_name` "
                                   "(and `subnet`) for the aws backend in $DSTACK_HOME/config.yml"),
    (r"networks/[^' ]+' was not found|network .* not found", "the VPC network does not exist in this project: set "
                                                               "`vpc_name` (and `subnetwork`) for the gcp backend in "
                                                               "$DSTACK_HOME/config.yml"),
)


@dataclass
class StackFailure(DstackError):
    """A failed `up`: kind is capacity, quota, unavailable, unreachable, transient, credentials or configuration;
    scope is zone, region, cloud, type (the instance type, everywhere), offer (its instance type in its region, every
    zone), host (one host of an SSH fleet, whose region is the fleet) or attempt (nothing is ruled out: the same
    offer again)."""

    kind: str
    scope: str
    message: str
    code: Optional[str] = None

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        """Capacity, quota, unusable places, VMs that never answered and transient failures mean: try again (the
        next offer or zone, or a transient one's own again). The others stop the run."""
        return self.kind in (CAPACITY, QUOTA, UNAVAILABLE, UNREACHABLE, TRANSIENT)


def classify(text: str) -> StackFailure:
    kind, scope, code = CONFIGURATION, "cloud", None
    for pattern, rule_kind, rule_scope in _RULES:
        match = re.search(pattern, text)
        if match:
            kind, scope, code = rule_kind, rule_scope, match.group(0)
            break
    message = summarize(text)
    for pattern, hint in _HINTS:
        if re.search(pattern, text, re.S):
            message = f"{message} ({hint})"
            break
    return StackFailure(kind, scope, message, code)


def summarize(text: str) -> str:
    """The cloud's own sentence, without the engine's stack of wrappers and request ids."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    interesting = [line for line in lines if re.search(r"error|exceeded|insufficient|not|denied|invalid", line, re.I)]
    chosen = (interesting or lines or [text.strip()])[-1]
    chosen = re.sub(r"RequestID: [0-9a-f-]+,?\s*", "", chosen)
    chosen = re.sub(r"https response error StatusCode: \d+,?\s*", "", chosen)
    return chosen[:500]
