"""`dstack apply [-f FILE] [OPTIONS] [--] ARGS...` (alias `dstack run`): plan, confirm, provision, run, tear down.

Every flag replaces the file's value of its field (`-e NAME=...` that one variable); nothing is merged."""

from __future__ import annotations

import os
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli import run_options as opt
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
    from cli.config_input import chosen_file, load_file, config_path, source_name
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
        from cli.fleet_command import apply_fleet

        apply_fleet(configuration, source, yes, dry_run, as_json, max_offers)
        return
    if configuration.type == "volume":
        from cli.volume_command import apply_volume

        apply_volume(configuration, source, None if name is None else _run_name(name), yes, dry_run)
        return
    if name is not None:
        configuration = configuration.model_copy(update={"name": _run_name(name)})
    configuration = opt.override_run_fields(configuration, env, max_duration, retry, retry_duration)
    run = resolve_run(configuration, source, args or [], os.environ)
    from configuration.backends import load_config
    from configuration.errors import ConfigurationError
    from provisioner.names import generate_run_name
    from provisioner.placement import search_run_offers
    from provisioner.runner import MAX_OFFERS_TRIED
    from provisioner.state import StateStore

    from provisioner.volumes import narrow_requirements, place_offers

    store = StateStore()
    if not dry_run:
        from cli.fleet_command import expire_idle_fleets

        expire_idle_fleets()  # an instance idle past its idle_duration is not offered: it is destroyed
    backend, region = opt.placement_flags(backend, region, fleet, reuse,
                                          lambda: [f["name"] for f in store.list_fleets()])
    requirements = opt.build_requirements(
        run.configuration, default_spot_policy="on-demand", gpu=gpu, cpu=cpu, memory=memory, disk=disk,
        spot_policy=opt.spot_policy_flag(spot, on_demand, spot_auto, spot_policy), backends=backend, regions=region,
        instance_types=instance_type, max_price=max_price,
    )
    requirements = narrow_requirements(store, run.configuration, requirements, file)  # where its volumes are
    config = load_config()
    run_name = run.configuration.name or generate_run_name()
    # A dry run plans over every cloud, configured or not: it is how one sees what a run would cost.
    found = search_run_offers(requirements, config, store, limit=max(max_offers, MAX_OFFERS_TRIED),
                              all_clouds=dry_run)
    search, hosts = found.search, found.hosts
    from provisioner.field_support import check_fields
    from provisioner.instances import plan_offers

    # idle fleet instances first (`fleets`, `creation_policy`), then fields no backend would act upon
    search.offers = check_fields(run.configuration, plan_offers(run.configuration, search.offers, store, requirements,
                                                                file), file)
    search.offers = place_offers(store, run.configuration, search.offers, file)
    if not search.offers and not dry_run:
        hint = "" if config.cloud_backends else "; no cloud is configured, so only this machine and SSH fleets count"
        raise ConfigurationError(f"no offers match: {requirements.describe()}{hint} (see `dstack offers`)")
    if dry_run:
        _print_dry_run(source, run_name, run, requirements, search, config, max_offers, as_json)
        if not search.offers:
            raise ConfigurationError(f"no offers match: {requirements.describe()} (see `dstack offers`)")
        _check_uploads(run.configuration, file, not no_repo)
        return
    if not as_json:
        from cli.output import stderr_console
        from cli.plan_view import print_plan
        from provisioner.plan import plan_json

        print_plan(source, run_name, requirements, search, plan_json(run, search.offers[0]),
                   console=stderr_console(), max_offers=max_offers)
    schedule = run.configuration.schedule
    if schedule is not None and not scheduled_start:
        if not yes and not typer.confirm("Schedule the run?", default=True, err=True):
            raise typer.Exit(1)
        from cli.schedule_command import register_schedule

        register_schedule(run_name, file, schedule.cron, as_json)
        return
    if not yes and not typer.confirm("Submit the run?", default=True, err=True):
        raise typer.Exit(1)
    from cli.run_session import run_and_report

    code = run_and_report(config, store, hosts, run_name, run, search.offers, config_path(file), detach, as_json,
                          upload_repo=not no_repo)
    raise typer.Exit(code)


def _check_uploads(configuration, file: str, include_repos: bool) -> None:
    """What `apply` would upload, listed and size-checked as the run does before provisioning: a bad `repos` or
    `files` entry, or an upload over the limit, fails the dry run too."""
    from cli.config_input import config_path
    from provisioner.repo_archive import check_size, plan_uploads

    path = config_path(file)
    check_size(plan_uploads(configuration, path.parent, str(path), include_repos=include_repos))


def _print_dry_run(source: str, run_name: str, run, requirements, search, config, max_offers: int,
                   as_json: bool) -> None:
    """The plan: the offer, and the cloud resources its stack would create, rendered offline. Without the cloud's
    extra installed, the plan still shows the offer and says what rendering the stack needs."""
    from provisioner.cloud_plan import dry_run_resources
    from provisioner.instances import InstanceOffer, stack_configuration
    from provisioner.plan import plan_json
    from stacks.extras import MissingExtra

    offer = search.offers[0] if search.offers else None
    try:  # an idle fleet instance's run creates no cloud resources
        resources = [] if isinstance(offer, InstanceOffer) else dry_run_resources(
            run_name, stack_configuration(run.configuration), offer, config)
        missing = None
    except MissingExtra as e:
        resources, missing = [], e
    document = plan_json(run, offer, resources)
    if missing is not None:
        document["stack"] = {"rendered": False, "reason": str(missing)}
    if as_json:
        print_json(document)
    else:
        from cli.plan_view import print_plan

        print_plan(source, run_name, requirements, search, document, max_offers=max_offers)
    if missing is not None:
        from cli.output import warn

        warn(f"the stack's resources are not shown: {missing}")


def _run_name(name: str) -> str:
    from configuration.fields import RUN_NAME

    if not RUN_NAME.match(name):
        raise typer.BadParameter("2 to 41 lowercase letters, digits and hyphens, starting with a letter",
                                 param_hint="'-n/--name'")
    return name
