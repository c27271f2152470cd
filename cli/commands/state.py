"""`dstack state migrate --to postgresql://...|sqlite`: this home's runs, fleets and volumes moved to a team database
(docs/teams.md), or this home's records in the team database moved back to `$DSTACK_HOME/state.db`."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from cli.output import TYPER_SETTINGS, stdout_console

state_app = typer.Typer(help="Move this home's state between its SQLite store and a team database",
                        no_args_is_help=True, **TYPER_SETTINGS)


@state_app.command("migrate")
def migrate(
    to: Annotated[str, typer.Option("--to", metavar="URL|sqlite",
                                    help="postgresql://user@host/dbname: this home's SQLite store to that team "
                                         "database; sqlite: this home's records in the configured team database back "
                                         "to $DSTACK_HOME/state.db")],
) -> None:
    """Move every record of this home (runs with their jobs and events, fleets, volumes, cloud fleets) to the
    other store, keeping each; refused while a run of this home is being started or followed by a live dstack."""
    from configuration.database import checked_url, database_url
    from configuration.errors import ConfigurationError
    from configuration.home import dstack_home
    from configuration.owner import owner_id, user_name
    from provisioner.store.migrate import copy_rows, delete_rows, retire_sqlite, source_rows
    from provisioner.store.store import StateStore

    path = dstack_home() / "state.db"
    if to == "sqlite":
        if database_url() is None:
            raise ConfigurationError("no team database is configured (DSTACK_DATABASE_URL, or database: in "
                                     "$DSTACK_HOME/config.yml): this home's state is in its SQLite store already")
        source, target = StateStore(), StateStore(path=path)
        rows = source_rows(source, owner_id())
    else:
        url = checked_url(to, "--to", "or `sqlite` to move this home's records back to its SQLite store")
        if not path.is_file():
            raise ConfigurationError(f"{path} does not exist: this home has no SQLite state to move")
        source, target = StateStore(path=path), StateStore(url=url)
        rows = source_rows(source, None)
    _refuse_while_owned(rows["runs"])
    counts = copy_rows(rows, target, owner_id(), user_name())
    what = ", ".join(f"{counts[t]} {t.replace('_', ' ')}" for t in ("runs", "fleets", "volumes", "cloud_fleets"))
    console = stdout_console()
    if to == "sqlite":
        delete_rows(rows, source)
        console.print(f"Moved {what} of this home from {source.where} to {path}. Unset DSTACK_DATABASE_URL (and "
                      "database: in config.yml) to use it.", highlight=False, soft_wrap=True)
        return
    kept = retire_sqlite(source)
    console.print(f"Moved {what} to {target.where}; the SQLite store is kept as {kept.name}. Set DSTACK_DATABASE_URL "
                  "(or database: in $DSTACK_HOME/config.yml) to use the team database.", highlight=False,
                  soft_wrap=True)


def _refuse_while_owned(runs: list) -> None:
    """A run whose dstack process lives would go on writing to the store it was moved from."""
    from configuration.errors import ConfigurationError
    from configuration.owner import another_homes
    from provisioner.host.owner import owner_alive
    from provisioner.store.statuses import ACTIVE

    live = [row["name"] for row in runs if row["status"] in ACTIVE and not another_homes(row.get("owner_id"))
            and owner_alive(row["owner_pid"], row["owner_started"])]
    if live:
        raise ConfigurationError(f"{', '.join(live)} {'is' if len(live) == 1 else 'are'} followed by a live dstack "
                                 "process (an attached apply): let it end or detach it, then migrate")
