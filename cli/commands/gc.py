"""`dstack gc`: cloud resources tagged as dstack's that no live run owns (what a lost stack left behind), in AWS and,
where configured, GCP. Only this `$DSTACK_HOME`'s own resources (its owner id) unless `--all-owners`."""

from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli.output import print_json, stderr_console, stdout_console


def gc(
    region: Annotated[Optional[List[str]], typer.Option("-r", "--region", help="AWS regions to scan (repeatable)")] = None,
    all_owners: Annotated[bool, typer.Option(
        "--all-owners", help="Every owner's resources, not only this $DSTACK_HOME's: their runs may be live elsewhere"
    )] = False,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Remove without asking")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="List as JSON; remove nothing")] = False,
) -> None:
    """List AWS instances, security groups, key pairs and volumes (and GCP instances, disks, firewalls and service
    accounts, where GCP is configured) tagged by dstack whose run is not active, and remove them after confirmation."""
    from configuration.backends import load_config
    from configuration.owner import owner_id
    from provisioner.store.store import StateStore

    config = load_config()
    mine = owner_id()
    owner = None if all_owners else mine
    store = StateStore()
    live = {r.name for r in store.list_runs() if r.active} | {f["name"] for f in store.list_cloud_fleets()}
    scans = []
    if region or config.backend("aws") is not None or config.backend("gcp") is None:
        scans.append(_aws_scan(config, region, owner))
    if config.backend("gcp") is not None:
        scans.append(_gcp_scan(config, owner))
    found = [(scan, leftover) for scan in scans for leftover in scan.find()
             if not (leftover.owner == mine and leftover.run in live)]
    if as_json:
        print_json({"leftovers": [dict(l.__dict__, backend=scan.backend) for scan, l in found]})
        return
    console = stdout_console()
    if not found:
        console.print(f"Nothing to collect ({'; '.join(scan.where for scan in scans)}).")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("BACKEND", "REGION", "KIND", "ID", "RUN", "OWNER"):
        table.add_column(column)
    for scan, leftover in found:
        table.add_row(scan.backend, leftover.region, leftover.kind, leftover.id, leftover.run or "?",
                      "this home" if leftover.owner == mine else (leftover.owner or "(none)"))
    console.print(table)
    others = sum(1 for _, l in found if l.owner != mine)
    if others:
        stderr_console().print(f"{others} of these belong to other owners (or predate owners): their runs may be "
                               "live on another machine.")
    if not yes and not typer.confirm(f"Remove these {len(found)} resources?", default=False):
        raise typer.Exit(1)
    for scan in scans:
        scan.remove([l for s, l in found if s is scan])
    stderr_console().print(f"Removed {len(found)} resources.")


class _Scan:
    """One cloud's part of `gc`: where it looks, how it finds and removes."""

    def __init__(self, backend: str, where: str, find, remove):
        self.backend, self.where, self.find, self.remove = backend, where, find, remove


def _aws_scan(config, region, owner: Optional[str]) -> _Scan:
    from stacks.extras import require_extra

    require_extra("aws", "`dstack gc`")
    import boto3

    from stacks.aws.credentials import aws_errors
    from stacks.aws.leftovers import find_leftovers, remove_leftovers

    aws = config.backend("aws")
    regions = region or (aws.regions if aws is not None and aws.regions else None)
    if not regions:
        regions = [boto3.session.Session().region_name or "us-east-1"]  # the profile's default region
    session = boto3.session.Session()
    clients = {name: session.client("ec2", region_name=name) for name in regions}

    def find():
        with aws_errors(f"listing dstack's resources in {', '.join(regions)}"):
            return [l for name, ec2 in clients.items() for l in find_leftovers(ec2, name, owner)]

    def remove(leftovers):
        with aws_errors("removing the leftovers"):
            for name, ec2 in clients.items():
                remove_leftovers(ec2, [l for l in leftovers if l.region == name])

    return _Scan("aws", f"AWS {', '.join(regions)}", find, remove)


def _gcp_scan(config, owner: Optional[str]) -> _Scan:
    from stacks.extras import require_extra

    require_extra("gcp", "`dstack gc`")
    from stacks.gcp.leftovers import find_leftovers, gcp_api, remove_leftovers

    api = gcp_api(config.backend("gcp").project_id)
    return _Scan("gcp", f"GCP project {api.project}", lambda: find_leftovers(api, owner),
                 lambda leftovers: remove_leftovers(api, leftovers))
