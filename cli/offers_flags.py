"""`dstack offers` from flags alone, without typer and pydantic: their imports are most of the command's start-up
(typer coerces every parameter through pydantic), the search itself a few milliseconds.

`answer_offers` takes the common forms of the command's flags, read as click reads them, with values that
offers.resource_flags decides; it answers exactly as cli.commands.offers would (the same search, the same
JSON and table). Anything else (help, a configuration file, `--fleet`, `--refresh`, a config.yml, an unknown or
malformed flag, a value only the models decide) it leaves to the typer app, which then gives the answer, the help or
the error: so both paths always agree (tests.test_offers_flags runs both on the same arguments).
"""

from __future__ import annotations

import math
import re
from typing import Dict, List

from cli.plain_flags import FLAG, VALUE, parse_flags

# The flags taken here, by every name the typer command gives them (cli.commands.offers; a test keeps them equal):
# name -> (its parameter, whether it takes a value, whether it repeats). The others leave to the typer app.
FLAGS: Dict[str, tuple] = {
    "--gpu": ("gpu", VALUE, False), "--cpu": ("cpu", VALUE, False), "--memory": ("memory", VALUE, False),
    "--disk": ("disk", VALUE, False), "--max-price": ("max_price", VALUE, False),
    "--spot-policy": ("spot_policy", VALUE, False), "--max-offers": ("max_offers", VALUE, False),
    "--format": ("output", VALUE, False), "-b": ("backend", VALUE, True), "--backend": ("backend", VALUE, True),
    "-r": ("region", VALUE, True), "--region": ("region", VALUE, True),
    "--instance-type": ("instance_type", VALUE, True), "--group-by": ("group_by", VALUE, True),
    "--spot": ("spot", FLAG, False), "--on-demand": ("on_demand", FLAG, False),
    "--spot-auto": ("spot_auto", FLAG, False), "--json": ("as_json", FLAG, False),
    "--dont-destroy": ("dont_destroy", FLAG, False), "--no-profile": ("no_profile", FLAG, False),
}
_COUNT = re.compile(r"[1-9][0-9]{0,5}\Z")


def requirements_of(values: dict):
    """The Requirements that cli.run_options.build_requirements gives for these flags; None where it would refuse
    them or only the models decide."""
    from offers.resource_flags import NotPlain, parse_resource_flags
    from offers.requirements import BACKENDS, SPOT_POLICIES, Requirements, spot_from_policy

    chosen = [policy for flag, policy in (("spot", "spot"), ("on_demand", "on-demand"), ("spot_auto", "auto"))
              if values.get(flag)]
    if "spot_policy" in values:
        chosen.append(values["spot_policy"])
    if len(chosen) > 1 or not set(chosen) <= set(SPOT_POLICIES):
        return None
    policy = chosen[0] if chosen else "auto"
    max_price = None
    if "max_price" in values:
        try:
            max_price = float(values["max_price"])
        except ValueError:
            return None
        if not (math.isfinite(max_price) and max_price > 0):
            return None
    backends = values.get("backend")
    if any(backend not in BACKENDS for backend in backends or ()):
        return None
    try:
        resources = parse_resource_flags(values.get("gpu"), values.get("cpu"), values.get("memory"),
                                         values.get("disk"))
    except NotPlain:
        return None
    regions, types = values.get("region"), values.get("instance_type")
    return Requirements(resources=resources, spot=spot_from_policy(policy), max_price=max_price,
                        backends=tuple(backends) if backends else None, regions=tuple(regions) if regions else None,
                        instance_types=tuple(types) if types else None)


def answer_offers(argv: List[str]) -> bool:
    """Answers `dstack offers ARGV` and returns True, or returns False, having done nothing, for the typer app."""
    from configuration.home import dstack_home

    values = parse_flags(argv, FLAGS)
    if values is None or (dstack_home() / "config.yml").exists():  # a config.yml: its models read it
        return False
    output = values.get("output")
    if output not in (None, "plain", "json") or not _COUNT.match(values.get("max_offers", "50")):
        return False
    keys = None
    if "group_by" in values:
        from offers.grouping import parse_group_by

        try:
            keys = parse_group_by(",".join(values["group_by"]))
        except ValueError:
            return False
    requirements = requirements_of(values)
    if requirements is None:
        return False
    from cli.offers_view import show_offers
    from provisioner.planning.search import search_run_offers
    from provisioner.store.store import StateStore

    found = search_run_offers(requirements, None, StateStore(), limit=None if keys else int(values.get("max_offers",
                              "50")), all_clouds=True)
    show_offers(requirements, found.search, found.catalogs, keys, values.get("as_json", False) or output == "json")
    return True
