"""`dstack apply [-f FILE] [OPTIONS] [--] ARGS...` (alias `dstack run`): plan, confirm, provision, run, tear down.

Every flag replaces the file's value of its field (`-e NAME=...` that one variable); nothing is merged."""

from __future__ import annotations

import gc
import os
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli import apply_flags as flags
from cli import run_options as opt
from cli.helpers import expire_idle_fleets
from cli.output import print_json, warn


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
    repo: flags.RepoOption = None,
    repo_branch: flags.RepoBranchOption = None,
    repo_hash: flags.RepoHashOption = None,
    idle_duration: flags.IdleDurationOption = None,
    dont_destroy: flags.DontDestroyOption = False,
    port: flags.PortOption = None,
    host: flags.HostOption = None,
    ssh_identity: flags.SshIdentityOption = None,
    force: flags.ForceOption = False,
    max_offers: Annotated[int, typer.Option("--max-offers", min=1, help="How many offers the plan shows")] = 3,
    name: Annotated[Optional[str], typer.Option("-n", "--name", help="The run name (overrides the file's)")] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="Return once the job is running")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; provision nothing")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Every row of the plan")] = False,
    as_json: opt.JsonOption = False,
    scheduled_start: Annotated[bool, typer.Option("--scheduled-start", hidden=True,
                                                  help="A start of a scheduled run: run it now")] = False,
) -> None:
    """Apply a configuration: a task runs on the cheapest offer that fits; a fleet registers your SSH hosts or
    provisions cloud instances."""
    from cli.config_input import STDIN, chosen_file, config_path, load_file, source_name
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
                     "--no-repo": no_repo, "-d/--detach": detach, "--scheduled-start": scheduled_start,
                     "-P/--repo": repo, "--repo-branch": repo_branch, "--repo-hash": repo_hash,
                     "--idle-duration": idle_duration, "--dont-destroy": dont_destroy, "-p/--port": port,
                     "--host": host, "--ssh-identity": ssh_identity, "--force": force}
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
    flags.refuse_unsupported(host, ssh_identity)
    if name is not None:
        configuration = configuration.model_copy(update={"name": _run_name(name)})
    configuration = opt.override_run_fields(configuration, env, max_duration, retry, retry_duration)
    configuration = flags.override_apply_fields(configuration, port, idle_duration, dont_destroy, reuse, repo,
                                                repo_branch, repo_hash, no_repo)
    run = resolve_run(configuration, source, args or [], os.environ, missing_env=warn if dry_run else None)
    from cli.apply_run import check_cron, check_name, confirm_submit, make_room, setup_failures
    from cli.helpers import run_session
    from provisioner.runs.planner import plan_run

    session = run_session()
    store = session.store
    # before anything is printed or written: what a run of this name, or this machine, cannot go on with
    named = check_name(store, run.configuration.name, source, force, yes, dry_run)
    check_cron(run.configuration.schedule, scheduled_start, dry_run)
    if not dry_run:
        expire_idle_fleets()  # an instance idle past its idle_duration is not offered: it is destroyed
    backend, region = opt.placement_flags(backend, region, fleet, reuse,
                                          lambda: [f["name"] for f in store.list_fleets()])
    requirements = opt.build_requirements(
        run.configuration, default_spot_policy="on-demand", gpu=gpu, cpu=cpu, memory=memory, disk=disk,
        spot_policy=opt.spot_policy_flag(spot, on_demand, spot_auto, spot_policy), backends=backend, regions=region,
        instance_types=instance_type, max_price=max_price,
    )
    plan = plan_run(run, file, requirements, store, session.config, max_offers, dry_run)
    if not dry_run:  # the hosts' kept connections check their keys while the plan is shown and the run set up
        from provisioner.host.access import announce_use

        announce_use(plan.first_hosts(), None if file == STDIN else str(config_path(file)))
    problems = setup_failures(plan, dry_run)
    if dry_run:
        _print_dry_run(source, plan, max_offers, as_json, named.notes, problems, config_path(file), not no_repo,
                       verbose)
        return
    if not as_json:
        from cli.output import stderr_console
        from cli.plan_view import print_plan
        from provisioner.runs.plan import plan_json

        document = plan_json(run, plan.offers[0], config=plan.config, search_notes=plan.search.notes)
        document["notes"] = [*document.get("notes", []), *named.notes]
        print_plan(source, plan.name, plan.requirements, plan.search, document, console=stderr_console(),
                   max_offers=max_offers, upload=_upload_summary(run.configuration, config_path(file), not no_repo),
                   verbose=verbose)
    schedule = run.configuration.schedule
    if schedule is not None and not scheduled_start:
        if not yes and not typer.confirm("Schedule the run?", default=True, err=True):
            raise typer.Exit(1)
        from cli.apply_targets import register_schedule

        register_schedule(plan.name, file, schedule.cron, as_json)
        return
    if not confirm_submit(named, yes, force):
        raise typer.Exit(1)
    make_room(session, named, plan.name)
    from cli.run_session import run_and_report

    # What the command has made so far (its modules, the configuration, the plan) lives until it ends: a full
    # collection that walks it all frees nothing, and one came in the middle of a 16-node start (its threads held up
    # ~40 ms). Frozen, later collections walk only what the run makes.
    gc.freeze()
    code = run_and_report(plan.config, store, plan.hosts, plan.name, run, plan.offers, config_path(file), detach,
                          as_json, upload_repo=not no_repo, yes=yes)
    raise typer.Exit(code)


def _upload_summary(configuration, path, include_repos: bool) -> str:
    """What the run uploads, for the plan: "repo X, N files, M MB", or why nothing is."""
    from provisioner.runs.planner import upload_summary

    return upload_summary(configuration, path, include_repos)


def _print_dry_run(source: str, plan, max_offers: int, as_json: bool, notes, problems, path, include_repos: bool,
                   verbose: bool) -> None:
    """The plan: the offer, and the cloud resources its stack would create, rendered offline (or why not); what a
    run of the name would do to an earlier one (`notes`) and what a run would fail on (`problems`, warned already)."""
    from configuration.errors import ConfigurationError
    from provisioner.runs.planner import check_uploads, dry_run_document, no_offers_message

    document, missing = dry_run_document(plan)
    if notes:
        document["notes"] = [*document.get("notes", []), *notes]
    if problems:
        document["problems"] = problems
    if as_json:
        print_json(document)
    else:
        from cli.plan_view import print_plan

        print_plan(source, plan.name, plan.requirements, plan.search, document, max_offers=max_offers,
                   upload=_upload_summary(plan.run.configuration, path, include_repos), verbose=verbose)
    if missing is not None:
        warn(f"the stack's resources are not shown: {missing}")
    if not plan.offers:
        raise ConfigurationError(no_offers_message(plan.requirements, plan.config, plan.search.notes))
    check_uploads(plan.run.configuration, path, include_repos)


def _run_name(name: str) -> str:
    from configuration.fields import NAME_RULE, RUN_NAME

    if not RUN_NAME.match(name):
        raise typer.BadParameter(f"{name!r}: {NAME_RULE}", param_hint="'-n/--name'")
    return name
