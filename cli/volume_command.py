"""`dstack volume list|get|delete`: dstack's persistent volumes. Not supported yet (they come with persistent
resources); the command exists so that it says so instead of being unknown."""

from __future__ import annotations

import typer

from cli.output import TYPER_SETTINGS
from configuration.errors import DstackError

NOT_YET = "volumes are not supported yet: runs use the disk of their machine (`resources.disk`)"

volume_app = typer.Typer(help="Volumes: not supported yet.", invoke_without_command=True, **TYPER_SETTINGS)


@volume_app.callback()
def volume(ctx: typer.Context) -> None:
    """Volumes: not supported yet."""
    if ctx.invoked_subcommand is None:
        raise DstackError(NOT_YET)


@volume_app.command("list")
def list_volumes() -> None:
    """List volumes (not supported yet)."""
    raise DstackError(NOT_YET)


@volume_app.command("get")
def get_volume(name: str = typer.Argument(..., help="The volume's name")) -> None:
    """Show a volume (not supported yet)."""
    raise DstackError(NOT_YET)


@volume_app.command("delete")
def delete_volume(name: str = typer.Argument(..., help="The volume's name")) -> None:
    """Delete a volume (not supported yet)."""
    raise DstackError(NOT_YET)
