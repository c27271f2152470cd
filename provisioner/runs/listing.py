"""What `dstack ps` and `dstack run get` show of a run beyond its record, read from the store and the run's folder
alone: its attempts (`submissions`) and a dev environment's entry and IDE link. Kept apart from the modules that
act on runs (teardown, interruptions, dev environments' hosts), whose imports a listing does not need (issue 23:
`dstack ps`'s start-up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from provisioner.runs.ssh_entries import has_entry
from provisioner.store.records import RunRecord
from provisioner.store.run_files import run_folder
from provisioner.store.statuses import RunStatus


def info_path(run_name: str) -> Path:
    return run_folder(run_name) / "dev_environment.json"


def is_dev_environment(configuration) -> bool:
    """A configuration model or a run record's configuration JSON."""
    kind = configuration.get("type") if isinstance(configuration, dict) else getattr(configuration, "type", None)
    return kind == "dev-environment"


def with_dev_environment(document: dict, record) -> dict:
    """A run's JSON (`ps --json`, `apply --json`), with a dev environment's `dev_environment` added."""
    if is_dev_environment(record.configuration or {}):
        document["dev_environment"] = dev_environment_json(record.name, record.active)
    return document


def dev_environment_json(run_name: str, active: bool) -> dict:
    """What `dstack ps --json` shows of a dev environment: its entry (while there is one) and the IDE's link."""
    info = json.loads(info_path(run_name).read_text()) if info_path(run_name).exists() else {}
    if not (active and has_entry(run_name)):
        info["ssh_host"] = None
    return {"ssh_host": info.get("ssh_host"), "path": info.get("path"), "ide": info.get("ide"),
            "ide_url": info.get("ide_url"), "inactivity_duration": info.get("inactivity_duration")}


def submissions(store, record: RunRecord) -> List[dict]:
    """The run's attempts on hosts, from its events: one per start on newly provisioned hosts (`started`), each
    ended by the loss of its instances or, the last, as the run stands."""
    found: List[dict] = []
    for event in store.list_events(record.name):
        if event["kind"] == "started":
            hosts = event["message"].removeprefix("job started on ").split(" (attempt ")[0]
            found.append({"submission": len(found) + 1, "started_at": event["at"], "hosts": hosts, "status": None,
                          "reason": None})
        elif event["kind"] in ("interrupted", "instance-lost") and found:
            interrupted = event["kind"] == "interrupted"
            found[-1].update(status=RunStatus.TERMINATED if interrupted else RunStatus.FAILED,
                             reason="interrupted" if interrupted else event["message"].split(": ", 1)[-1])
    if found and found[-1]["status"] is None:
        found[-1].update(status=record.status, reason=record.reason)
    return found
