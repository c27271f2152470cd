"""`dstack apply -f FILE [OPTIONS] [--] ARGS...` (alias `dstack run`): plan, confirm, provision, run, tear down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli import run_options as opt
from cli.output import print_json


def apply(
    file: Annotated[str, typer.Option("-f", "--file", help="The *.dstack.yml configuration to apply")],
    args: Annotated[
        Optional[List[str]],
        typer.Argument(help="Run arguments for ${{ run.args }}; after -- they may start with -", show_default=False),
    ] = None,
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
    name: Annotated[Optional[str], typer.Option("-n", "--name", help="The run name (overrides the file's)")] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="Return once the job is running")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; provision nothing")] = False,
    as_json: opt.JsonOption = False,
) -> None:
    """Apply a configuration: a task runs on the cheapest offer that fits; a fleet registers your SSH hosts."""
    from configuration.interpolation import resolve_run
    from configuration.loader import load_configuration

    configuration = load_configuration(file)
    if configuration.type == "fleet":
        if dry_run:
            print_json({"configuration": configuration.model_dump(mode="json")})
            return
        from cli.fleet_command import apply_fleet

        apply_fleet(configuration, file, yes)
        return
    if name is not None:
        configuration = configuration.model_copy(update={"name": _run_name(name)})
    run = resolve_run(configuration, file, args or [], os.environ)
    requirements = opt.build_requirements(
        run.configuration, default_spot_policy="on-demand", gpu=gpu, cpu=cpu, memory=memory, disk=disk,
        spot_policy=opt.spot_policy_flag(spot, on_demand, spot_auto), backends=backend, regions=region,
        instance_types=instance_type, max_price=max_price,
    )
    from configuration.backends import load_config
    from configuration.errors import ConfigurationError
    from provisioner.names import generate_run_name
    from provisioner.placement import search_run_offers
    from provisioner.state import StateStore

    config = load_config()
    store = StateStore()
    run_name = run.configuration.name or generate_run_name()
    # A dry run plans over every cloud, configured or not: it is how one sees what a run would cost.
    found = search_run_offers(requirements, config, store, limit=20, all_clouds=dry_run)
    search, hosts = found.search, found.hosts
    from provisioner.field_support import check_fields

    search.offers = check_fields(run.configuration, search.offers, file)  # fields no backend would act upon
    if not search.offers and not dry_run:
        hint = "" if config.cloud_backends else "; no cloud is configured, so only this machine and SSH fleets count"
        raise ConfigurationError(f"no offers match: {requirements.describe()}{hint} (see `dstack offers`)")
    if dry_run:
        from provisioner.cloud_plan import dry_run_resources
        from provisioner.plan import plan_json

        offer = search.offers[0] if search.offers else None
        if offer is None:
            import sys

            sys.stderr.write(f"warning: no offers match: {requirements.describe()}\n")
        document = plan_json(run, offer, dry_run_resources(run_name, run.configuration, offer, config))
        if as_json:
            print_json(document)
        else:
            from cli.plan_view import print_plan

            print_plan(file, run_name, requirements, search, document)
        return
    if not as_json:
        from cli.output import stderr_console
        from cli.plan_view import print_plan

        from provisioner.field_support import plan_notes

        print_plan(file, run_name, requirements, search, {"notes": plan_notes(run.configuration)},
                   console=stderr_console())
    if not yes and not typer.confirm("Submit the run?", default=True, err=True):
        raise typer.Exit(1)
    from cli.run_session import run_and_report

    code = run_and_report(config, store, hosts, run_name, run, search.offers, Path(file), detach, as_json)
    raise typer.Exit(code)


def _run_name(name: str) -> str:
    from configuration.fields import RUN_NAME

    if not RUN_NAME.match(name):
        raise typer.BadParameter("2 to 41 lowercase letters, digits and hyphens, starting with a letter",
                                 param_hint="'-n/--name'")
    return name
