"""`dstack offers`' tables for people (rich), shared by the typer command and the plain path (cli.offers_flags)."""

from __future__ import annotations

from cli.output import print_json, stdout_console


def show_offers(requirements, search, catalogs, keys, as_json: bool) -> None:
    """The offers found, as JSON (a contract: dstack's shapes) or a table; grouped by `keys` when given."""
    if keys:
        from offers.grouping import group_offers

        groups = group_offers(search.offers, keys)
        if as_json:
            print_json({"requirements": requirements.to_json(), "groups": groups, "total_offers": search.total})
            return
        print_groups(requirements, groups, keys, search.total)
        return
    if as_json:
        print_json({
            "requirements": requirements.to_json(),
            "offers": [o.to_json() for o in search.offers],
            "total_offers": search.total,
            **({"notes": search.notes} if search.notes else {}),
        })
        return
    print_table(requirements, search, catalogs)


def print_table(requirements, search, catalogs) -> None:
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
    for column, justify in (("#", "right"), ("BACKEND", "left"), ("REGION", "left"), ("ZONE", "left"),
                            ("INSTANCE", "left"),
                            ("RESOURCES", "left"), ("SPOT", "left"), ("$/HOUR", "right"), ("WITH DISK", "right")):
        table.add_column(column, justify=justify)
    for i, offer in enumerate(search.offers, 1):
        table.add_row(str(i), offer.backend, escape(offer.region), escape(_zones(offer)),
                      escape(offer.instance.name),
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


def print_groups(requirements, groups, keys, total) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = stdout_console()
    console.print(f"[bold]Request:[/] {escape(requirements.describe())}")
    table = Table(box=None, header_style="bold")
    for key in keys:
        if key != "count":
            table.add_column(key.upper())
    for column in ("COUNT", "SPOT", "$/GPU", "$/HOUR", "BACKENDS", "OFFERS"):
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
            _price_range(g["price_per_gpu"]),
            _price_range(g["price"]),
            ", ".join(g["backends"]),
            str(g["offers"]),
        ]
        table.add_row(*map(escape, cells))
    console.print(table)
    console.print(f"{total} offers in {len(groups)} groups.")


def _zones(offer) -> str:
    """The offer's zones after its region's name (`us-east-1` with `a,b,f`; `-` for a host): a catalogue priced per
    zone gives rows that differ only here."""
    if not offer.zones:
        return "-"
    return ",".join(zone[len(offer.region):].lstrip("-") if zone.startswith(offer.region) else zone
                    for zone in offer.zones)


def _price_range(prices) -> str:
    if prices is None:
        return "-"
    low, high = _price(prices["min"]), _price(prices["max"])
    return low if low == high else f"{low}..{high}"


def _price(value: float) -> str:
    return f"${value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"
