"""The `dstack` command's typer app (cli.main starts it). Commands are registered lazily: `dstack --help` lists them
from the table below without importing their modules, and `dstack NAME` imports only NAME's module, so start-up costs
typer and little else and no command loads pulumi, boto3 or paramiko before it needs them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import import_module
from typing import Dict, List, Optional

import typer
from typer.core import TyperGroup
from typing_extensions import Annotated

from cli import COMPLETE_VAR, PROG_NAME, VERSION
from cli.output import TYPER_SETTINGS, user_errors

_RUN_SETTINGS = {"allow_interspersed_args": False}  # `apply -f x.yml -- --lr 0.1`: what follows are run arguments


@dataclass(frozen=True)
class LazyCommand:
    """A command known by name and one-line help; its module is imported when the command is run."""

    target: str  # "module:attribute": a command function, or a typer.Typer of subcommands
    help: str  # the first line of the command's own help (a test keeps them equal)
    context_settings: Dict[str, object] = field(default_factory=dict)
    alias_of: Optional[str] = None


COMMANDS: Dict[str, LazyCommand] = {
    "apply": LazyCommand("cli.commands.apply:apply", "Apply a configuration: a task runs on the cheapest offer that "
                         "fits; a fleet registers your SSH hosts or provisions cloud instances.", _RUN_SETTINGS),
    "run": LazyCommand("cli.commands.runs:run", "Show a run: `dstack run get NAME` (`--json` for scripts). To "
                       "submit a run, `dstack apply`.", {"ignore_unknown_options": True}),
    "offer": LazyCommand("cli.commands.offers:offers", "Show the offers that match the requirements (spot and "
                         "on-demand unless told otherwise)."),
    "offers": LazyCommand("cli.commands.offers:offers", "An alias of `offer`.", alias_of="offer"),
    "ps": LazyCommand("cli.commands.ps:ps", "List runs: status, where they run, what they cost. Finishes what an "
                      "interrupted dstack left."),
    "logs": LazyCommand("cli.commands.runs:logs", "Print a run's output, from the start."),
    "attach": LazyCommand("cli.commands.attach:attach", "Forward a running run's ports again and write its `ssh "
                          "NAME` entry, until it ends (Ctrl-C detaches); `--logs` shows its output."),
    "stop": LazyCommand("cli.commands.runs:stop", "Stop a run (SIGTERM, then SIGKILL after 10s) and remove "
                        "everything it created."),
    "metrics": LazyCommand("cli.commands.metrics:metrics", "Show a running job's CPU, memory and GPU use, read on "
                           "its host."),
    "event": LazyCommand("cli.commands.event:event", "Show runs' lifecycle events: submitted, offers tried, "
                         "provisioned, started, exit, teardown."),
    "delete": LazyCommand("cli.commands.delete:delete", "Forget a fleet (`-f fleet.dstack.yml`), delete a volume "
                                                      "(`-f volume.dstack.yml`) or forget a finished run (NAME)."),
    "destroy": LazyCommand("cli.commands.delete:delete", "An alias of `delete`.", alias_of="delete"),
    "fleet": LazyCommand("cli.commands.fleet:fleet_app", "List, show and delete SSH and cloud fleets."),
    "volume": LazyCommand("cli.commands.volume:volume_app", "List, show and delete network volumes."),
    "secret": LazyCommand("cli.commands.secret:secret_app", "Store the secrets that `${{ secrets.NAME }}` reads"),
    "schedule": LazyCommand("cli.commands.schedule:schedule_app", "Scheduled runs: list them, or start those that "
                            "are due"),
    "init": LazyCommand("cli.commands.init:init", "Set up $DSTACK_HOME and say which backends can run."),
    "config": LazyCommand("cli.commands.config:config_app", "Check the cloud configuration in $DSTACK_HOME/config.yml"),
    "state": LazyCommand("cli.commands.state:state_app", "Move this home's state between its SQLite store and a team "
                         "database"),
    "gc": LazyCommand("cli.commands.gc:gc", "List AWS instances, security groups, key pairs and volumes (and GCP "
                      "instances, disks, firewalls and service accounts, where GCP is configured) tagged by dstack "
                      "whose run is not active, and remove them after confirmation."),
    "stacks": LazyCommand("cli.commands.stacks:stacks", "List the runs' Pulumi stacks and their outputs (needs the "
                          "Pulumi CLI)."),
    "setup": LazyCommand("cli.commands.setup:setup", "Install what dstack needs besides its Python packages: "
                         "`dstack setup pulumi`."),
    "schema": LazyCommand("cli.commands.schema:schema", "Print the JSON Schema of configuration files (for editors), "
                          "or the reference page."),
    "completion": LazyCommand("cli.commands.completion:completion", "Print the shell completion script for bash, "
                              "zsh or fish."),
}


def _plain_metavars() -> None:
    """Help in one style, as click (and dstack's argparse) writes it: `--last LAST`, `NAME`, `[ARGS]...`, not typer's
    internals (`--last <int range>`, `{name}`, `<list[str]>`)."""
    from typer import core

    def option_metavar(option, ctx) -> str:
        return option.metavar or (option.name or "value").upper()

    def argument_name(argument) -> str:
        return argument.metavar or (argument.name or "arg").upper()

    def usage_name(argument) -> str:
        if argument.metavar:  # written as it should read
            return argument.metavar
        name = argument_name(argument) if argument.required else f"[{argument_name(argument)}]"
        return name + ("..." if argument.nargs != 1 else "")

    core.TyperOption.display_type_rich = option_metavar
    core.TyperArgument.display_type_rich = lambda argument, ctx: ""
    core.TyperArgument._rich_display_name = lambda argument: argument.metavar or argument_name(argument) + (
        "..." if argument.nargs != 1 else "")
    core.TyperArgument._usage_display_name = usage_name


_plain_metavars()


def load_command(name: str, spec: LazyCommand):
    """The click command behind a table entry."""
    module, _, attribute = spec.target.partition(":")
    target = getattr(import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(**TYPER_SETTINGS)
        single.command(name, context_settings=spec.context_settings or None,
                       help=spec.help if spec.alias_of else None)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    def list_commands(self, ctx) -> List[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        spec = COMMANDS.get(name)
        return load_command(name, spec) if spec is not None else None

    def format_commands(self, ctx, formatter) -> None:
        """The command list from the table: listing must not import every command."""
        rows = [(name, spec.help) for name, spec in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name=PROG_NAME,
    cls=LazyGroup,
    help="Run tasks on the cheapest machine that fits, on AWS, GCP, your own hosts or this machine.",
    no_args_is_help=True,
    **TYPER_SETTINGS,
)


def _version(value: bool) -> None:
    if value:
        print(f"dstack {VERSION}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],
        typer.Option("-v", "--version", callback=_version, is_eager=True, help="Show the version and exit"),
    ] = None,
) -> None:
    """Run tasks on the cheapest machine that fits, on AWS, GCP, your own hosts or this machine."""


def main() -> None:
    """The typer app, for every command (cli.main answers some without it)."""
    if COMPLETE_VAR in os.environ:
        from typer._completion_classes import completion_init

        completion_init()  # typer's shell classes, which add_completion=False leaves unregistered
    with user_errors():
        app(prog_name=PROG_NAME)
