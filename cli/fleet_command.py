"""`dstack apply -f fleet.dstack.yml`, `dstack fleet`, `dstack delete`: SSH fleets of hosts the user owns, and cloud
fleets whose instances runs reuse (provisioner.fleets)."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.output import TYPER_SETTINGS, print_json, stderr_console, stdout_console


def apply_fleet(configuration, source: str, yes: bool, dry_run: bool = False, as_json: bool = False,
                max_offers: int = 3) -> None:
    if configuration.is_cloud:
        apply_cloud_fleet(configuration, source, yes, dry_run, as_json, max_offers)
        return
    if dry_run:
        print_json({"configuration": configuration.model_dump(mode="json")})
        return
    from provisioner.hosts import apply_fleet as probe_and_record
    from provisioner.state import StateStore

    console = stderr_console()
    hosts = probe_and_record(configuration, source, StateStore(), confirm=_key_confirmation(source, yes),
                             log=console.print)
    console.print(f"Fleet {configuration.name}: {len(hosts)} host{'s' if len(hosts) != 1 else ''} ready")


def apply_cloud_fleet(configuration, source: str, yes: bool, dry_run: bool, as_json: bool, max_offers: int) -> None:
    """Plans the fleet on the cheapest offer; with `--dry-run`, prints the plan (JSON with `--json`) and stops."""
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.fleets import check_cloud_fleet, create_cloud_fleet, fleet_offers, fleet_plan, fleet_requirements
    from provisioner.state import StateStore

    check_cloud_fleet(configuration, source)
    config = load_config()
    offers = fleet_offers(configuration, fleet_requirements(configuration, config, all_clouds=dry_run), source)
    plan = fleet_plan(configuration, offers, config, max_offers)
    console = stderr_console()
    if as_json and dry_run:
        print_json(plan)
        return
    offer = offers[0]
    console.print(f"Fleet {configuration.name}: {plan['nodes']} x {offer.backend} {offer.region} "
                  f"{offer.instance.name} ({offer.describe_resources()}"
                  f"{', spot' if offer.spot else ''}) at ${offer.total_price:.4f}/hour each, placement "
                  f"{plan['placement']}; {len(plan['resources'])} cloud resources", markup=False)
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


def expire_idle_fleets() -> None:
    """What the next `dstack` command does for instances idle past their idle_duration (no server does it)."""
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.fleets import expire_idle_fleets as expire
    from provisioner.state import StateStore

    reporter = make_reporter()
    expire(StateStore(), load_config(), reporter.step, reporter.info)


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


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
fleet_app = typer.Typer(help="List, show and delete SSH and cloud fleets.", invoke_without_command=True,
                        **TYPER_SETTINGS)


@fleet_app.callback()
def fleet(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List, show and delete SSH and cloud fleets. Without a subcommand: `dstack fleet list`."""
    if ctx.invoked_subcommand is None:
        list_fleets(as_json)


@fleet_app.command("list")
def list_fleets(as_json: JsonOption = False) -> None:
    """List fleets: SSH fleets' hosts, cloud fleets' instances (idle or busy)."""
    import time

    from provisioner.fleets import fleets_json
    from provisioner.state import StateStore

    expire_idle_fleets()
    fleets = fleets_json(StateStore(), time.time())
    if as_json:
        print_json({"fleets": fleets})
        return
    console = stdout_console()
    if not fleets:
        console.print("No fleets. `dstack apply -f fleet.dstack.yml` adds one.")
        return
    _print_hosts(fleets)


@fleet_app.command("get")
def get_fleet(
    name: Annotated[str, typer.Argument(help="The fleet's name")],
    as_json: JsonOption = False,
) -> None:
    """Show one fleet: where it was registered from, each SSH host's resources or each cloud instance's state."""
    item = _fleet(name)
    if as_json:
        print_json({"fleet": item})
        return
    import datetime

    console = stdout_console()
    created = datetime.datetime.fromtimestamp(item["created_at"]).isoformat(" ", "seconds")
    console.print(f"Fleet {name} ({item['kind']}), from {item['source']}, created {created}", markup=False)
    _print_hosts([item])


