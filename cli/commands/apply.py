"""`dstack apply [-f FILE] [OPTIONS] [--] ARGS...` (alias `dstack run`): plan, confirm, provision, run, tear down.

Every flag replaces the file's value of its field (`-e NAME=...` that one variable); nothing is merged."""

from __future__ import annotations

import os
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli import run_options as opt
from cli.helpers import expire_idle_fleets
from cli.output import print_json


def apply(
    file: Annotated[
        Optional[str],
        typer.Option("-f", "--file", help="The *.dstack.yml configuration to apply; - reads standard input "
                     "[default: .dstack.yml]"),
    ] = None,
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
    spot_policy: opt.SpotPolicyOption = None,
    backend: opt.BackendOption = None,
    region: opt.RegionOption = None,
    instance_type: opt.InstanceTypeOption = None,
    max_price: opt.MaxPriceOption = None,
    env: opt.EnvOption = None,
    max_duration: opt.MaxDurationOption = None,
    retry: opt.RetryOption = None,
    retry_duration: opt.RetryDurationOption = None,
    fleet: opt.FleetOption = None,
    reuse: opt.ReuseOption = False,
    no_repo: Annotated[bool, typer.Option("--no-repo", help="Upload no repo: the job starts in an empty folder")] = False,
    max_offers: Annotated[int, typer.Option("--max-offers", min=1, help="How many offers the plan shows")] = 3,
    name: Annotated[Optional[str], typer.Option("-n", "--name", help="The run name (overrides the file's)")] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="Return once the job is running")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; provision nothing")] = False,
    as_json: opt.JsonOption = False,
    scheduled_start: Annotated[bool, typer.Option("--scheduled-start", hidden=True,
                                                  help="A start of a scheduled run: run it now")] = False,
) -> None:
    """Apply a configuration: a task runs on the cheapest offer that fits; a fleet registers your SSH hosts or
    provisions cloud instances."""
    from cli.config_input import chosen_file, config_path, load_file, source_name
    from configuration.interpolation import resolve_run

    file = chosen_file(file)
    configuration = load_file(file)
    source = source_name(file)
    if configuration.type in ("fleet", "volume"):
        run_flags = {"ARGS": args, "--gpu": gpu, "--cpu": cpu, "--memory": memory, "--disk": disk, "--spot": spot,
                     "--on-demand": on_demand, "--spot-auto": spot_auto, "--spot-policy": spot_policy,
                     "-b/--backend": backend, "-r/--region": region, "--instance-type": instance_type,
                     "--max-price": max_price, "-e/--env": env, "--max-duration": max_duration, "--retry": retry,
                     "--retry-duration": retry_duration, "--fleet": fleet, "-R/--reuse": reuse,
                     "--no-repo": no_repo, "-d/--detach": detach, "--scheduled-start": scheduled_start}
        if configuration.type == "fleet":
            run_flags["-n/--name"] = name  # a volume takes its name from -n; a fleet's is its file's
        given = [flag for flag, value in run_flags.items() if value not in (None, False, [])]
        if given:
            from configuration.errors import ConfigurationError

            raise ConfigurationError(f"{source}: {', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                                     f"runs, not to a {configuration.type}: set its fields in the file")
    if configuration.type == "fleet":
        from cli.apply_targets import apply_fleet

        apply_fleet(configuration, source, yes, dry_run, as_json, max_offers)
        return
    if configuration.type == "volume":
        from cli.apply_targets import apply_volume

        apply_volume(configuration, source, None if name is None else _run_name(name), yes, dry_run)
        return
    if name is not None:
        configuration = configuration.model_copy(update={"name": _run_name(name)})
    configuration = opt.override_run_fields(configuration, env, max_duration, retry, retry_duration)
    run = resolve_run(configuration, source, args or [], os.environ)
    from configuration.backends import load_config
    from configuration.errors import ConfigurationError
    from provisioner.runs.planner import plan_run
    from provisioner.store.store import StateStore

    store = StateStore()
    if not dry_run:
        expire_idle_fleets()  # an instance idle past its idle_duration is not offered: it is destroyed
    backend, region = opt.placement_flags(backend, region, fleet, reuse,
                                          lambda: [f["name"] for f in store.list_fleets()])
    requirements = opt.build_requirements(
        run.configuration, default_spot_policy="on-demand", gpu=gpu, cpu=cpu, memory=memory, disk=disk,
        spot_policy=opt.spot_policy_flag(spot, on_demand, spot_auto, spot_policy), backends=backend, regions=region,
        instance_types=instance_type, max_price=max_price,
    )
    plan = plan_run(run, file, requirements, store, load_config(), max_offers, dry_run)
    if dry_run:
        _print_dry_run(source, plan, max_offers, as_json)
        if not plan.offers:
            raise ConfigurationError(f"no offers match: {plan.requirements.describe()} (see `dstack offers`)"
                                     + "".join(f"; {note}" for note in plan.search.notes))
        from provisioner.runs.planner import check_uploads

        check_uploads(run.configuration, config_path(file), not no_repo)
        return
    if not as_json:
        from cli.output import stderr_console
        from cli.plan_view import print_plan
        from provisioner.runs.plan import plan_json

        print_plan(source, plan.name, plan.requirements, plan.search,
                   plan_json(run, plan.offers[0], config=plan.config, search_notes=plan.search.notes),
                   console=stderr_console(), max_offers=max_offers)
    schedule = run.configuration.schedule
    if schedule is not None and not scheduled_start:
        if not yes and not typer.confirm("Schedule the run?", default=True, err=True):
            raise typer.Exit(1)
        from cli.apply_targets import register_schedule

        register_schedule(plan.name, file, schedule.cron, as_json)
        return
    if not yes and not typer.confirm("Submit the run?", default=True, err=True):
        raise typer.Exit(1)
    from cli.run_session import run_and_report

    code = run_and_report(plan.config, store, plan.hosts, plan.name, run, plan.offers, config_path(file), detach,
                          as_json, upload_repo=not no_repo)
    raise typer.Exit(code)


def _print_dry_run(source: str, plan, max_offers: int, as_json: bool) -> None:
    """The plan: the offer, and the cloud resources its stack would create, rendered offline (or why not)."""
    from provisioner.runs.planner import dry_run_document

    document, missing = dry_run_document(plan)
    if as_json:
        print_json(document)
    else:
        from cli.plan_view import print_plan

        print_plan(source, plan.name, plan.requirements, plan.search, document, max_offers=max_offers)
    if missing is not None:
        from cli.output import warn

        warn(f"the stack's resources are not shown: {missing}")


def _run_name(name: str) -> str:
    from configuration.fields import NAME_RULE, RUN_NAME

    if not RUN_NAME.match(name):
        raise typer.BadParameter(NAME_RULE,
                                 param_hint="'-n/--name'")
    return name
