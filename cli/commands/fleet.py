"""`dstack fleet list|get|delete`: SSH fleets of hosts the user owns, and cloud fleets whose instances runs reuse
(provisioner.backends.ssh_fleets, provisioner.backends.cloud_fleets)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli.helpers import destroy_cloud_fleet, expire_idle_fleets, forget_fleet, repeat_until_ctrl_c
from cli.output import TYPER_SETTINGS, print_json, stderr_console, stdout_console
from cli.run_options import JsonOption

fleet_app = typer.Typer(help="List, show and delete SSH and cloud fleets.", invoke_without_command=True,
                        **TYPER_SETTINGS)


WatchOption = Annotated[bool, typer.Option("-w", "--watch", help="Refresh every 2s until Ctrl-C")]
VerboseOption = Annotated[bool, typer.Option("-v", "--verbose", help="Show where each fleet was registered from "
                                                                     "and when, and each cloud instance's price")]


@fleet_app.callback()
def fleet(ctx: typer.Context, watch: WatchOption = False, verbose: VerboseOption = False,
          as_json: JsonOption = False) -> None:
    """List, show and delete SSH and cloud fleets. Without a subcommand: `dstack fleet list`."""
    if ctx.invoked_subcommand is None:
        list_fleets(watch, verbose, as_json)


@fleet_app.command("list")
def list_fleets(watch: WatchOption = False, verbose: VerboseOption = False, as_json: JsonOption = False) -> None:
    """List fleets: SSH fleets' hosts, cloud fleets' instances (idle or busy)."""
    if watch:
        repeat_until_ctrl_c(lambda: _list_fleets(verbose, as_json))
    else:
        _list_fleets(verbose, as_json)


def _list_fleets(verbose: bool, as_json: bool) -> None:
    import time

    from provisioner.backends.cloud_fleets import fleets_json
    from provisioner.store.store import StateStore

    expire_idle_fleets(ask_cloud=True)
    store = StateStore()
    fleets = fleets_json(store, time.time())
    if as_json:
        print_json({"fleets": fleets})
        return
    console = stdout_console()
    if not fleets:
        console.print("No fleets. `dstack apply -f fleet.dstack.yml` adds one.")
        return
    _print_hosts(fleets, verbose, team=store.team is not None)


@fleet_app.command("get")
def get_fleet(
    name: Annotated[str, typer.Argument(help="The fleet's name")],
    as_json: JsonOption = False,
) -> None:
    """Show one fleet: where it was registered from, each SSH host's resources or each cloud instance's state."""
    expire_idle_fleets(ask_cloud=True)
    item = _fleet(name)
    if as_json:
        print_json({"fleet": item})
        return
    import datetime

    console = stdout_console()
    created = datetime.datetime.fromtimestamp(item["created_at"]).isoformat(" ", "seconds")
    console.print(f"Fleet {name} ({item['kind']}), from {item['source']}, created {created}", markup=False)
    if item["kind"] == "cloud":
        _print_instances(item)
    else:
        _print_hosts([item])


@fleet_app.command("delete")
def delete_fleet_command(
    name: Annotated[str, typer.Argument(help="The fleet's name")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
    instances: Annotated[Optional[List[int]], typer.Option("-i", "--instance", metavar="N",
                                                           help="Only instance N (`#N` in `dstack fleet get`); "
                                                                "repeat for several")] = None,
) -> None:
    """Forget an SSH fleet (its hosts are untouched) or destroy a cloud fleet's instances; refused while a run
    uses the fleet (-y or not). With -i, only those instances (a cloud fleet's: refused while a run holds one)."""
    item = _fleet(name)
    if instances:
        _delete_instances(item, instances, yes)
        return
    what = "Destroy cloud fleet" if item["kind"] == "cloud" else "Forget fleet"
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{what} {name}?", default=False, err=True):
        raise typer.Exit(1)
    if item["kind"] == "cloud":
        destroy_cloud_fleet(name)
    else:
        forget_fleet(name)


def _delete_instances(item: dict, numbers: List[int], yes: bool) -> None:
    """dstack's `fleet delete NAME -i N`: an SSH fleet's host forgotten (the host is untouched); a cloud fleet's
    instance destroyed alone, its stack `up` without it (refused while a run holds it)."""
    from provisioner.store.store import StateStore

    name = item["name"]
    listed = ", ".join(f"#{n}" for n in sorted(set(numbers)))
    what = "Destroy" if item["kind"] == "cloud" else "Forget"
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{what} instance {listed} of fleet {name}?",
                                                            default=False, err=True):
        raise typer.Exit(1)
    if item["kind"] == "cloud":
        from cli.run_session import make_reporter
        from configuration.backends import load_config
        from provisioner.backends.fleet_stacks import delete_instances

        delete_instances(StateStore(), load_config(), name, numbers, make_reporter().step)
        stderr_console().print(f"Destroyed instance {listed} of fleet {name}", markup=False)
        return
    removed = StateStore().remove_fleet_hosts(name, numbers)
    hosts = ", ".join(host["access"]["hostname"] for host in removed)
    left = "" if len(removed) < len(item["hosts"]) else f"; fleet {name} had no other instance and is forgotten"
    stderr_console().print(f"Forgot {hosts} (instance {listed}) of fleet {name}: the hosts are untouched{left}",
                           markup=False)


