"""Flags shared by `dstack offers` and `dstack apply`, and how they override a configuration's values.

A flag replaces the file's value for that field; nothing is merged (`--gpu A100` replaces the whole `gpu` spec,
`-r us-east-1` the whole `regions` list).
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import typer
from pydantic import ValidationError
from typing_extensions import Annotated

from configuration.resources import CPUSpec, DiskSpec, GPUSpec, Memory, Range, ResourcesSpec
from offers.requirements import BACKENDS, SPOT_POLICIES, Requirements, spot_from_policy

GpuOption = Annotated[
    Optional[str], typer.Option("--gpu", metavar="SPEC", help="GPU spec, e.g. A100:2, 24GB..:1..4, nvidia:H100:8")
]
CpuOption = Annotated[
    Optional[str], typer.Option("--cpu", metavar="SPEC", help="CPU count or range, optionally with arch: 16.., arm:8")
]
MemoryOption = Annotated[
    Optional[str], typer.Option("--memory", metavar="RANGE", help="RAM size or range, e.g. 64GB..")
]
DiskOption = Annotated[Optional[str], typer.Option("--disk", metavar="RANGE", help="Disk size or range, e.g. 500GB")]
SpotOption = Annotated[Optional[bool], typer.Option("--spot", help="Spot instances only", show_default=False)]
OnDemandOption = Annotated[
    Optional[bool], typer.Option("--on-demand", help="On-demand instances only", show_default=False)
]
SpotAutoOption = Annotated[
    Optional[bool], typer.Option("--spot-auto", help="Spot or on-demand, cheapest first", show_default=False)
]
BackendOption = Annotated[
    Optional[List[str]],
    typer.Option("-b", "--backend", metavar="NAME", help="Backends to consider (repeatable): aws, gcp, ssh, local"),
]
RegionOption = Annotated[
    Optional[List[str]], typer.Option("-r", "--region", metavar="NAME", help="Regions to consider (repeatable)")
]
InstanceTypeOption = Annotated[
    Optional[List[str]],
    typer.Option("--instance-type", metavar="NAME", help="Instance types to consider (repeatable)"),
]


def parse_max_price(text: str) -> float:
    """A positive, finite number: float() alone would take `nan`, `inf` and `1e400` (inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{text!r} is not a price: give a positive number of dollars per hour, e.g. 2.5")
    return value


MaxPriceOption = Annotated[
    Optional[float],
    typer.Option("--max-price", parser=parse_max_price, metavar="PRICE", help="Maximum price per hour, in dollars"),
]
FileOption = Annotated[Optional[str], typer.Option("-f", "--file", metavar="FILE", help="A *.dstack.yml configuration")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
SpotPolicyOption = Annotated[
    Optional[str], typer.Option("--spot-policy", metavar="POLICY", help="One of spot, on-demand, auto")
]
EnvOption = Annotated[
    Optional[List[str]],
    typer.Option("-e", "--env", metavar="NAME[=VALUE]",
                 help="An environment variable (repeatable); a bare NAME takes your environment's value"),
]
MaxDurationOption = Annotated[
    Optional[str], typer.Option("--max-duration", metavar="DURATION", help="Stop the run after this time (2h, 30m, "
                                "1d, seconds) or `off`")
]
RetryOption = Annotated[
    Optional[bool], typer.Option("--retry/--no-retry", help="Retry on no-capacity, interruption and error, or never",
                                 show_default=False)
]
RetryDurationOption = Annotated[
    Optional[str], typer.Option("--retry-duration", metavar="DURATION", help="How long to keep retrying (implies "
                                "--retry)")
]
FleetOption = Annotated[
    Optional[List[str]], typer.Option("--fleet", metavar="NAME", help="Consider only this SSH fleet's hosts "
                                      "(repeatable)")
]
ReuseOption = Annotated[
    bool, typer.Option("-R", "--reuse", help="Use a host that exists already (an SSH fleet's, this machine); "
                       "provision nothing")
]

def _flag(name: str, model: Any, value: Optional[str]) -> Any:
    """A resource flag's value as its model parses it. A refusal names the value, and the part of it that is wrong
    where the model says (`'1...3': count.max: Input should be a valid integer`), as a file's errors name the field."""
    if value is None:
        return None
    try:
        return model.model_validate(value) if hasattr(model, "model_validate") else model(value)
    except (ValidationError, ValueError) as e:
        if isinstance(e, ValidationError):
            error = e.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            detail = (f"{where}: " if where else "") + error["msg"].removeprefix("Value error, ")
        else:
            detail = str(e)
        named = detail if repr(value) in detail else f"{value!r}: {detail}"
        raise typer.BadParameter(named, param_hint=f"'{name}'") from None


def override_resources(
    resources: ResourcesSpec, gpu: Optional[str], cpu: Optional[str], memory: Optional[str], disk: Optional[str]
) -> ResourcesSpec:
    update = {
        "gpu": _flag("--gpu", GPUSpec, gpu),
        "cpu": _flag("--cpu", CPUSpec, cpu),
        "memory": _flag("--memory", Range[Memory], memory),
        "disk": _flag("--disk", DiskSpec, disk),
    }
    return resources.model_copy(update={k: v for k, v in update.items() if v is not None})


EXISTING_HOST_BACKENDS = ("ssh", "local")  # hosts that are there already: `--reuse` takes only these


def spot_policy_flag(spot: Optional[bool], on_demand: Optional[bool], spot_auto: Optional[bool],
                     spot_policy: Optional[str] = None) -> Optional[str]:
    if spot_policy is not None and spot_policy not in SPOT_POLICIES:
        raise typer.BadParameter(f"{spot_policy!r} is not one of {', '.join(SPOT_POLICIES)}",
                                 param_hint="'--spot-policy'")
    chosen = [name for name, flag in (("spot", spot), ("on-demand", on_demand), ("auto", spot_auto)) if flag]
    chosen += [spot_policy] if spot_policy is not None else []
    if len(chosen) > 1:
        raise typer.BadParameter("give only one of them",
                                 param_hint="'--spot' / '--on-demand' / '--spot-auto' / '--spot-policy'")
    return chosen[0] if chosen else None


def override_run_fields(configuration: Any, env: Optional[List[str]] = None, max_duration: Optional[str] = None,
                        retry: Optional[bool] = None, retry_duration: Optional[str] = None) -> Any:
    """The configuration with `-e`, `--max-duration` and the retry flags in place of the file's values. `-e NAME`
    replaces that one variable; the file's other variables stay."""
    from configuration.fields import parse_env
    from configuration.models import ProfileFields

    update: dict = {}
    if env:
        try:
            update["env"] = {**configuration.env, **parse_env(list(env))}
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'-e/--env'") from None
    if max_duration is not None:
        update["max_duration"] = _flag("--max-duration", _field(ProfileFields, "max_duration"), max_duration)
    if retry is False:
        if retry_duration is not None:
            raise typer.BadParameter("--no-retry takes no duration", param_hint="'--retry-duration'")
        update["retry"] = None
    elif retry or retry_duration is not None:
        policy = {"duration": retry_duration} if retry_duration is not None else {}
        if configuration.retry is not None and not retry:  # only the duration given: the file's events stay
            policy["on_events"] = configuration.retry.on_events
        update["retry"] = _flag("--retry-duration", _field(ProfileFields, "retry"), policy)
    return configuration.model_copy(update=update) if update else configuration


def _field(model: Any, name: str) -> Any:
    """Validates a flag's text as the file's value of `model.name` is validated."""
    return lambda value: getattr(model.model_validate({name: value}), name)


def placement_flags(backends: Optional[List[str]], regions: Optional[List[str]], fleets: Optional[List[str]],
                    reuse: bool, fleet_names: Any) -> tuple:
    """`--fleet` and `--reuse` as backends and regions: an SSH fleet's offers carry the fleet's name as their
    region. `fleet_names` is called only when `--fleet` is given."""
    if fleets:
        if regions:
            raise typer.BadParameter("a fleet is its own region: give --fleet or -r", param_hint="'--fleet'")
        if backends and "ssh" not in backends:
            raise typer.BadParameter("fleets are SSH hosts: -b must allow ssh", param_hint="'--fleet'")
        known = set(fleet_names())
        for name in fleets:
            if name not in known:
                raise typer.BadParameter(f"no fleet named {name} (see `dstack fleet list`)", param_hint="'--fleet'")
        return ["ssh"], list(fleets)
    if reuse:
        chosen = [b for b in (backends or EXISTING_HOST_BACKENDS) if b in EXISTING_HOST_BACKENDS]
        if not chosen:
            raise typer.BadParameter("--reuse takes hosts that exist already (ssh, local), and -b allows none",
                                     param_hint="'-R/--reuse'")
        return chosen, regions
    return backends, regions


def check_backends(backends: Optional[List[str]]) -> Optional[List[str]]:
    for backend in backends or ():
        if backend not in BACKENDS:
            raise typer.BadParameter(f"{backend!r} is not a backend (allowed: {', '.join(BACKENDS)})",
                                     param_hint="'-b/--backend'")
    return backends


def build_requirements(
    configuration: Any,
    *,
    default_spot_policy: str,
    gpu: Optional[str] = None,
    cpu: Optional[str] = None,
    memory: Optional[str] = None,
    disk: Optional[str] = None,
    spot_policy: Optional[str] = None,
    backends: Optional[List[str]] = None,
    regions: Optional[List[str]] = None,
    instance_types: Optional[List[str]] = None,
    max_price: Optional[float] = None,
) -> Requirements:
    """The requirements of a run: the configuration's (when given), each overridden by its flag. A task with
    `groups` takes each group's own resources: a resource flag there would change nothing, so it is refused."""
    resources = configuration.resources if configuration is not None else ResourcesSpec()
    given = [flag for flag, value in (("--gpu", gpu), ("--cpu", cpu), ("--memory", memory), ("--disk", disk)) if value]
    if given and getattr(configuration, "groups", None):
        raise typer.BadParameter("the task has `groups`, each with its own `resources`: set them per group in the "
                                 "file", param_hint=f"'{given[0]}'")

    def pick(flag: Any, field: str) -> Any:
        if flag:
            return flag
        return getattr(configuration, field, None) if configuration is not None else None

    policy = pick(spot_policy, "spot_policy") or default_spot_policy
    chosen_backends = pick(check_backends(backends), "backends")
    chosen_regions = pick(regions, "regions")
    chosen_types = pick(instance_types, "instance_types")
    return Requirements(
        resources=override_resources(resources, gpu, cpu, memory, disk),
        spot=spot_from_policy(policy),
        max_price=pick(max_price, "max_price"),
        backends=tuple(chosen_backends) if chosen_backends else None,
        regions=tuple(chosen_regions) if chosen_regions else None,
        instance_types=tuple(chosen_types) if chosen_types else None,
        reservation=getattr(configuration, "reservation", None) if configuration is not None else None,
    )
