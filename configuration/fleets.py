"""Fleet configurations (`type: fleet`): SSH hosts you own (`ssh_config`) or cloud instances (`nodes`), as dstack 0.22
parses them."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from configuration.fields import (
    HOSTNAME,
    LOGIN_NAME,
    NAME_RULE,
    BackendName,
    SpotPolicy,
    check_name,
    check_pattern,
    parse_idle_duration,
    parse_tags,
)
from configuration.policies import (
    check_node_count,
)
from configuration.resources import ResourcesSpec, StrictModel


class SSHProxy(StrictModel):
    """A host the connection jumps through (`ssh -J`): reached first, then the fleet host from it."""

    hostname: Annotated[str, Field(description="The proxy host's address or name")]
    port: Annotated[Optional[int], Field(ge=1, le=65535, description="Its SSH port (default 22)")] = None
    user: Annotated[str, Field(description="The user to log in with on the proxy host")]
    identity_file: Annotated[str, Field(description="The private key for the proxy host")]

    _hostname = field_validator("hostname")(classmethod(lambda cls, v: check_pattern(v, HOSTNAME,
                                                                                "host name or address")))
    _user = field_validator("user")(classmethod(lambda cls, v: check_pattern(v, LOGIN_NAME, "user name")))


def check_private_ip(value: Optional[str]) -> Optional[str]:
    """`internal_ip`: a private address, as dstack requires."""
    if value is None:
        return value
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"Invalid IP address: {value!r}") from None
    if not address.is_private:
        raise ValueError(f"IP address {value} is not private")
    return value


def check_private_network(value: Optional[str]) -> Optional[str]:
    """`network`: a private CIDR (`10.0.0.0/24`; host bits allowed), as dstack requires."""
    if value is None:
        return value
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"Failed to parse network: {value!r} (expected ADDRESS/PREFIX, e.g. 10.0.0.0/24)") from None
    if not network.is_private:
        raise ValueError(f"network {value} is public; a private network is required")
    return value


class SSHHost(StrictModel):
    hostname: Annotated[
        str, Field(description="The host's address or name: letters, digits and `.-_:%`, not starting with `-`")
    ]
    user: Annotated[Optional[str], Field(description="Overrides `ssh_config.user`")] = None
    port: Annotated[Optional[int], Field(ge=1, le=65535, description="Overrides `ssh_config.port`")] = None
    identity_file: Annotated[Optional[str], Field(description="Overrides `ssh_config.identity_file`")] = None
    proxy_jump: Annotated[Optional[SSHProxy], Field(description="Overrides `ssh_config.proxy_jump`")] = None
    internal_ip: Annotated[
        Optional[str],
        Field(description="The private address the other hosts reach this one at (a multi-node task's "
                          "`DSTACK_NODES_IPS`); checked to be one of the host's own at apply. All hosts or none; "
                          "not with `network`"),
    ] = None

    _internal_ip = field_validator("internal_ip")(classmethod(lambda cls, v: check_private_ip(v)))

    @model_validator(mode="before")
    @classmethod
    def _address(cls, v: Any) -> Any:
        return {"hostname": v} if isinstance(v, str) else v

    _hostname = field_validator("hostname")(classmethod(lambda cls, v: check_pattern(v, HOSTNAME,
                                                                                "host name or address")))
    _user = field_validator("user")(classmethod(lambda cls, v: check_pattern(v, LOGIN_NAME, "user name")))


class SSHConfig(StrictModel):
    user: Annotated[Optional[str], Field(description="The SSH user")] = None
    port: Annotated[int, Field(ge=1, le=65535, description="The SSH port")] = 22
    identity_file: Annotated[Optional[str], Field(description="The private key file")] = None
    proxy_jump: Annotated[Optional[SSHProxy], Field(description="A host every connection jumps through")] = None
    hosts: Annotated[List[SSHHost], Field(min_length=1, description="The hosts: addresses, or mappings")]
    network: Annotated[
        Optional[str],
        Field(description="A private network (`10.0.0.0/24`): each host's address in it, found on the host at apply, "
                          "is where the other hosts reach it. Not with `internal_ip`"),
    ] = None

    _network = field_validator("network")(classmethod(lambda cls, v: check_private_network(v)))

    _user = field_validator("user")(classmethod(lambda cls, v: check_pattern(v, LOGIN_NAME, "user name")))

    @model_validator(mode="after")
    def _internal_addresses(self) -> "SSHConfig":
        given = [host for host in self.hosts if host.internal_ip is not None]
        if given and len(given) != len(self.hosts):
            raise ValueError("internal_ip must be specified for all hosts (or none)")
        if given and self.network is not None:
            raise ValueError("internal_ip is mutually exclusive with network")
        return self


class FleetNodes(StrictModel):
    """How many instances a cloud fleet has: `target` are provisioned at apply (dstack's `target`, which defaults to
    `min`, and may be 0); runs that need an instance add one while fewer than `max` exist (no `max`: up to the
    most nodes a fleet has here), and an idle one above `min` goes alone after the fleet's `idle_duration`."""

    min: Annotated[int, Field(description="The fewest instances: provisioned at apply, kept while idle")]
    target: Annotated[Optional[int], Field(description="The instances provisioned at apply; defaults to `min`")] = None
    max: Annotated[Optional[int], Field(description="The most instances the fleet may have; runs add them")] = None

    @model_validator(mode="after")
    def _order(self) -> "FleetNodes":
        if self.min < 0:
            raise ValueError("`nodes` needs a minimum of at least 0")
        if self.target is None:
            self.target = self.min
        check_node_count(self.target)
        check_node_count(self.max)
        if self.target < self.min or (self.max is not None and self.max < self.target):
            raise ValueError("`nodes` needs min <= target <= max")
        if self.max == 0:
            raise ValueError("`nodes` needs a maximum of at least 1: a fleet of no instance runs nothing")
        return self


