"""`dstack apply -f fleet.dstack.yml`, `dstack fleet`, `dstack delete`: SSH fleets of hosts the user owns."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.output import TYPER_SETTINGS, print_json, stderr_console, stdout_console


def apply_fleet(configuration, source: str, yes: bool) -> None:
    from provisioner.hosts import apply_fleet as probe_and_record
    from provisioner.state import StateStore

    console = stderr_console()
    hosts = probe_and_record(configuration, source, StateStore(), confirm=_key_confirmation(source, yes),
                             log=console.print)
    console.print(f"Fleet {configuration.name}: {len(hosts)} host{'s' if len(hosts) != 1 else ''} ready")


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
fleet_app = typer.Typer(help="List, show and delete SSH fleets.", invoke_without_command=True, **TYPER_SETTINGS)


@fleet_app.callback()
def fleet(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List, show and delete SSH fleets. Without a subcommand: `dstack fleet list`."""
    if ctx.invoked_subcommand is None:
        list_fleets(as_json)


@fleet_app.command("list")
def list_fleets(as_json: JsonOption = False) -> None:
    """List SSH fleets and their hosts."""
    from provisioner.state import StateStore

    fleets = StateStore().list_fleets()
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
    """Show one SSH fleet: where it was registered from and each host's resources."""
    item = _fleet(name)
    if as_json:
        print_json({"fleet": item})
        return
    import datetime

    console = stdout_console()
    created = datetime.datetime.fromtimestamp(item["created_at"]).isoformat(" ", "seconds")
    console.print(f"Fleet {name}, from {item['source']}, registered {created}", markup=False)
    _print_hosts([item])


@fleet_app.command("delete")
def delete_fleet_command(
    name: Annotated[str, typer.Argument(help="The fleet's name")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Forget an SSH fleet (its hosts are untouched); refused while a run uses it."""
    _fleet(name)
    if not yes and sys.stdin.isatty() and not typer.confirm(f"Forget fleet {name}?", default=False, err=True):
        raise typer.Exit(1)
    forget_fleet(name)


def _fleet(name: str) -> dict:
    from configuration.errors import ConfigurationError
    from provisioner.state import StateStore

    for item in StateStore().list_fleets():
        if item["name"] == name:
            return item
    raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")


def _print_hosts(fleets: list) -> None:
    from rich.table import Table

    from provisioner.host_probe import HostFacts
    from provisioner.hosts import describe_facts

    table = Table(box=None, header_style="bold")
    for column in ("FLEET", "HOST", "RESOURCES"):
        table.add_column(column)
    for item in fleets:
        for host in item["hosts"]:
            access = host["access"]
            table.add_row(item["name"], f"{access['user']}@{access['hostname']}:{access['port']}",
                          describe_facts(HostFacts.from_json(host["facts"])))
    stdout_console().print(table)


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
        forget_fleet(configuration.name)
        return
    from cli.runs_command import _session, delete_run
    from cli.schedule_command import remove_schedule

    session = _session()
    if session.store.get_run(name) is None and remove_schedule(name):
        return
    delete_run(session, name)
    stderr_console().print(f"Run {name} deleted")
