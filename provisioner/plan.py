"""The run plan: what `dstack apply --dry-run --json` prints and what `apply` shows before asking to confirm.

`{"configuration": ..., "offer": ..., "resources": [...]}`, with `"notes": [...]` when a field needs a word; every secret value prints as `[secret]`.
"""

from __future__ import annotations

from typing import Any, List, Optional

from configuration.interpolation import SECRET_MASK, ResolvedRun
from offers.offer import Offer


def configuration_json(run: ResolvedRun) -> dict:
    """The normalized configuration after interpolation, with secrets masked."""
    document = run.configuration.model_dump(mode="json")
    for name in run.secret_env:
        document["env"][name] = SECRET_MASK
    if document.get("registry_auth"):
        document["registry_auth"]["password"] = SECRET_MASK
    return _redact(document, run)


def _redact(value: Any, run: ResolvedRun) -> Any:
    if isinstance(value, str):
        return run.redact(value)
    if isinstance(value, list):
        return [_redact(v, run) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, run) for k, v in value.items()}
    return value


def plan_json(run: ResolvedRun, offer: Optional[Offer] = None, resources: Optional[List[dict]] = None) -> dict:
    from provisioner.field_support import plan_notes

    document = {
        "configuration": configuration_json(run),
        "offer": offer.to_json() if offer is not None else None,
        "resources": _redact(resources or [], run),
    }
    notes = plan_notes(run.configuration)
    if notes:
        document["notes"] = notes
    return document
