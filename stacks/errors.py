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
UNAVAILABLE = "unavailable"  # the region is not enabled for the account: skip it, like capacity

# (pattern, kind, scope); the first match wins, so the more specific patterns come first.
_RULES: Tuple[Tuple[str, str, str], ...] = (
    (r"GPUS_ALL_REGIONS", QUOTA, "cloud"),
    (r"Quota '[A-Z0-9_]*GPUS?[A-Z0-9_]*' exceeded", QUOTA, "region"),
    (r"QUOTA_EXCEEDED|quotaExceeded|Quota '[^']+' exceeded", QUOTA, "region"),
    (r"VcpuLimitExceeded|InstanceLimitExceeded|MaxSpotInstanceCountExceeded|VolumeLimitExceeded", QUOTA, "region"),
    (r"InsufficientInstanceCapacity|InsufficientHostCapacity|InsufficientCapacity|InsufficientFreeAddressesInSubnet",
     CAPACITY, "zone"),
    (r"ZONE_RESOURCE_POOL_EXHAUSTED|does not have enough resources available|resource pool exhausted", CAPACITY,
     "zone"),
    (r"Unsupported: .*(instance type|Availability Zone)|is not supported in your requested Availability Zone",
     CAPACITY, "zone"),
    (r"SpotMaxPriceTooLow|capacity-not-available|UnfulfillableCapacity", CAPACITY, "zone"),
    (r"STOCKOUT|stockout", CAPACITY, "zone"),
    (r"OptInRequired", UNAVAILABLE, "region"),
    # A boot disk type the machine series does not take (stacks.gcp.HYPERDISK_ONLY should prevent it): that machine
    # type is unusable here, other types are not.
    (r"[Dd]isk type .{0,80}(not supported|cannot be used)|diskType.{0,120}(not supported|not compatible)|"
     r"UNSUPPORTED_OPERATION.{0,120}[Hh]yperdisk", UNAVAILABLE, "type"),
    (r"AuthFailure|UnauthorizedOperation|InvalidClientTokenId|ExpiredToken|SignatureDoesNotMatch|"
     r"NoCredentialProviders|no valid credential sources|could not find default credentials|"
     r"invalid_grant|Error 401|Request had invalid authentication credentials", CREDENTIALS, "cloud"),
    (r"Error 403: Required '[^']+' permission|PERMISSION_DENIED|AccessDenied", CREDENTIALS, "cloud"),
)


# What to do about configuration errors whose cloud text does not say it: (pattern, hint appended to the message).
_HINTS: Tuple[Tuple[str, str], ...] = (
    (r"no matching EC2 VPC found", "this region has no default VPC (or none with that Name tag): set `vpc_name` "
                                   "(and `subnet`) for the aws backend in $DSTACK_HOME/config.yml"),
    (r"networks/[^' ]+' was not found|network .* not found", "the VPC network does not exist in this project: set "
                                                               "`vpc_name` (and `subnetwork`) for the gcp backend in "
                                                               "$DSTACK_HOME/config.yml"),
)


@dataclass
class StackFailure(DstackError):
    """A failed `up`: kind is capacity, quota, unavailable, credentials or configuration; scope is zone, region, cloud
    or type (the instance type, everywhere)."""

    kind: str
    scope: str
    message: str
    code: Optional[str] = None

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        """Capacity, quota and disabled-region failures mean: try the next offer. The others stop the run."""
        return self.kind in (CAPACITY, QUOTA, UNAVAILABLE)


def classify(text: str) -> StackFailure:
    for pattern, kind, scope in _RULES:
        match = re.search(pattern, text)
        if match:
            return StackFailure(kind, scope, summarize(text), match.group(0))
    message = summarize(text)
    for pattern, hint in _HINTS:
        if re.search(pattern, text):
            message = f"{message} ({hint})"
            break
    return StackFailure(CONFIGURATION, "cloud", message)


def summarize(text: str) -> str:
    """The cloud's own sentence, without the engine's stack of wrappers and request ids."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    interesting = [line for line in lines if re.search(r"error|exceeded|insufficient|not|denied|invalid", line, re.I)]
    chosen = (interesting or lines or [text.strip()])[-1]
    chosen = re.sub(r"RequestID: [0-9a-f-]+,?\s*", "", chosen)
    chosen = re.sub(r"https response error StatusCode: \d+,?\s*", "", chosen)
    return chosen[:500]
