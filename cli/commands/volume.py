"""`dstack volume list|get|delete`: network volumes (their stacks: provisioner.backends.volume_stacks)."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from cli.helpers import find_volume, remove_volume, repeat_until_ctrl_c
from cli.output import TYPER_SETTINGS, print_json, stdout_console
from cli.run_options import JsonOption

volume_app = typer.Typer(help="List, show and delete network volumes.", invoke_without_command=True,
                         **TYPER_SETTINGS)


WatchOption = Annotated[bool, typer.Option("-w", "--watch", help="Refresh every 2s until Ctrl-C")]
VerboseOption = Annotated[bool, typer.Option("-v", "--verbose", help="Show each volume's region and when it was "
                                                                     "created or registered")]


@volume_app.callback()
def volume(ctx: typer.Context, watch: WatchOption = False, verbose: VerboseOption = False,
           as_json: JsonOption = False) -> None:
    """List, show and delete network volumes. Without a subcommand: `dstack volume list`."""
    if ctx.invoked_subcommand is None:
        list_volumes(watch, verbose, as_json)


@volume_app.command("list")
def list_volumes(watch: WatchOption = False, verbose: VerboseOption = False, as_json: JsonOption = False) -> None:
    """List network volumes."""
    if watch:
        repeat_until_ctrl_c(lambda: _list_volumes(verbose, as_json))
    else:
        _list_volumes(verbose, as_json)


def _list_volumes(verbose: bool, as_json: bool) -> None:
    from provisioner.store.store import StateStore

    store = StateStore()
    volumes = [v.summary() for v in store.list_volumes()]
    if as_json:
        print_json({"volumes": volumes})
        return
    if not volumes:
        stdout_console().print("No volumes. `dstack apply -f volume.dstack.yml` creates one.")
        return
    _print_table(volumes, verbose, team=store.team is not None)


@volume_app.command("get")
def get_volume(name: Annotated[str, typer.Argument(help="The volume's name")], as_json: JsonOption = False) -> None:
    """Show one network volume."""
    item = find_volume(name).summary()
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


def _print_table(volumes: list, verbose: bool = False, team: bool = False) -> None:
    """One row per volume; with a team database, whose volume each is (USER, as `dstack ps`)."""
    import datetime

    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("NAME",) + (("USER",) if team else ()) + ("BACKEND", "ZONE", "SIZE", "VOLUME ID", "STATUS") + (
            ("REGION", "CREATED") if verbose else ()):
        table.add_column(column)
    for v in volumes:
        size = f"{v['size_gb']}GB" if v["size_gb"] else "-"
        created = datetime.datetime.fromtimestamp(v["created_at"]).isoformat(" ", "seconds") if v["created_at"] else "-"
        table.add_row(v["name"], *([v["user"] or "-"] if team else []), v["backend"], v["zone"] or v["region"], size, v["volume_id"] or "-",
                      v["status"] + (" (registered)" if v["external"] else ""),
                      *([v["region"] or "-", created] if verbose else []))
    stdout_console().print(table)
