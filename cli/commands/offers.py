"""`dstack offers`: what a run's resources would buy, cheapest first."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from cli import run_options as opt
from cli.output import print_json, stderr_console, stdout_console


def offers(
    file: opt.FileOption = None,
    gpu: opt.GpuOption = None,
    cpu: opt.CpuOption = None,
    memory: opt.MemoryOption = None,
    disk: opt.DiskOption = None,
    spot: opt.SpotOption = None,
    on_demand: opt.OnDemandOption = None,
    spot_auto: opt.SpotAutoOption = None,
    backend: opt.BackendOption = None,
    region: opt.RegionOption = None,
    instance_type: opt.InstanceTypeOption = None,
    max_price: opt.MaxPriceOption = None,
    max_offers: Annotated[int, typer.Option("--max-offers", min=1, help="How many offers to show")] = 50,
    group_by: Annotated[
        Optional[str], typer.Option("--group-by", help="Group rows: gpu, optionally with backend, region, count")
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Rebuild the AWS catalogue from the live APIs first (needs credentials)")
    ] = False,
    as_json: opt.JsonOption = False,
) -> None:
    """Show the offers that match the requirements (spot and on-demand unless told otherwise)."""
    from offers.grouping import group_offers, parse_group_by

    keys = None
    if group_by is not None:
        try:
            keys = parse_group_by(group_by)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'--group-by'") from None
    configuration = None
    if file:
        from configuration.loader import load_configuration  # pydantic models of every field: only when needed

        configuration = load_configuration(file)
    if configuration is not None and configuration.type in ("fleet", "volume"):
        raise typer.BadParameter(f"a {configuration.type} configuration has no resources to match", param_hint="'-f'")
    requirements = opt.build_requirements(
        configuration, default_spot_policy="auto", gpu=gpu, cpu=cpu, memory=memory, disk=disk,
        spot_policy=opt.spot_policy_flag(spot, on_demand, spot_auto), backends=backend, regions=region,
        instance_types=instance_type, max_price=max_price,
    )
    if refresh:
        from offers.aws_refresh import refresh_aws_catalog

        refresh_aws_catalog(regions=requirements.regions, log=stderr_console().print)
    from configuration.backends import load_config
    from provisioner.planning.search import search_run_offers
    from provisioner.store.store import StateStore

    # Every cloud's catalogue, configured or not, plus the hosts a run could use (SSH fleets, this machine).
    found = search_run_offers(requirements, load_config(), StateStore(), limit=None if keys else max_offers,
                              all_clouds=True)
    search, catalogs = found.search, found.catalogs
    if keys:
        groups = group_offers(search.offers, keys)
        if as_json:
            print_json({"requirements": requirements.to_json(), "groups": groups, "total_offers": search.total})
            return
        _print_groups(requirements, groups, keys, search.total)
        return
    if as_json:
        print_json({
            "requirements": requirements.to_json(),
            "offers": [o.to_json() for o in search.offers],
            "total_offers": search.total,
            **({"notes": search.notes} if search.notes else {}),
        })
        return
    _print_table(requirements, search, catalogs)


def _print_table(requirements, search, catalogs) -> None:
    from rich.markup import escape  # a file's values may hold `[...]`, which rich reads as markup
    from rich.table import Table

    console = stdout_console()
    console.print(f"[bold]Request:[/] {escape(requirements.describe())}")
    for note in search.notes:
        console.print(f"[bold]Note:[/] {escape(note)}")
    if not search.offers:
        from offers.spot_gaps import missing_spot_prices

        console.print(missing_spot_prices(requirements, catalogs) or
                      "No offers match. Loosen the resources, or allow more backends, regions or spot.")
        return
    table = Table(box=None, header_style="bold")
    for column, justify in (("#", "right"), ("BACKEND", "left"), ("REGION", "left"), ("INSTANCE", "left"),
                            ("RESOURCES", "left"), ("SPOT", "left"), ("$/HOUR", "right"), ("WITH DISK", "right")):
        table.add_column(column, justify=justify)
    for i, offer in enumerate(search.offers, 1):
        table.add_row(str(i), offer.backend, escape(offer.region), escape(offer.instance.name),
                      escape(offer.describe_resources()), "spot" if offer.spot else "on-demand", _price(offer.price),
                      _price(offer.total_price))
    console.print(table)
    console.print(f"{search.total} offers, showing {len(search.offers)}. "
                  "WITH DISK adds the disk's list price (EBS gp3, GCP pd-balanced).")
    snapshots = ", ".join(f"{c.backend} {c.meta.get('snapshot', '?')}" +
                          (f" (spot {c.meta['spot_snapshot']})" if "spot_snapshot" in c.meta else "")
                          for c in catalogs)
    if snapshots:
        console.print(f"[dim]Prices from catalogues: {snapshots}.[/]")


def _print_groups(requirements, groups, keys, total) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = stdout_console()
    console.print(f"[bold]Request:[/] {escape(requirements.describe())}")
    table = Table(box=None, header_style="bold")
    for key in keys:
        if key != "count":
            table.add_column(key.upper())
    for column in ("COUNT", "SPOT", "$/HOUR", "BACKENDS", "OFFERS"):
        table.add_column(column)
    for g in groups:
        cells = []
        for key in keys:
            if key == "gpu":
                cells.append(f"{g['gpu']} ({g['memory_gb']:g}GB)" if g["gpu"] else "-")
            elif key != "count":
                cells.append(str(g[key]))
        count = g["count"]
        cells += [
            str(count["min"]) if count["min"] == count["max"] else f"{count['min']}..{count['max']}",
            ", ".join(g["spot"]),
            _price(g["price"]["min"]) + ("" if g["price"]["min"] == g["price"]["max"] else f"..{_price(g['price']['max'])}"),
            ", ".join(g["backends"]),
            str(g["offers"]),
        ]
        table.add_row(*map(escape, cells))
    console.print(table)
    console.print(f"{total} offers in {len(groups)} groups.")


def _price(value: float) -> str:
    return f"${value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"
