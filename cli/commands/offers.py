"""`dstack offers`: what a run's resources would buy, cheapest first. dstack's flags are taken; those of its profile
that do not change which offers match (`--max-duration`, the retry and idle flags) are checked and have no effect
here, as in dstack's listing."""

from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli import run_options as opt
from cli.offers_view import show_offers
from cli.output import stderr_console


def offers(
    file: opt.FileOption = None,
    gpu: opt.GpuOption = None,
    cpu: opt.CpuOption = None,
    memory: opt.MemoryOption = None,
    disk: opt.DiskOption = None,
    spot: opt.SpotOption = None,
    on_demand: opt.OnDemandOption = None,
    spot_auto: opt.SpotAutoOption = None,
    backend: opt.BackendOption = None,
    region: opt.RegionOption = None,
    instance_type: opt.InstanceTypeOption = None,
    max_price: opt.MaxPriceOption = None,
    spot_policy: opt.SpotPolicyOption = None,
    fleet: opt.FleetOption = None,
    reuse: opt.ReuseOption = False,
    max_duration: opt.MaxDurationOption = None,
    retry: opt.RetryOption = None,
    retry_duration: opt.RetryDurationOption = None,
    idle_duration: Annotated[Optional[str], typer.Option("--idle-duration", metavar="DURATION", help="Accepted as "
                                                         "dstack's: no effect on which offers match")] = None,
    dont_destroy: Annotated[bool, typer.Option("--dont-destroy", help="Accepted as dstack's: no effect on which "
                                               "offers match")] = False,
    profile: Annotated[Optional[str], typer.Option("--profile", metavar="NAME", help="Refused: there are no "
                                                   "profiles here (put the fields in the configuration)")] = None,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Accepted as dstack's: there are no profiles "
                                             "here")] = False,
    max_offers: Annotated[int, typer.Option("--max-offers", metavar="N", min=1, help="How many offers to show")] = 50,
    group_by: Annotated[
        Optional[List[str]], typer.Option("--group-by", metavar="KEYS", help="Group rows: gpu, optionally with "
                                          "backend, region, count (comma-separated or repeated)")
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Rebuild the AWS catalogue from the live APIs first (needs credentials)")
    ] = False,
    output: Annotated[Optional[str], typer.Option("--format", metavar="[plain|json]", help="Output format: plain "
                                                  "(a table, the default) or json (as --json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (as --format json)")] = False,
) -> None:
    """Show the offers that match the requirements (spot and on-demand unless told otherwise)."""
    from offers.grouping import parse_group_by

    if output not in (None, "plain", "json"):
        raise typer.BadParameter(f"{output!r} is not one of plain, json", param_hint="'--format'")
    as_json = as_json or output == "json"
    if profile is not None:
        raise typer.BadParameter("there are no profiles here (no server): give the fields in the configuration or "
                                 "as flags", param_hint="'--profile'")
    _check_profile_flags(max_duration, retry, retry_duration, idle_duration)
    keys = None
    if group_by is not None:
        try:
            keys = parse_group_by(",".join(group_by))
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'--group-by'") from None
    configuration = None
    if file:
        from configuration.loader import load_configuration  # pydantic models of every field: only when needed

        configuration = load_configuration(file)
    if configuration is not None and configuration.type in ("fleet", "volume"):
        raise typer.BadParameter(f"a {configuration.type} configuration has no resources to match", param_hint="'-f'")
    from provisioner.store.store import StateStore

    backend, region = opt.placement_flags(backend, region, fleet, reuse,
                                          lambda: [f["name"] for f in StateStore().list_fleets()])
    requirements = opt.build_requirements(
        configuration, default_spot_policy="auto", gpu=gpu, cpu=cpu, memory=memory, disk=disk,
        spot_policy=opt.spot_policy_flag(spot, on_demand, spot_auto, spot_policy), backends=backend, regions=region,
        instance_types=instance_type, max_price=max_price,
    )
    if refresh:
        from offers.aws_refresh import refresh_aws_catalog

        refresh_aws_catalog(regions=requirements.regions, log=stderr_console().print)
    from configuration.backends import load_config
    from provisioner.planning.search import search_run_offers

    # Every cloud's catalogue, configured or not, plus the hosts a run could use (SSH fleets, this machine).
    found = search_run_offers(requirements, load_config(), StateStore(), limit=None if keys else max_offers,
                              all_clouds=True)
    show_offers(requirements, found.search, found.catalogs, keys, as_json)


def _check_profile_flags(max_duration, retry, retry_duration, idle_duration) -> None:
    """The profile flags dstack's `offer` takes and that change no offer: refused when malformed, as `apply` would."""
    from configuration.fields import parse_duration

    if retry is False and retry_duration is not None:
        raise typer.BadParameter("--no-retry takes no duration", param_hint="'--retry-duration'")
    for flag, value in (("--max-duration", max_duration), ("--retry-duration", retry_duration),
                        ("--idle-duration", idle_duration)):
        if value is None or (flag != "--retry-duration" and value == "off"):
            continue
        try:
            parse_duration(value)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint=f"'{flag}'") from None
