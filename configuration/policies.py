"""The nested models of dstack's run profile and task fields beyond resources: utilization policy, schedule, volume
mount points, fleet and instance references, node groups and backend options. Their grammar is dstack 0.22's;
which of them a backend acts upon is provisioner.planning.field_support's business.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, List, Literal, Optional, Union

from pydantic import Field, field_validator

from configuration.cron import parse_cron
from configuration.fields import PortMapping, parse_duration
from configuration.resources import ResourcesSpec, StrictModel

MIN_UTILIZATION_WINDOW_S = 300
# The most nodes one run (or cloud fleet) has: one cluster, one stack, one job and connection per node. dstack sets no
# bound; without one, a typo (`nodes: 100000`) planned for minutes and gigabytes (docs/runs.md).
MAX_NODES = 1000
GROUP_NAME_HINT = "1 to 40 lowercase letters, digits and `-`, starting with a letter or digit"


class UtilizationPolicy(StrictModel):
    min_gpu_utilization: Annotated[
        int, Field(ge=0, le=100, description="The minimum GPU utilization, percent: a run with any GPU below it for "
                                             "the whole `time_window` is stopped")
    ]
    time_window: Annotated[int, Field(description="The window of samples (e.g. `30m`, `1h`); at least `5m`")]

    @field_validator("time_window", mode="before")
    @classmethod
    def _window(cls, v: Any) -> Any:
        seconds = parse_duration(v)
        if seconds < MIN_UTILIZATION_WINDOW_S:
            raise ValueError(f"time_window must be at least 5m, got {v!r}")
        return seconds


class Schedule(StrictModel):
    cron: Annotated[
        List[str], Field(description="A cron expression or a list of them: when to start the run, in UTC")
    ]

    @field_validator("cron", mode="before")
    @classmethod
    def _cron(cls, v: Any) -> Any:
        values = [v] if isinstance(v, str) else v
        if isinstance(values, list):
            if not values:
                raise ValueError("at least one cron expression is needed")
            for value in values:
                parse_cron(value)
        return values


def _absolute_path(path: str) -> str:
    if not path or not path.startswith("/"):
        raise ValueError(f"path must be absolute: {path!r}")
    if ".." in path.split("/"):
        raise ValueError(f"`..` is not allowed in a path: {path!r}")
    return posixpath.normpath(path)


class VolumeMountPoint(StrictModel):
    name: Annotated[Union[str, List[str]], Field(description="The volume name, or names to mount one of")]
    path: Annotated[str, Field(description="The absolute path in the job to mount it at")]

    _path = field_validator("path")(classmethod(lambda cls, v: _absolute_path(v)))


class InstanceMountPoint(StrictModel):
    instance_path: Annotated[str, Field(description="The absolute path on the host")]
    path: Annotated[str, Field(description="The absolute path in the job")]
    optional: Annotated[
        bool, Field(description="Run without it where it cannot be had (every backend here has instance volumes: "
                                "where the folder cannot be made or `path` is taken)")
    ] = False

    _paths = field_validator("instance_path", "path")(classmethod(lambda cls, v: _absolute_path(v)))


def parse_mount_point(v: Any) -> Any:
    """`NAME:/path` (a volume) or `/host/path:/path` (a folder of the host)."""
    if not isinstance(v, str):
        return v
    source, sep, path = v.rpartition(":")
    if not sep or not source:
        raise ValueError(f"Invalid volume {v!r} (expected NAME:/PATH or /HOST/PATH:/PATH)")
    if "/" in source:
        return InstanceMountPoint(instance_path=source, path=path)
    return VolumeMountPoint(name=source, path=path)


MountPoint = Annotated[Union[VolumeMountPoint, InstanceMountPoint], Field(union_mode="left_to_right")]


def check_volume_names(points: List[Any]) -> List[Any]:
    """A network volume named at most once in a run's `volumes`, counting every name of a `name: [a, b]` list (any
    of them may be taken): one disk is attached once, at one mount point (dstack refuses it alike)."""
    paths: dict = {}
    for point in points:
        if isinstance(point, VolumeMountPoint):
            for name in [point.name] if isinstance(point.name, str) else point.name:
                paths.setdefault(name, []).append(point.path)
    for name, where in paths.items():
        if len(where) > 1:
            raise ValueError(f"volume {name} is named more than once (at {', '.join(dict.fromkeys(where))}): a volume "
                             "is attached at one mount point only")
    return points


class EntityReference(StrictModel):
    project: Annotated[Optional[str], Field(description="The project; the current one if absent")] = None
    name: Annotated[str, Field(description="The name")]


def parse_entity_reference(v: Any) -> Any:
    """`NAME` or `PROJECT/NAME`."""
    if not isinstance(v, str):
        return v
    parts = v.split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"Invalid reference {v!r} (expected NAME or PROJECT/NAME)")
    return {"project": parts[0], "name": parts[1]} if len(parts) == 2 else {"name": v}


class InstanceNameSelector(StrictModel):
    name: Annotated[str, Field(min_length=1, description="The fleet instance name")]


class InstanceHostnameSelector(StrictModel):
    hostname: Annotated[str, Field(min_length=1, description="The fleet instance's host name or address")]


class FleetInstanceSelector(StrictModel):
    fleet: Annotated[EntityReference, Field(description="The fleet: NAME, PROJECT/NAME or a mapping")]
    instance: Annotated[int, Field(ge=0, description="The instance number in the fleet")]

    _fleet = field_validator("fleet", mode="before")(classmethod(lambda cls, v: parse_entity_reference(v)))


def parse_instance_selector(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


InstanceSelector = Union[InstanceNameSelector, InstanceHostnameSelector, FleetInstanceSelector]


def check_node_count(value: Optional[int]) -> Optional[int]:
    """A node count within MAX_NODES (the lower bound is each field's own)."""
    if value is not None and value > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} nodes, got {value}: the largest cluster a run or fleet makes here "
                         "(docs/runs.md)")
    return value


