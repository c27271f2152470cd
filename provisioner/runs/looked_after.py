"""Whether a run is looked after by a live dstack process: what `dstack ps` asks before it imports the
reconciliation's modules (provisioner.runs.reconcile), which it needs only for a run that no process looks after."""

from __future__ import annotations

from configuration.owner import another_homes
from provisioner.host.owner import owner_alive
from provisioner.store.records import RunRecord
from provisioner.store.statuses import RUNNING


def run_owner_alive(record: RunRecord) -> bool:
    """Whether the dstack process that owns the run (its pid and start time, provisioner.host.owner) still lives.
    A teammate's run's owner lives on another machine: its pid means nothing here, and counts as gone."""
    return not another_homes(record.owner_id) and owner_alive(record.owner_pid, record.owner_started)


def looked_after(record: RunRecord) -> bool:
    """Whether a live dstack process looks after the run: an attached owner until the run ends, a detached one
    until it has started the job (or, stopped meanwhile, torn the run down). A teammate's run (a team database) is
    its owner's to look after, which this machine cannot ask, but for a detached job already running on a host
    this machine reaches too: its end is recorded by whichever laptop sees it first."""
    if another_homes(record.owner_id):
        return not (record.detached and record.status in RUNNING and (record.host or {}).get("kind") != "local")
    return run_owner_alive(record) and (not record.detached or record.status not in RUNNING)