def _fleet(name: str) -> dict:
    import time

    from configuration.errors import ConfigurationError
    from provisioner.backends.cloud_fleets import fleets_json
    from provisioner.store.store import StateStore

    for item in fleets_json(StateStore(), time.time()):
        if item["name"] == name:
            return item
    raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")


def _print_hosts(fleets: list, verbose: bool = False, team: bool = False) -> None:
    """The fleets' hosts, one row each; with a team database, whose fleet each is (USER, as `dstack ps`)."""
    import datetime

    from rich.table import Table

    from provisioner.backends.ssh_fleets import describe_facts
    from provisioner.host.probe import HostFacts

    table = Table(box=None, header_style="bold")
    for column in ("FLEET",) + (("USER",) if team else ()) + ("HOST", "RESOURCES", "STATUS") + (
            ("$/HOUR", "SOURCE", "CREATED") if verbose else ()):
        table.add_column(column)
    for item in fleets:
        created = datetime.datetime.fromtimestamp(item["created_at"]).isoformat(" ", "seconds")
        first = [item["name"]] + ([item["user"] or "-"] if team else [])
        if item["kind"] == "cloud":
            for instance in item["instances"]:
                price = instance.get("price")
                more = [f"${price:.4f}" if price is not None else "-", item["source"], created]
                table.add_row(*first, f"{instance['hostname'] or '-'} (#{instance['instance_num']})",
                              f"{instance['backend']} {instance['region']} {instance['instance_type']}",
                              _instance_status(instance), *(more if verbose else []))
            continue
        for number, host in enumerate(item["hosts"]):
            access = host["access"]
            table.add_row(*first, f"{access['user']}@{access['hostname']}:{access['port']} (#{number})",
                          describe_facts(HostFacts.from_json(host["facts"])), "ssh host",
                          *(["-", item["source"], created] if verbose else []))
    stdout_console().print(table, markup=False)


def _print_instances(item: dict) -> None:
    """`fleet get` of a cloud fleet: its size, then each instance's status, the run holding it, since when it is
    idle, and its price."""
    import datetime

    from rich.table import Table

    nodes = item.get("nodes") or {}
    console = stdout_console()
    console.print(f"Instances: {len(item['instances'])} of {nodes.get('min', '?')}..{nodes.get('max', '?')}",
                  markup=False)
    if not item["instances"]:
        console.print("No instance: a run that fits the fleet adds one.", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("#", "HOST", "INSTANCE", "STATUS", "RUN", "IDLE SINCE", "$/HOUR"):
        table.add_column(column)
    for instance in item["instances"]:
        since = instance.get("idle_since")
        price = instance.get("price")
        table.add_row(str(instance["instance_num"]), instance["hostname"] or "-",
                      f"{instance['backend']} {instance['region']} {instance['instance_type']}",
                      _instance_status(instance), instance["run"] or "-",
                      datetime.datetime.fromtimestamp(since).isoformat(" ", "seconds") if since else "-",
                      f"${price:.4f}" if price is not None else "-")
    console.print(table, markup=False)


def _instance_status(instance: dict) -> str:
    if instance["status"] == "busy":
        return f"busy ({instance['run']})"
    if instance["status"] != "idle":
        return instance["status"]
    kept = "kept until deleted" if instance["idle_duration"] is None else f"kept {instance['idle_duration']}s"
    return f"idle {instance['idle_for_s'] or 0:.0f}s, {kept}"
