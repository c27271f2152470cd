"""`dstack secret set|get|list|delete`: the secrets `${{ secrets.NAME }}` reads (configuration.secret_store).

`set` asks for the value without echo on a terminal, and otherwise reads it from stdin (`... | dstack secret set
NAME`). dstack's `secret set NAME VALUE` is accepted too, with a warning: shell history and process lists show a
value given on the command line."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.output import TYPER_SETTINGS, print_json, warn

secret_app = typer.Typer(help="Store the secrets that `${{ secrets.NAME }}` reads", no_args_is_help=True,
                         **TYPER_SETTINGS)
NameArgument = Annotated[str, typer.Argument(help="The secret's name, as `${{ secrets.NAME }}` writes it")]


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"Value of {name} (not shown): ")
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
    if not value:
        from configuration.errors import ConfigurationError

        raise ConfigurationError(f"no value given for {name}; nothing stored")
    return value


@secret_app.command("set")
def set_secret(
    name: NameArgument,
    value: Annotated[Optional[str], typer.Argument(show_default=False, help="The value, as dstack takes it (your "
                                                   "shell's history keeps it): leave it out to type it unseen or "
                                                   "pipe it in")] = None,
) -> None:
    """Store a secret; its value is asked for without echo, or read from stdin."""
    from configuration.errors import ConfigurationError
    from configuration.secret_store import check_name, editing_secrets, secrets_path

    check_name(name)
    if value is not None:
        warn(f"a value given on the command line stays in your shell's history and shows in process lists; "
             f"`dstack secret set {name}` asks for it unseen (or reads it from a pipe)")
        if not value:
            raise ConfigurationError(f"no value given for {name}; nothing stored")
    given = value if value is not None else _read_value(name)  # before the store's lock: typing may take a while
    with editing_secrets() as secrets:
        secrets[name] = given
    sys.stderr.write(f"Secret {name} stored in {secrets_path()}\n")


@secret_app.command("get")
def get_secret(name: NameArgument) -> None:
    """Print a secret's value (in plain text, on stdout)."""
    from configuration.errors import ConfigurationError
    from configuration.secret_store import read_secrets

    secrets = read_secrets()
    if name not in secrets:
        raise ConfigurationError(f"no secret named {name} (see `dstack secret list`)")
    sys.stdout.write(secrets[name] + "\n")


@secret_app.command("list")
def list_secrets(as_json: Annotated[bool, typer.Option("--json", help="Print the names as JSON")] = False) -> None:
    """List the secrets' names (never their values)."""
    from configuration.secret_store import read_secrets

    names = sorted(read_secrets())
    if as_json:
        print_json({"secrets": names})
        return
    sys.stdout.write("".join(f"{name}\n" for name in names))
    if not names:
        sys.stderr.write("No secrets stored (`dstack secret set NAME` adds one)\n")


@secret_app.command("delete")
def delete_secret(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Remove a secret (asking first on a terminal, unless -y)."""
    from cli.output import confirm
    from configuration.errors import ConfigurationError
    from configuration.secret_store import editing_secrets

    if not confirm(f"Delete secret {name}?", yes):
        raise typer.Exit(1)

    with editing_secrets() as secrets:
        if secrets.pop(name, None) is None:
            raise ConfigurationError(f"no secret named {name} (see `dstack secret list`)")
    sys.stderr.write(f"Secret {name} deleted\n")
