"""`dstack delete`: forget a fleet, delete a volume, or forget a finished run."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from cli.helpers import delete_run, destroy_cloud_fleet, forget_fleet, remove_schedule, remove_volume, run_session
from cli.output import stderr_console


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

    session = run_session()
    if session.store.get_run(name) is None and remove_schedule(name):
        return
    delete_run(session, name)
    stderr_console().print(f"Run {name} deleted")
