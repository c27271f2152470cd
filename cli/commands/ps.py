"""`dstack ps`: the runs, as dstack lists them: the active ones, or the last one when none is active (`-a` all),
one GPU column, a run's error only under `-v`. Listing finishes what an interrupted dstack left."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from cli.ps_listing import FORMATS, list_runs


def output_format(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FORMATS)}")
    return value


FormatOption = Annotated[
    Optional[str], typer.Option("--format", metavar="[plain|json]", callback=output_format,
                                help="Output format: plain (a table, the default) or json (as --json)")
]


def ps(
    all_runs: Annotated[bool, typer.Option("-a", "--all", help="Show finished runs too (without it: the active "
                                                             "runs, or the last run when none is active)")] = False,
    last: Annotated[
        Optional[int], typer.Option("-n", "--last", metavar="N", min=1, help="Show only the last N runs (implies "
                                    "--all)")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show each run's error and jobs (one per node): "
                                                                  "host, status, ports, exit code")] = False,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Refresh every 2s until Ctrl-C")] = False,
    output: FormatOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (as --format json)")] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Only this home's runs (with a team database, the team's "
                                                      "are listed, with a USER column)")] = False,
) -> None:
    """List runs: status, where they run, what they cost. Finishes what an interrupted dstack left."""
    list_runs(all_runs, last, verbose, watch, as_json or output == "json", mine)
