"""Why a spot-only search found nothing when the same request has on-demand offers: the catalogue has no spot price
for those types (the shipped AWS data prices spot for accelerator types only), or the types are not sold as spot.
Saying so beats "no offers match", which sends the user loosening resources that are not the problem."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from offers.catalog import Catalog
from offers.requirements import Requirements
from offers.solver import find_offers

SHOWN_TYPES = 4


def missing_spot_prices(requirements: Requirements, catalogs: Sequence[Catalog]) -> Optional[str]:
    """A message when `requirements` asks for spot only and on-demand offers would match; None otherwise."""
    if requirements.spot is not True:
        return None
    on_demand = find_offers(dataclasses.replace(requirements, spot=False), catalogs, (), limit=None)
    if not on_demand.offers:
        return None
    names = sorted({offer.instance.name for offer in on_demand.offers})
    shown = ", ".join(names[:SHOWN_TYPES]) + (f" and {len(names) - SHOWN_TYPES} more" if len(names) > SHOWN_TYPES
                                              else "")
    if not any(offer.instance.spot_supported for offer in on_demand.offers):
        return f"No spot offers: the {on_demand.total} on-demand offers that match ({shown}) are not sold as spot."
    gaps = "; ".join(f"{c.backend}: {c.meta['gaps']}" for c in catalogs
                     if "gaps" in c.meta and any(o.backend == c.backend for o in on_demand.offers))
    return (f"No spot offers: {on_demand.total} on-demand offers match ({shown}), but the catalogue has no spot "
            f"price for them" + (f" ({gaps})" if gaps else "") + ". Drop --spot to see them.")
