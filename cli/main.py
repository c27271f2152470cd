"""The `dstack` command's entry point. `dstack offers` with flags alone is answered without typer and pydantic
(cli.offers_flags: a quarter of the start-up); everything else, and anything that path does not take, goes to the
typer app (cli.app), which gives every help text and every error."""

from __future__ import annotations

import os
import sys

from cli import COMPLETE_VAR

_PLAIN_OFFERS = ("offer", "offers")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] and argv[0] in _PLAIN_OFFERS and COMPLETE_VAR not in os.environ:
        from cli.offers_flags import answer_offers
        from cli.output import user_errors

        with user_errors():
            if answer_offers(argv[1:]):
                return
    from cli.app import main as app_main

    app_main()


if __name__ == "__main__":
    main()
