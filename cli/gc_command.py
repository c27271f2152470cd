"""`dstack gc`: cloud resources tagged as dstack's that no live run owns (what a lost stack left behind)."""

from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli.output import print_json, stderr_console, stdout_console


def gc(
    region: Annotated[Optional[List[str]], typer.Option("-r", "--region", help="AWS regions to scan (repeatable)")] = None,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Remove without asking")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="List as JSON; remove nothing")] = False,
) -> None:
    """List AWS instances, security groups, key pairs and volumes tagged by dstack whose run is not active, and
    remove them after confirmation."""
    from stacks.extras import require_extra

    require_extra("aws", "`dstack gc`")
    import boto3

    from configuration.backends import load_config
    from provisioner.state import StateStore
    from stacks.aws_leftovers import find_leftovers, remove_leftovers
    from stacks.credentials import aws_errors

    config = load_config()
    aws = config.backend("aws")
    regions = region or (aws.regions if aws is not None and aws.regions else None)
    if not regions:
        regions = [boto3.session.Session().region_name or "us-east-1"]  # the profile's default region
    live = {r.name for r in StateStore().list_runs() if r.active}
    session = boto3.session.Session()
    clients = {name: session.client("ec2", region_name=name) for name in regions}
    with aws_errors(f"listing dstack's resources in {', '.join(regions)}"):
        orphans = [l for name, ec2 in clients.items() for l in find_leftovers(ec2, name) if l.run not in live]
    if as_json:
        print_json({"leftovers": [l.__dict__ for l in orphans]})
        return
    console = stdout_console()
    if not orphans:
        console.print(f"Nothing to collect in {', '.join(regions)}.")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("REGION", "KIND", "ID", "RUN"):
        table.add_column(column)
    for leftover in orphans:
        table.add_row(leftover.region, leftover.kind, leftover.id, leftover.run or "?")
    console.print(table)
    if not yes and not typer.confirm(f"Remove these {len(orphans)} resources?", default=False):
        raise typer.Exit(1)
    with aws_errors("removing the leftovers"):
        for name, ec2 in clients.items():
            remove_leftovers(ec2, [l for l in orphans if l.region == name])
    stderr_console().print(f"Removed {len(orphans)} resources.")
