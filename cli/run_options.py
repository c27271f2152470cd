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
from offers.requirements import Requirements, spot_from_policy

GpuOption = Annotated[Optional[str], typer.Option("--gpu", help="GPU spec, e.g. A100:2, 24GB..:1..4, nvidia:H100:8")]
CpuOption = Annotated[Optional[str], typer.Option("--cpu", help="CPU count or range, optionally with arch: 16.., arm:8")]
MemoryOption = Annotated[Optional[str], typer.Option("--memory", help="RAM size or range, e.g. 64GB..")]
DiskOption = Annotated[Optional[str], typer.Option("--disk", help="Disk size or range, e.g. 500GB")]
SpotOption = Annotated[Optional[bool], typer.Option("--spot", help="Spot instances only", show_default=False)]
OnDemandOption = Annotated[Optional[bool], typer.Option("--on-demand", help="On-demand instances only", show_default=False)]
SpotAutoOption = Annotated[
    Optional[bool], typer.Option("--spot-auto", help="Spot or on-demand, cheapest first", show_default=False)
]
BackendOption = Annotated[
    Optional[List[str]], typer.Option("-b", "--backend", help="Backends to consider (repeatable): aws, gcp, ssh, local")
]
RegionOption = Annotated[Optional[List[str]], typer.Option("-r", "--region", help="Regions to consider (repeatable)")]
InstanceTypeOption = Annotated[
    Optional[List[str]], typer.Option("--instance-type", help="Instance types to consider (repeatable)")
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
    typer.Option("--max-price", parser=parse_max_price, metavar="FLOAT", help="Maximum price per hour, in dollars"),
]
FileOption = Annotated[Optional[str], typer.Option("-f", "--file", help="A *.dstack.yml configuration")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]

BACKENDS = ("aws", "gcp", "ssh", "local")


def _flag(name: str, model: Any, value: Optional[str]) -> Any:
    if value is None:
        return None
    try:
        return model.model_validate(value) if hasattr(model, "model_validate") else model(value)
    except (ValidationError, ValueError) as e:
        detail = e.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(e, ValidationError) else str(e)
        raise typer.BadParameter(detail, param_hint=f"'{name}'") from None


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


def spot_policy_flag(spot: Optional[bool], on_demand: Optional[bool], spot_auto: Optional[bool]) -> Optional[str]:
    chosen = [name for name, flag in (("spot", spot), ("on-demand", on_demand), ("auto", spot_auto)) if flag]
    if len(chosen) > 1:
        raise typer.BadParameter("give only one of them", param_hint="'--spot' / '--on-demand' / '--spot-auto'")
    return chosen[0] if chosen else None


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
    """The requirements of a run: the configuration's (when given), each overridden by its flag."""
    resources = configuration.resources if configuration is not None else ResourcesSpec()

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
    )
