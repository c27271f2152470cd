"""The `dstack` command. Each command lives in its own module; heavy modules are imported inside the commands, so
`dstack --help` and `dstack offers` never load pulumi, boto3 or paramiko."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.apply_command import apply
from cli.config_command import config_app
from cli.fleet_command import delete, fleet
from cli.gc_command import gc
from cli.runs_command import attach, logs, ps, stop
from cli.offers_command import offers
from cli.schema_command import schema
from cli.secret_command import secret_app
from cli.setup_command import setup
from cli.stacks_command import stacks
from cli.output import error
from configuration.errors import DstackError

VERSION = "0.1.0"

app = typer.Typer(
    name="dstack",
    help="Run tasks on the cheapest machine that fits, on AWS, GCP, your own hosts or this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and one-line usage errors: quicker, and readable in logs
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"dstack {VERSION}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit")
    ] = None,
) -> None:
    """Run tasks on the cheapest machine that fits, on AWS, GCP, your own hosts or this machine."""


app.command("offers")(offers)
_RUN_SETTINGS = {"allow_interspersed_args": False}
app.command("apply", context_settings=_RUN_SETTINGS)(apply)
app.command("run", context_settings=_RUN_SETTINGS, help="An alias of `apply`.")(apply)
app.command("schema")(schema)
app.command("ps")(ps)
app.command("logs")(logs)
app.command("attach")(attach)
app.command("stop")(stop)
app.command("fleet")(fleet)
app.command("delete")(delete)
app.command("gc")(gc)
app.command("stacks")(stacks)
app.command("setup")(setup)
app.add_typer(config_app, name="config")
app.add_typer(secret_app, name="secret")


def main() -> None:
    try:
        app()
    except DstackError as e:
        error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