def parse_fleet_nodes(v: Any) -> Any:
    """`N`, `MIN..MAX` (either side may be absent) or `{min, target, max}`, as dstack's fleets take them."""
    if isinstance(v, str) and ".." in v:
        low, high = v.replace(" ", "").split("..", 1)
        return {"min": low or 0, "max": high or None}
    if isinstance(v, (int, str)) and not isinstance(v, bool):
        return {"min": v, "max": v}
    return v


CLOUD_FLEET_FIELDS = ("nodes", "resources", "backends", "regions", "availability_zones",
                      "instance_types", "spot_policy", "max_price", "idle_duration", "reservation", "tags")


class FleetConfiguration(StrictModel):
    """A fleet: hosts you own (`ssh_config`), or cloud instances provisioned at apply (`nodes` and the fields that
    place them): exactly one of the two kinds."""

    type: Literal["fleet"] = "fleet"
    name: Annotated[str, Field(description=f"The fleet name: {NAME_RULE}")]
    ssh_config: Annotated[Optional[SSHConfig], Field(description="Hosts you own, reached over SSH")] = None
    nodes: Annotated[
        Optional[FleetNodes], BeforeValidator(parse_fleet_nodes),
        Field(description="Cloud fleets: the number of instances, `N` or a range `MIN..MAX` (MIN are provisioned at "
                          "apply; runs add instances up to MAX)"),
    ] = None
    placement: Annotated[
        Optional[Literal["any", "cluster"]],
        Field(description="`cluster`: the instances are interconnected. Cloud fleets: placed close together (a "
                          "placement group); SSH fleets: the hosts say so (their `internal_ip` or `network`)"),
    ] = None
    resources: Annotated[
        Optional[ResourcesSpec], Field(description="Cloud fleets: the resources of each instance")
    ] = None
    backends: Annotated[Optional[List[BackendName]], Field(description="Cloud fleets: `aws`, `gcp`")] = None
    regions: Annotated[Optional[List[str]], Field(description="Cloud fleets: the regions to consider")] = None
    availability_zones: Annotated[Optional[List[str]], Field(description="Cloud fleets: the zones to consider")] = None
    instance_types: Annotated[
        Optional[List[str]], Field(description="Cloud fleets: the instance types to consider")
    ] = None
    spot_policy: Annotated[
        Optional[SpotPolicy], Field(description="Cloud fleets: `spot`, `on-demand` (default) or `auto`")
    ] = None
    max_price: Annotated[
        Optional[float], Field(gt=0, allow_inf_nan=False, description="Cloud fleets: the maximum price per hour")
    ] = None
    idle_duration: Annotated[
        Optional[int], BeforeValidator(parse_idle_duration),
        Field(description="Cloud fleets: an instance idle this long ends (above the `nodes` minimum, alone; the "
                          "fleet once every instance has) (default `3d`, as dstack's); `off`: kept until "
                          "`dstack fleet delete`"),
    ] = None
    reservation: Annotated[
        Optional[str], Field(description="Cloud fleets: a capacity reservation. Not supported yet")
    ] = None
    tags: Annotated[Optional[Dict[str, str]], Field(description="Cloud fleets: tags for every cloud resource")] = None
    blocks: Annotated[
        Union[Literal["auto"], Annotated[int, Field(ge=1)]],
        Field(description="Jobs sharing one instance. Only 1 (the default): an instance runs one job at a time here"),
    ] = 1
    env: Annotated[Optional[Dict[str, Any]], Field(description="The fleet's environment. Not supported")] = None
    retry: Annotated[Optional[Any], Field(description="Retrying a fleet's provisioning. Not supported")] = None
    backend_options: Annotated[Optional[Any], Field(description="vastai's options. Not supported")] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    _tags = field_validator("tags", mode="before")(classmethod(lambda cls, v: parse_tags(v)))
    _one_or_many = field_validator("regions", "instance_types", "backends", "availability_zones", mode="before")(
        classmethod(lambda cls, v: [v] if isinstance(v, str) else v))

    @model_validator(mode="after")
    def _refused(self) -> "FleetConfiguration":
        """dstack's fleet fields that nothing here acts upon: refused by name rather than ignored."""
        refused = {"blocks": (self.blocks != 1, "an instance runs one job at a time here"),
                   "env": (bool(self.env), "a fleet starts no process of its own to give it to; set `env` in tasks"),
                   "retry": (self.retry is not None and self.retry is not False,
                             "a fleet's apply tries the cheapest offers once; run it again"),
                   "backend_options": (self.backend_options is not None, "its only options are vastai's")}
        for name, (used, why) in refused.items():
            if used:
                raise ValueError(f"`{name}` is not supported: {why}")
        return self

    @model_validator(mode="after")
    def _one_kind(self) -> "FleetConfiguration":
        cloud = [f for f in CLOUD_FLEET_FIELDS if getattr(self, f) is not None]
        if self.ssh_config is not None and cloud:
            raise ValueError(f"`ssh_config` (hosts you own) and {', '.join(f'`{f}`' for f in cloud)} (cloud "
                             "instances) are two kinds of fleet: give one of them")
        if self.ssh_config is None and self.nodes is None:
            raise ValueError("a fleet needs `ssh_config` (hosts you own) or `nodes` (cloud instances)")
        return self

    @property
    def is_cloud(self) -> bool:
        return self.ssh_config is None
