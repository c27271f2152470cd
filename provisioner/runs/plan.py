"""The run plan: what `dstack apply --dry-run --json` prints and what `apply` shows before asking to confirm.

`{"configuration": ..., "offer": ..., "resources": [...]}`, with `"notes": [...]` when a field needs a word (or the
offer search left offers out, and why) and `"nodes": {"count", "price_per_node", "total_price"}` for a multi-node run
(the offer is one node's: with `groups`, rank 0's) and `"groups": [{"name", "nodes", "ranks", "offer",
"price_per_node", "total_price"}]` with `groups`; every secret value prints as `[secret]`.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence

from configuration.backends import DstackConfig
from configuration.interpolation import SECRET_MASK, ResolvedRun
from offers.offer import Offer
from provisioner.jobs.nodes import cluster_price, node_count
from provisioner.planning.field_support import plan_notes
from provisioner.planning.node_groups import groups_json
from provisioner.planning.stack_plan import stack_notes


def configuration_json(run: ResolvedRun) -> dict:
    """The normalized configuration after interpolation, with secrets masked."""
    document = run.configuration.model_dump(mode="json")
    for name in run.secret_env:
        document["env"][name] = SECRET_MASK
    if document.get("registry_auth"):
        document["registry_auth"]["password"] = SECRET_MASK
    return _redact(document, run)


# user:password@ (or token@) in a URL, as people write a git repo's URL with a token in it
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::[^/@\s]*)?@")


def mask_url_credentials(text: str) -> str:
    """`https://me:ghp_x@github.com/...` -> `https://me:[secret]@github.com/...`; a lone name before `@` in an http(s)
    URL is a token (`https://ghp_x@github.com/...`) and is masked too; in `ssh://git@host` it is a user name."""
    def masked(match: "re.Match") -> str:
        scheme, user = match.group("scheme"), match.group("user")
        if match.group(0)[len(scheme) + len(user):-1]:  # a password follows the user
            return f"{scheme}{user}:{SECRET_MASK}@"
        return f"{scheme}{SECRET_MASK}@" if scheme.lower() in ("http://", "https://") else match.group(0)
    return _URL_CREDENTIALS.sub(masked, text)


def _redact(value: Any, run: ResolvedRun) -> Any:
    if isinstance(value, str):
        return mask_url_credentials(run.redact(value))
    if isinstance(value, list):
        return [_redact(v, run) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, run) for k, v in value.items()}
    return value


def plan_json(run: ResolvedRun, offer: Optional[Offer] = None, resources: Optional[List[dict]] = None,
              config: Optional[DstackConfig] = None, search_notes: Sequence[str] = ()) -> dict:
    """`search_notes`: what the offer search left out, and why (offers.solver.OfferSearch.notes)."""
    document = {
        "configuration": configuration_json(run),
        "offer": offer.to_json() if offer is not None else None,
        "resources": _redact(resources or [], run),
    }
    nodes = node_count(run.configuration)
    if nodes > 1:
        document["nodes"] = nodes_json(nodes, offer)
    if getattr(run.configuration, "groups", None) and offer is not None:
        document["groups"] = groups_json(offer)
    notes = plan_notes(run.configuration) + stack_notes(run.configuration, offer, config) + list(search_notes)
    if notes:
        document["notes"] = notes
    return document


def nodes_json(nodes: int, offer: Optional[Offer]) -> dict:
    """A multi-node run's size and price: the offer is one node's (a TPU slice's: all its nodes')."""
    if offer is None:
        return {"count": nodes}
    total = cluster_price(offer, nodes)
    per_node = total / nodes if offer.tpu_slice else offer.total_price  # a grouped run's: rank 0's
    return {"count": nodes, "price_per_node": round(per_node, 6), "total_price": round(total, 6)}
