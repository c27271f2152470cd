"""The run plan for a person: the request, the offers in price order, and the cloud resources that will exist."""

from __future__ import annotations

from typing import Any, Iterator, Tuple

from cli.output import stdout_console


def _flatten(value: Any, prefix: str = "") -> Iterator[Tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, value if isinstance(value, str) else repr(value) if not isinstance(value, list) else \
            ", ".join(map(str, value))


def print_plan(source: str, run_name: str, requirements, search, document: dict, console=None,
               max_offers: int = 3) -> None:
    """On stdout for `--dry-run`; on stderr before a real run, whose stdout is the job's output alone."""
    from rich.markup import escape  # the file's name and values may hold `[...]`, which rich reads as markup
    from rich.table import Table

    console = console or stdout_console()
    console.print(f"[bold]Run[/] {run_name} from {escape(source)}")
    console.print(f"[bold]Request:[/] {escape(requirements.describe())}")
    for note in document.get("notes") or ():
        console.print(f"[bold]Note:[/] {escape(note)}")
    if not search.offers:
        return
    offers = Table(box=None, header_style="bold", title="Offers, cheapest first", title_justify="left")
    for column in ("#", "BACKEND", "REGION", "INSTANCE", "RESOURCES", "SPOT", "$/HOUR", "WITH DISK"):
        offers.add_column(column)
    for i, offer in enumerate(search.offers[:max_offers], 1):
        reused = f" (reused {offer.fleet}/{offer.num})" if getattr(offer, "fleet", "") else ""  # InstanceOffer
        offers.add_row(str(i), offer.backend + escape(reused), escape(offer.region), escape(offer.instance.name),
                       escape(offer.describe_resources()), "spot" if offer.spot else "on-demand",
                       f"${offer.price:.4f}", f"${offer.total_price:.4f}")
    console.print(offers)
    console.print(f"{search.total} offers match, showing {min(max_offers, len(search.offers))}; the first is used, "
                  "the next ones if it has no capacity.")
    nodes = document.get("nodes")
    if nodes and "total_price" in nodes:
        tpu = bool(search.offers) and search.offers[0].tpu_slice
        console.print(f"[bold]{nodes['count']} nodes:[/] " + (
            "one TPU slice, a node per host; " if tpu else "each offer is one node's; ") +
            f"the first costs ${nodes['price_per_node']:.4f}/hour per node, ${nodes['total_price']:.4f}/hour in all.")
    resources = document.get("resources") or []
    if resources:
        table = Table(box=None, header_style="bold", title="Cloud resources of the run's stack", title_justify="left")
        for column in ("TYPE", "NAME", "INPUTS"):
            table.add_column(column)
        for resource in resources:
            inputs = "\n".join(f"{k}: {v}" for k, v in _flatten(resource["inputs"]))
            table.add_row(resource["type"], resource["name"], escape(inputs))
        console.print(table)
