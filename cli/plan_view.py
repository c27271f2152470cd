"""The run plan for a person: the request, the offers in price order, and the cloud resources that will exist."""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

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


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
        return "off"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _retry(policy: Any) -> str:
    if not policy:
        return "off"
    events = ", ".join(policy.get("on_events") or ())
    limit = f" for {_duration(policy['duration'])}" if isinstance(policy.get("duration"), int) else ""
    return f"on {events}{limit}" if events else f"on{limit}"


def plan_rows(requirements, configuration: dict, upload: Optional[str], verbose: bool) -> List[Tuple[str, str]]:
    """dstack's rows of a run plan: type, resources, spot policy, max price, retry, idle duration, max duration (and
    a dev environment's inactivity duration), creation policy and reservation where set (`-v`: always), and what is
    uploaded."""
    kind = configuration.get("type", "task")
    if kind == "task":
        kind += f" (nodes={configuration.get('nodes') or 1})"
    spot = {True: "spot", False: "on-demand", None: "auto"}[requirements.spot]
    idle = configuration.get("idle_duration")
    rows = [("Type", kind), ("Resources", requirements.resources.describe()), ("Spot policy", spot),
            ("Max price", f"${requirements.max_price:g}" if requirements.max_price is not None else "off"),
            ("Retry policy", _retry(configuration.get("retry"))),
            ("Idle duration", "none: a new instance goes with the run" if idle is None
             else "off: a new instance is kept until `dstack fleet delete`" if idle < 0 else _duration(idle)),
            ("Max duration", _duration(configuration.get("max_duration")))]
    if kind == "dev-environment":
        rows.append(("Inactivity duration", _duration(configuration.get("inactivity_duration"))))
    creation = configuration.get("creation_policy")
    if verbose or creation not in (None, "reuse-or-create"):
        rows.append(("Creation policy", creation or "reuse-or-create"))
    if verbose or configuration.get("reservation"):
        rows.append(("Reservation", configuration.get("reservation") or "no"))
    if verbose:
        for name, value in (("Backends", requirements.backends), ("Regions", requirements.regions),
                            ("Instance types", requirements.instance_types)):
            rows.append((name, ", ".join(value) if value else "any"))
    if upload is not None:
        rows.append(("Uploads", upload))
    return rows


def print_plan(source: str, run_name: str, requirements, search, document: dict, console=None,
               max_offers: int = 3, upload: Optional[str] = None, verbose: bool = False) -> None:
    """On stdout for `--dry-run`; on stderr before a real run, whose stdout is the job's output alone."""
    from rich.markup import escape  # the file's name and values may hold `[...]`, which rich reads as markup
    from rich.table import Table

    console = console or stdout_console()
    console.print(f"[bold]Run[/] {run_name} from {escape(source)}")
    console.print(f"[bold]Request:[/] {escape(requirements.describe())}")
    rows = Table(box=None, show_header=False)
    rows.add_column(no_wrap=True)
    rows.add_column()
    for key, value in plan_rows(requirements, document.get("configuration") or {}, upload, verbose):
        rows.add_row(f"[bold]{key}[/]", escape(value))
    console.print(rows)
    for note in document.get("notes") or ():
        console.print(f"[bold]Note:[/] {escape(note)}")
    if not search.offers:
        return
    offers = Table(box=None, header_style="bold", title="Offers, cheapest first", title_justify="left")
    for column in ("#", "BACKEND", "REGION", "INSTANCE", "RESOURCES", "SPOT", "$/HOUR", "WITH DISK"):
        offers.add_column(column)
    for i, offer in enumerate(search.offers[:max_offers], 1):
        reused = f" (reused {offer.fleet}/{offer.num})" if getattr(offer, "fleet", "") else ""  # InstanceOffer
        if getattr(offer, "growth", ""):  # GrowthOffer: a fleet of `nodes: MIN..MAX` that the run grows
            reused = f" ({offer.growth})"
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
