"""`dstack apply -f volume.dstack.yml`, `dstack volume list|get|delete`: network volumes (provisioner.volumes)."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.output import TYPER_SETTINGS, print_json, stderr_console, stdout_console

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
volume_app = typer.Typer(help="List, show and delete network volumes.", invoke_without_command=True,
                         **TYPER_SETTINGS)


def apply_volume(configuration, source: str, name: Optional[str], yes: bool, dry_run: bool) -> None:
    """Creates the volume in its own stack (or registers an existing one); `--dry-run` prints the plan as JSON."""
    from configuration.backends import load_config
    from provisioner.names import generate_run_name
    from provisioner.volumes import create_volume, volume_plan

    name = name or configuration.name or generate_run_name()
    config = load_config()
    if dry_run:
        print_json(volume_plan(name, configuration, config, source))
        return
    from cli.run_session import make_reporter
    from provisioner.state import StateStore

    what = f"register {configuration.backend} volume {configuration.volume_id} as {name}" if configuration.is_external \
        else f"create a {int(configuration.size)}GB {configuration.backend} volume {name} in {configuration.region}"
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=True, err=True):
        raise typer.Exit(1)
    record = create_volume(StateStore(), config, name, configuration, source, make_reporter().step)
    stderr_console().print(f"Volume {name} is active: {record.backend} {record.zone}, {record.volume_id}",
                           markup=False)


@volume_app.callback()
def volume(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List, show and delete network volumes. Without a subcommand: `dstack volume list`."""
    if ctx.invoked_subcommand is None:
        list_volumes(as_json)


@volume_app.command("list")
def list_volumes(as_json: JsonOption = False) -> None:
    """List network volumes."""
    from provisioner.state import StateStore

    volumes = [v.summary() for v in StateStore().list_volumes()]
    if as_json:
        print_json({"volumes": volumes})
        return
    if not volumes:
        stdout_console().print("No volumes. `dstack apply -f volume.dstack.yml` creates one.")
        return
    _print_table(volumes)


@volume_app.command("get")
def get_volume(name: Annotated[str, typer.Argument(help="The volume's name")], as_json: JsonOption = False) -> None:
    """Show one network volume."""
    item = _volume(name).summary()
    if as_json:
        print_json({"volume": item})
        return
    _print_table([item])


@volume_app.command("delete")
def delete_volume_command(
    name: Annotated[str, typer.Argument(help="The volume's name")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Don't ask for confirmation")] = False,
) -> None:
    """Delete a volume and its data (a registered one is only forgotten); refused while a run uses it."""
    remove_volume(name, yes)


def remove_volume(name: str, yes: bool) -> None:
    """`dstack volume delete NAME`, `dstack delete -f volume.dstack.yml`."""
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.state import StateStore
    from provisioner.volumes import delete_volume

    record = _volume(name)
    what = f"Forget volume {name} (the disk stays)" if record.external else f"Delete volume {name} and its data"
    if not yes and sys.stdin.isatty() and not typer.confirm(f"{what}?", default=False, err=True):
        raise typer.Exit(1)
    delete_volume(StateStore(), load_config(), name, make_reporter().step)
    stderr_console().print(f"Volume {name} {'forgotten' if record.external else 'deleted'}")


def _volume(name: str):
    from configuration.errors import ConfigurationError
    from provisioner.state import StateStore

    record = StateStore().get_volume(name)
    if record is None:
        raise ConfigurationError(f"no volume named {name} (see `dstack volume list`)")
    return record


def _print_table(volumes: list) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("NAME", "BACKEND", "ZONE", "SIZE", "VOLUME ID", "STATUS"):
        table.add_column(column)
    for v in volumes:
        size = f"{v['size_gb']}GB" if v["size_gb"] else "-"
        table.add_row(v["name"], v["backend"], v["zone"] or v["region"], size, v["volume_id"] or "-",
                      v["status"] + (" (registered)" if v["external"] else ""))
    stdout_console().print(table)
