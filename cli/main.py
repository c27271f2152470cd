"""The `dstack` command's entry point. `dstack offers` with flags alone is answered without typer and pydantic
(cli.offers_flags: a quarter of the start-up), `dstack ps` without typer (cli.ps_listing); everything else, and
anything those paths do not take, goes to the typer app (cli.app), which gives every help text and every error."""

from __future__ import annotations

import os
import sys

from cli import COMPLETE_VAR
from cli.pydantic_plugins import load_none


def main() -> None:
    load_none()  # before anything imports pydantic (cli.pydantic_plugins)
    argv = sys.argv[1:]
    if argv[:1] and argv[0] in ("offer", "offers", "ps") and COMPLETE_VAR not in os.environ:
        from cli.output import user_errors

        with user_errors():
            if _answered_plainly(argv[0], argv[1:]):
                return
    if argv[:1] == ["apply"] and COMPLETE_VAR not in os.environ:
        _announce_remembered_hosts(argv[1:])
    from cli.app import main as app_main

    app_main()


def _announce_remembered_hosts(args: list) -> None:
    """`apply`: the hosts the last apply of the same file took are told at once that they will be used again, so that
    their kept connections check their host keys while this command starts (provisioner.host.keeper_wire); the hosts
    it takes are told again once it has planned. A file that cannot be named from the arguments here is left to that."""
    if {"--help", "--dry-run"} & set(args):
        return
    file = None
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-f", "--file") and index + 1 < len(args):
            file = args[index + 1]
        elif arg.startswith("--file="):
            file = arg[len("--file="):]
        elif arg.startswith("-f") and len(arg) > 2:
            file = arg[2:]
    from cli.config_input import DEFAULT_FILE, STDIN, config_path

    if file != STDIN:
        from provisioner.host.keeper_wire import announce_remembered

        announce_remembered(str(config_path(file or DEFAULT_FILE)))


def _answered_plainly(command: str, args: list) -> bool:
    """Whether the plain path answered; False: it did nothing, and the typer app answers."""
    if command == "ps":
        from cli.ps_listing import answer_ps

        return answer_ps(args)
    from cli.offers_flags import answer_offers

    return answer_offers(args)


if __name__ == "__main__":
    main()
