"""`dstack stacks`: the Pulumi stacks of runs, with their outputs (secrets masked), from the configured state."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from cli.output import print_json, stdout_console


def stacks(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False) -> None:
    """List the runs' Pulumi stacks and their outputs (needs the Pulumi CLI)."""
    from configuration.backends import load_config
    from stacks.extras import require_extra

    require_extra("pulumi", "`dstack stacks`")
    from stacks.automation import list_stacks, state_settings

    found = list_stacks(state_settings(load_config().pulumi.backend_url))
    if as_json:
        print_json({"stacks": found})
        return
    console = stdout_console()
    if not found:
        console.print("No stacks.")
        return
    for stack in found:
        outputs = ", ".join(f"{k}={v}" for k, v in stack["outputs"].items())
        console.print(f"{stack['name']}: {stack['resources'] or 0} resources; {outputs}")