@fleet_app.command("delete")
def delete_fleet_command(
    name: Annotated[str, typer.Argument(help="The fleet's name")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Forget an SSH fleet (its hosts are untouched) or destroy a cloud fleet's instances; refused while a run
    uses the fleet (-y or not)."""
    item = _fleet(name)
    what = "Destroy cloud fleet" if item["kind"] == "cloud" else "Forget fleet"
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{what} {name}?", default=False, err=True):
        raise typer.Exit(1)
    if item["kind"] == "cloud":
        destroy_cloud_fleet(name)
    else:
        forget_fleet(name)


def destroy_cloud_fleet(name: str) -> None:
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.fleets import destroy_cloud_fleet as destroy
    from provisioner.state import StateStore

    destroy(StateStore(), load_config(), name, make_reporter().step)
    stderr_console().print(f"Fleet {name} destroyed")


def _fleet(name: str) -> dict:
    import time

    from configuration.errors import ConfigurationError
    from provisioner.fleets import fleets_json
    from provisioner.state import StateStore

    for item in fleets_json(StateStore(), time.time()):
        if item["name"] == name:
            return item
    raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")


def _print_hosts(fleets: list) -> None:
    from rich.table import Table

    from provisioner.host_probe import HostFacts
    from provisioner.hosts import describe_facts

    table = Table(box=None, header_style="bold")
    for column in ("FLEET", "HOST", "RESOURCES", "STATUS"):
        table.add_column(column)
    for item in fleets:
        if item["kind"] == "cloud":
            for instance in item["instances"]:
                table.add_row(item["name"], f"{instance['hostname']} (#{instance['instance_num']})",
                              f"{instance['backend']} {instance['region']} {instance['instance_type']}",
                              _instance_status(instance))
            continue
        for host in item["hosts"]:
            access = host["access"]
            table.add_row(item["name"], f"{access['user']}@{access['hostname']}:{access['port']}",
                          describe_facts(HostFacts.from_json(host["facts"])), "ssh host")
    stdout_console().print(table, markup=False)


def _instance_status(instance: dict) -> str:
    if instance["status"] == "busy":
        return f"busy ({instance['run']})"
    if instance["status"] != "idle":
        return instance["status"]
    kept = "kept until deleted" if instance["idle_duration"] is None else f"kept {instance['idle_duration']}s"
    return f"idle {instance['idle_for_s'] or 0:.0f}s, {kept}"


def forget_fleet(name: str) -> None:
    from configuration.errors import ConfigurationError
    from provisioner.state import StateStore

    store = StateStore()
    busy = [r.name for r in store.list_runs() if r.active and r.backend == "ssh" and r.region == name]
    if busy:
        raise ConfigurationError(f"fleet {name} is in use by {', '.join(busy)}; stop them first")
    if not store.delete_fleet(name):
        raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")
    stderr_console().print(f"Fleet {name} forgotten (its hosts are untouched)")


def delete(
    name: Annotated[Optional[str], typer.Argument(help="A finished run's name")] = None,
    file: Annotated[Optional[str], typer.Option("-f", "--file", help="A fleet configuration to forget, or a volume "
                                                                      "configuration to delete")] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Forget a fleet (`-f fleet.dstack.yml`), delete a volume (`-f volume.dstack.yml`) or forget a finished run
    (NAME)."""
    from configuration.errors import ConfigurationError

    if (name is None) == (file is None):
        raise typer.BadParameter("give a run NAME or -f FILE, not both", param_hint="'NAME' / '-f'")
    if file is not None:
        from cli.config_input import load_file

        configuration = load_file(file)
        if configuration.type == "volume":
            from cli.volume_command import remove_volume

            if not configuration.name:
                raise ConfigurationError(f"{file}: the volume has no `name`: delete it with `dstack volume delete NAME`")
            remove_volume(configuration.name, yes)
            return
        if configuration.type != "fleet":
            raise ConfigurationError(f"{file}: `dstack delete -f` takes a fleet configuration, not a {configuration.type}")
        if configuration.is_cloud:
            destroy_cloud_fleet(configuration.name)
        else:
            forget_fleet(configuration.name)
        return
    from cli.runs_command import _session, delete_run
    from cli.schedule_command import remove_schedule

    session = _session()
    if session.store.get_run(name) is None and remove_schedule(name):
        return
    delete_run(session, name)
    stderr_console().print(f"Run {name} deleted")