class NodeGroup(StrictModel):
    name: Annotated[Optional[str], Field(description=f"The group name ({GROUP_NAME_HINT}); `0`, `1`, ... if absent")] = (
        None
    )
    nodes: Annotated[int, Field(ge=1, description=f"The number of nodes in the group (at most {MAX_NODES})")] = 1
    resources: Annotated[ResourcesSpec, Field(description="The resources of each node of the group")] = ResourcesSpec()
    commands: Annotated[List[str], Field(description="The commands the group's nodes run")] = []
    ports: Annotated[List[PortMapping], Field(description="The ports the group's nodes expose")] = []

    _nodes = field_validator("nodes")(classmethod(lambda cls, v: check_node_count(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^[a-z0-9][a-z0-9-]{0,39}\Z", v):
            raise ValueError(f"Invalid group name {v!r} ({GROUP_NAME_HINT})")
        return v


def name_groups(groups: Optional[List[NodeGroup]]) -> Optional[List[NodeGroup]]:
    """Unnamed groups are named by position; names must be unique; their nodes are at most MAX_NODES in all."""
    if groups is None:
        return groups
    if not groups:
        raise ValueError("`groups` must not be empty")
    check_node_count(sum(g.nodes for g in groups))
    named = [g if g.name is not None else g.model_copy(update={"name": str(i)}) for i, g in enumerate(groups)]
    names = [g.name for g in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate group names: {', '.join(duplicates)}")
    return named


class VastAIOptions(StrictModel):
    type: Annotated[Literal["vastai"], Field(description="The backend the options apply to: `vastai`")] = "vastai"
    offer_order: Annotated[Optional[Literal["score", "price"]], Field(description="`score` or `price`")] = None
    min_reliability: Annotated[Optional[float], Field(ge=0, le=1, description="0 to 1")] = None
    min_score: Annotated[Optional[int], Field(ge=0, description="The minimum offer score")] = None


def check_backend_options(v: Optional[List[VastAIOptions]]) -> Optional[List[VastAIOptions]]:
    if v is not None:
        types = [o.type for o in v]
        for t in types:
            if types.count(t) > 1:
                raise ValueError(f"backend_options has two entries for {t}")
    return v

