"""The configuration types of a `*.dstack.yml` file: `task`, `dev-environment`, `fleet` and `volume`.

Field names, defaults and meanings follow dstack's task reference (docs/reference/task.md is generated from these
models by `dstack schema --markdown`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from configuration.fields import (
    NAME_RULE,
    BackendName,
    MaxDuration,
    PortMapping,
    RegistryAuth,
    RetryPolicy,
    SpotPolicy,
    check_name,
    parse_duration,
    parse_env,
    parse_idle_duration,
    parse_off_duration,
    parse_python_version,
    parse_shell,
    parse_tags,
    parse_user,
)
from configuration.fleets import FleetConfiguration
from configuration.policies import (
    MAX_NODES,
    EntityReference,
    InstanceSelector,
    MountPoint,
    NodeGroup,
    Schedule,
    UtilizationPolicy,
    VastAIOptions,
    check_backend_options,
    check_node_count,
    check_volume_names,
    name_groups,
    parse_entity_reference,
    parse_instance_selector,
    parse_mount_point,
)
from configuration.repos import Files, Repos, SingleBranch
from configuration.resources import ResourcesSpec, StrictModel
from configuration.volumes import VolumeConfiguration


class ProfileFields(StrictModel):
    """Where and how a run may be placed: the policy the offer solver applies."""

    backends: Annotated[
        Optional[List[BackendName]], Field(description="The backends to consider: `aws`, `gcp`, `ssh`, `local`")
    ] = None
    regions: Annotated[Optional[List[str]], Field(description="The regions to consider (e.g. `us-east-1`)")] = None
    instance_types: Annotated[
        Optional[List[str]], Field(description="The instance types to consider (e.g. `p5.48xlarge`)")
    ] = None
    spot_policy: Annotated[
        Optional[SpotPolicy],
        Field(description="`spot`, `on-demand` or `auto` (either, cheapest first). Runs default to `on-demand`"),
    ] = None
    max_price: Annotated[
        Optional[float], Field(gt=0, allow_inf_nan=False, description="The maximum instance price per hour, in dollars")
    ] = None
    max_duration: Annotated[
        Optional[MaxDuration],
        Field(description="Stop the run after this time (e.g. `2h`, `30m`, `1d`, seconds), or `off`"),
    ] = None
    retry: Annotated[
        Optional[RetryPolicy],
        Field(description="Retry on `no-capacity`, `interruption` or `error`: `true`, or `{on_events, duration}`"),
    ] = None
    availability_zones: Annotated[
        Optional[List[str]], Field(description="The zones to consider (e.g. `us-east-1a`); clouds only")
    ] = None
    stop_duration: Annotated[
        Optional[MaxDuration],
        Field(description="On stop, how long the job has after SIGTERM before SIGKILL (e.g. `30s`, `5m`), or `off` "
                          "(no SIGKILL). Default `10s`"),
    ] = None
    tags: Annotated[
        Optional[Dict[str, str]],
        Field(description="Tags for every cloud resource of the run (GCP labels: lowercased, other characters `-`); "
                          "shown by `dstack ps --json`"),
    ] = None
    utilization_policy: Annotated[
        Optional[UtilizationPolicy],
        Field(description="Stop the run when a GPU stays below `min_gpu_utilization` percent for `time_window`"),
    ] = None
    schedule: Annotated[
        Optional[Schedule], Field(description="Start the run at these times: `{cron: \"0 8 * * mon-fri\"}` (UTC)")
    ] = None
    reservation: Annotated[
        Optional[str], Field(description="GCP: the name of a reservation the run's VMs consume (on-demand offers "
                                         "only; it opens the machine types sold only through reservations)")
    ] = None
    creation_policy: Annotated[
        Optional[Literal["reuse", "reuse-or-create"]],
        Field(description="`reuse`: only idle fleet instances that exist; `reuse-or-create` (default): those "
                          "first, else a new instance"),
    ] = None
    idle_duration: Annotated[
        Optional[int],
        BeforeValidator(parse_idle_duration),
        Field(description="Keep the run's cloud instance this long after the run, idle, for the next runs "
                          "(`off`: until `dstack fleet delete`); absent: it is destroyed with the run"),
    ] = None
    startup_order: Annotated[
        Optional[Literal["any", "master-first", "workers-first"]],
        Field(description="The order multi-node jobs start in: `any` (default: all at once), `master-first`, "
                          "`workers-first` (docs/runs.md)"),
    ] = None
    stop_criteria: Annotated[
        Optional[Literal["all-done", "master-done"]],
        Field(description="When a multi-node run is finished: `all-done` (default: every node) or `master-done`"),
    ] = None
    fleets: Annotated[
        Optional[List[Annotated[EntityReference, BeforeValidator(parse_entity_reference)]]],
        Field(description="Run only on these fleets' hosts and idle instances: `NAME` or `PROJECT/NAME`"),
    ] = None
    instances: Annotated[
        Optional[List[Annotated[InstanceSelector, BeforeValidator(parse_instance_selector)]]],
        Field(min_length=1, description="The fleet instances to use: a name, `{hostname}` or `{fleet, instance}`. "
                                        "Not supported yet"),
    ] = None
    backend_options: Annotated[
        Optional[List[VastAIOptions]],
        Field(description="Options for one backend's offers: `{type: vastai, ...}`. Refused: no such backend here"),
    ] = None

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, v: Any) -> Any:
        if v is None or v == "off":
            return v
        return parse_duration(v)

    @field_validator("stop_duration", mode="before")
    @classmethod
    def _stop_duration(cls, v: Any) -> Any:
        return parse_off_duration(v)

    _tags = field_validator("tags", mode="before")(classmethod(lambda cls, v: parse_tags(v)))
    _backend_options = field_validator("backend_options")(classmethod(lambda cls, v: check_backend_options(v)))

    @field_validator("retry", mode="before")
    @classmethod
    def _retry(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False:
            return None
        return v

    @field_validator("regions", "instance_types", "backends", "availability_zones", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class RunFields(ProfileFields):
    """What every run configuration shares."""

    name: Annotated[
        Optional[str],
        Field(description=f"The run name: {NAME_RULE}; generated if absent"),
    ] = None
    image: Annotated[Optional[str], Field(description="The Docker image to run in")] = None
    python: Annotated[
        Optional[str],
        Field(description="The Python version to run with when no `image` is given: `3.9` to `3.14`; installed "
                          "with `uv` where the host lacks it"),
    ] = None
    nvcc: Annotated[
        Optional[bool], Field(description="Needs the CUDA compiler `nvcc` on the host (no `image`)")
    ] = None
    docker: Annotated[
        Optional[bool], Field(description="Docker usable by the commands (no `image`, `python` or `nvcc`)")
    ] = None
    entrypoint: Annotated[Optional[str], Field(description="The Docker entrypoint (with `image` only)")] = None
    working_dir: Annotated[Optional[str], Field(description="The working directory, relative to the repo or absolute")] = None
    user: Annotated[
        Optional[str], Field(description="The user in the container, `USER[:GROUP]` (names or ids; with `image`)")
    ] = None
    privileged: Annotated[bool, Field(description="With `image`: a privileged container. Without: the commands run "
                                                  "as root (sudo) where the host gives root (docs/runs.md)")] = False
    home_dir: Annotated[
        Optional[str], Field(description="The container's `HOME` (with `image`); deprecated by dstack")
    ] = None
    shell: Annotated[
        Optional[str],
        Field(description="The shell running `commands`: `sh`, `bash` or an absolute path. Default: `/bin/sh` with "
                          "`image`, else `bash` (`sh` where the host has no bash)"),
    ] = None
    registry_auth: Annotated[
        Optional[RegistryAuth], Field(description="Credentials for a private Docker registry (with `image`)")
    ] = None
    setup: Annotated[List[str], Field(description="Commands run before `commands` (dstack's legacy field)")] = []
    priority: Annotated[
        Optional[int], Field(ge=0, le=100, description="0 to 100: higher runs are provisioned first where runs "
                                                       "queue; here no run waits for another")
    ] = None
    volumes: Annotated[
        List[Annotated[MountPoint, BeforeValidator(parse_mount_point)]],
        Field(description="Volumes to mount: `NAME:/path` (a network volume; a list of names: any one of them) "
                          "or `/host/path:/path` (a folder of the host); see docs/runs.md"),
    ] = []
    dstack: Annotated[
        bool, Field(description="Make the dstack server reachable from the job. Refused: there is no server")
    ] = False
    env: Annotated[
        Dict[str, Optional[str]],
        Field(description="Environment variables: a list of `NAME=VALUE` or `NAME` (taken from your environment), or a mapping"),
    ] = {}
    resources: Annotated[ResourcesSpec, Field(description="The resources the run needs")] = ResourcesSpec()

    _volumes = field_validator("volumes")(classmethod(lambda cls, v: check_volume_names(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        return check_name(v)

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, v: Any) -> Any:
        return None if v is None else parse_python_version(v)

    @field_validator("docker")
    @classmethod
    def _docker(cls, v: Optional[bool], info: ValidationInfo) -> Optional[bool]:
        for other in ("image", "python", "nvcc"):
            if v and info.data.get(other):
                raise ValueError(f"`docker` and `{other}` are mutually exclusive: give one of them")
        return v

    _user = field_validator("user", mode="before")(classmethod(lambda cls, v: parse_user(v)))
    _shell = field_validator("shell", mode="before")(classmethod(lambda cls, v: parse_shell(v)))

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        return parse_env(v)

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, v: Any) -> Any:
        return {} if v is None else v

    @model_validator(mode="after")
    def _image_or_python(self) -> "RunFields":
        if self.image is not None and self.python is not None:
            raise ValueError("`image` and `python` are mutually exclusive: give one of them")
        return self


class TaskConfiguration(RunFields):
    type: Literal["task"] = "task"
    commands: Annotated[List[str], Field(description="The shell commands to run")] = []
    ports: Annotated[
        List[PortMapping],
        Field(description="Ports to forward: `8080`, `\"8080:80\"` (local:remote) or `\"*:8080\"` (any free local port)"),
    ] = []
    nodes: Annotated[
        int, Field(ge=1, description=f"The number of nodes: one cluster of N jobs, rank 0 the master; at most "
                                     f"{MAX_NODES} (docs/runs.md)")
    ] = 1
    groups: Annotated[
        Optional[List[NodeGroup]],
        Field(description="Node groups of a heterogeneous multi-node task, instead of `nodes`, `commands` and "
                          "`ports`: each group's own `nodes`, `resources`, `commands` and `ports`; ranks run through "
                          "the groups in order (rank 0, the master, is `groups[0].nodes[0]`). Commands may name any "
                          "node's internal address: `${{ groups[I].nodes[J].IP_ADDRESS }}` (docs/runs.md)"),
    ] = None

    _groups = field_validator("groups")(classmethod(lambda cls, v: name_groups(v)))
    _nodes = field_validator("nodes")(classmethod(lambda cls, v: check_node_count(v)))

    @model_validator(mode="before")
    @classmethod
    def _nodes_or_groups(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("groups") is not None and data.get("nodes") is not None:
            raise ValueError("`nodes` and `groups` are mutually exclusive: give one of them")
        return data
    repos: Repos = []
    files: Files = []
    single_branch: SingleBranch = None

    @model_validator(mode="after")
    def _something_to_run(self) -> "TaskConfiguration":
        if self.groups is not None:
            for field in ("commands", "ports", "entrypoint"):
                if getattr(self, field):
                    raise ValueError(f"`{field}` goes in each of `groups` when `groups` is set")
            for group in self.groups:
                if not group.commands and self.image is None:
                    raise ValueError(f"group {group.name!r}: either its `commands` or the task's `image` must be set")
            return self
        if not self.commands and self.image is None:
            raise ValueError("either `commands` or `image` must be set")
        return self


WINDSURF_VERSION = re.compile(r"^.+@[a-f0-9]+\Z")
IDE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}(@[a-f0-9]{1,64})?\Z")  # it goes into a download URL


class DevEnvironmentConfiguration(RunFields):
    """A machine kept for you after `init`: reached with `ssh NAME` (an entry in ~/.ssh/config's include) and the
    IDE's link, until `dstack stop`, `inactivity_duration` or `max_duration` (docs/runs.md)."""

    type: Literal["dev-environment"] = "dev-environment"
    ide: Annotated[
        Optional[Literal["vscode", "cursor", "windsurf", "zed"]],
        Field(description="The IDE whose link is printed: `vscode`, `cursor`, `windsurf` or `zed`; absent: SSH only"),
    ] = None
    version: Annotated[
        Optional[str],
        Field(description="The IDE server to install on the host before you connect (needs `ide`): a VS Code or "
                          "Cursor commit, `version@commit` for Windsurf; downloaded by the host itself"),
    ] = None
    init: Annotated[List[str], Field(description="The shell commands run before the environment is ready")] = []
    inactivity_duration: Annotated[
        Optional[int],
        Field(description="Stop the run after this long without an SSH connection to it (`ssh NAME`, the IDE, an "
                          "attached `dstack apply` or `dstack attach`), e.g. `2h`; `off` (the default): never"),
    ] = None
    ports: Annotated[
        List[PortMapping],
        Field(description="Ports to forward: `8080`, `\"8080:80\"` (local:remote) or `\"*:8080\"` (any free local "
                          "port)"),
    ] = []
    repos: Repos = []
    files: Files = []
    single_branch: SingleBranch = None

    @field_validator("inactivity_duration", mode="before", json_schema_input_type=Optional[MaxDuration])
    @classmethod
    def _inactivity(cls, v: Any) -> Any:
        """As dstack: `off` is None (kept as None in the run's configuration)."""
        v = parse_off_duration(v)
        return None if v == "off" else v

    @field_validator("entrypoint")
    @classmethod
    def _no_entrypoint(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            raise ValueError("`entrypoint` is not supported for a dev-environment (it runs `init`, then waits)")
        return v

    @model_validator(mode="after")
    def _version_needs_ide(self) -> "DevEnvironmentConfiguration":
        if self.version and self.ide is None:
            raise ValueError("`version` requires `ide` to be set")
        if self.version and not IDE_VERSION.match(self.version):
            raise ValueError(f"Invalid IDE version: {self.version!r} (letters, digits and `._+-`, as the IDE's "
                             "`Help > About` shows it; Windsurf: `version@commit`)")
        if self.ide == "windsurf" and self.version and not WINDSURF_VERSION.match(self.version):
            raise ValueError(f"Invalid Windsurf version: {self.version!r} (expected `version@commit`, e.g. "
                             "`1.106.0@8951cd3ad688e789573d7f51750d67ae4a0bea7d`)")
        return self


AnyConfiguration = Annotated[
    Union[TaskConfiguration, DevEnvironmentConfiguration, FleetConfiguration, VolumeConfiguration],
    Field(discriminator="type"),
]
CONFIGURATION_TYPES = ("task", "dev-environment", "fleet", "volume")
