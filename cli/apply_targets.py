"""What `dstack apply` does with a file that is not a task to run now: register SSH hosts or provision a cloud fleet,
create or register a volume, register a scheduled task."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from cli.helpers import utc
from cli.output import print_json, stderr_console


def apply_fleet(configuration, source: str, yes: bool, dry_run: bool = False, as_json: bool = False,
                max_offers: int = 3) -> None:
    if configuration.is_cloud:
        apply_cloud_fleet(configuration, source, yes, dry_run, as_json, max_offers)
        return
    if dry_run:
        print_json({"configuration": configuration.model_dump(mode="json")})
        return
    from provisioner.backends.ssh_fleets import apply_fleet as probe_and_record
    from provisioner.store.store import StateStore

    console = stderr_console()
    hosts = probe_and_record(configuration, source, StateStore(), confirm=_key_confirmation(source, yes),
                             log=console.print)
    console.print(f"Fleet {configuration.name}: {len(hosts)} host{'s' if len(hosts) != 1 else ''} ready")


def apply_cloud_fleet(configuration, source: str, yes: bool, dry_run: bool, as_json: bool, max_offers: int) -> None:
    """Plans the fleet on the cheapest offer; with `--dry-run`, prints the plan (JSON with `--json`) and stops."""
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.backends.cloud_fleets import (
        check_cloud_fleet,
        create_cloud_fleet,
        fleet_offers,
        fleet_plan,
        fleet_requirements,
    )
    from provisioner.store.store import StateStore

    check_cloud_fleet(configuration, source)
    config = load_config()
    offers = fleet_offers(configuration, fleet_requirements(configuration, config, all_clouds=dry_run), source)
    plan = fleet_plan(configuration, offers, config, max_offers)
    console = stderr_console()
    if as_json and dry_run:
        print_json(plan)
        return
    offer = offers[0]
    nodes = plan["nodes_range"]
    size = f"{nodes['min']}..{nodes['max'] if nodes['max'] is not None else ''}" if plan["growth"] else plan["nodes"]
    console.print(f"Fleet {configuration.name}: {size} x {offer.backend} {offer.region} "
                  f"{offer.instance.name} ({offer.describe_resources()}"
                  f"{', spot' if offer.spot else ''}) at ${offer.total_price:.4f}/hour each "
                  f"(${plan['price']:.4f}/hour in all, idle or not), placement {plan['placement']}; "
                  f"{len(plan['resources'])} cloud resources"
                  + (" (with the instance the first run adds)" if not plan["nodes"] else ""), markup=False)
    if plan["growth"]:
        console.print(f"  nodes {size}: {plan['growth']}", markup=False)
    console.print(f"  idle: {plan['idle_policy']}" + ("; `idle_duration: off` keeps it, or set another"
                                                     if configuration.idle_duration is None else ""), markup=False)
    if dry_run:
        return
    if not yes and not typer.confirm("Create the fleet?", default=True, err=True):
        raise typer.Exit(1)
    reporter = make_reporter(quiet=as_json)
    instances = create_cloud_fleet(configuration, source, offers, config, StateStore(), reporter.step,
                                   reporter.info)
    if as_json:
        import time

        print_json({"fleet": {"name": configuration.name, "instances": [i.to_json(time.time()) for i in instances]}})
        return
    console.print(f"Fleet {configuration.name}: {len(instances)} instance{'s' if len(instances) != 1 else ''} idle, "
                  "ready for runs")


def _key_confirmation(source: str, yes: bool):
    """Shows the fingerprints of host keys not recorded yet; `-y` trusts them, a terminal asks, anything else
    refuses: a key nobody looked at is never trusted."""

    def confirm(offered) -> bool:
        import sys

        from configuration.errors import ConfigurationError

        console = stderr_console()
        console.print("Host keys not recorded yet (compare with `ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub` "
                      "on each host):", markup=False)
        for host, key in offered:
            console.print(f"  {host.description}  {key}", markup=False)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise ConfigurationError(f"{source}: the host keys above are not recorded and there is no terminal to "
                                     "confirm them: check the fingerprints, then run again with -y to trust them")
        return typer.confirm("Trust these host keys?", default=False, err=True)

    return confirm


def apply_volume(configuration, source: str, name: Optional[str], yes: bool, dry_run: bool) -> None:
    """Creates the volume in its own stack (or registers an existing one); `--dry-run` prints the plan as JSON."""
    from configuration.backends import load_config
    from provisioner.backends.volume_stacks import create_volume, volume_plan
    from provisioner.runs.names import generate_run_name

    name = name or configuration.name or generate_run_name()
    config = load_config()
    if dry_run:
        print_json(volume_plan(name, configuration, config, source))
        return
    from cli.run_session import make_reporter
    from provisioner.store.store import StateStore

    what = f"register {configuration.backend} volume {configuration.volume_id} as {name}" if configuration.is_external \
        else f"create a {int(configuration.size)}GB {configuration.backend} volume {name} in {configuration.region}"
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=True, err=True):
        raise typer.Exit(1)
    record = create_volume(StateStore(), config, name, configuration, source, make_reporter().step)
    stderr_console().print(f"Volume {name} is active: {record.backend} {record.zone}, {record.volume_id}",
                           markup=False)


def register_schedule(run_name: str, file: str, crons, as_json: bool) -> None:
    """`dstack apply` of a scheduled task: register it (each start reads the file again, with its secrets)."""
    from cli.config_input import STDIN
    from configuration.errors import ConfigurationError
    from provisioner.runs.schedules import register

    if file == STDIN:
        raise ConfigurationError("a task with `schedule` needs a file (-f FILE): each start reads it again")
    entry = register(run_name, str(Path(file).resolve()), crons, time.time())
    if as_json:
        print_json({"schedule": entry.__dict__})
        return
    stderr_console().print(f"Scheduled {run_name} ({', '.join(entry.crons)}): next start {utc(entry.next_at)}; "
                           f"each start is a run named {run_name}-N. `dstack stop {run_name}` removes the schedule.",
                           highlight=False)
