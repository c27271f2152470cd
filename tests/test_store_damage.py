"""Damage the state store's checks find in any table's rows, and a damaged store met by many commands at once: one
clear message each with the right reason, one copy set aside, and the fresh store the first of them starts kept."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.store.records import RunRecord, VolumeRecord
from provisioner.store.store import StateStore
from tests.helpers import ROOT, run_cli

ROWS = {  # a damaged row of each table, the command that reads it, and the reason it must give
    "event time": ("UPDATE events SET at = 'yesterday'", ["event"], "event 1 of run old is not a time and a kind"),
    "event kind": ("UPDATE events SET kind = x'7375626d6974746564'", ["event", "old"], "event 1 of run old is not a time and a kind"),
    "event text": ("UPDATE events SET message = x'00ff'", ["event", "--json"],
                   "event 1 of run old's message is not text"),
    "job status": ("UPDATE jobs SET status = 'exploded'", ["ps", "-a", "-v"],
                   "run old's job 0's status 'exploded' is not one dstack writes"),
    "volume status": ("UPDATE volumes SET status = 'exploded'", ["volume", "list"],
                      "volume data's status 'exploded' is not one dstack writes"),
    "cloud fleet": ("UPDATE cloud_fleets SET configuration = '[1'", ["fleet", "list"],
                    "fleet cloudy's configuration is not valid JSON"),
    "instance": ("UPDATE instances SET status = 'gone'", ["fleet", "list"],
                 "instance cloudy/0's status 'gone' is not one dstack writes"),
}


def a_store_with_every_table(home: Path) -> Path:
    from provisioner.store.records import InstanceRecord

    store = StateStore()
    store.create_run(RunRecord(name="old", status="done", submitted_at=time.time(), backend="local",
                               region="local", host={"kind": "local"}))
    store.set_jobs("old", [{"kind": "local"}])
    store.add_event("old", "submitted", "by the test")
    store.create_volume(VolumeRecord(name="data", status="active", backend="aws", region="r", created_at=1.0))
    assert store.create_cloud_fleet("cloudy", "cloudy.dstack.yml", "aws", {"type": "fleet"}, None)
    store.add_instances([InstanceRecord(fleet="cloudy", num=0, backend="aws", offer={}, host={"kind": "local"},
                                        status="idle")])
    return store.path


@pytest.mark.parametrize("damage", list(ROWS))
def test_a_damaged_row_of_any_table_is_damage_like_any_other(damage, dstack_home):
    statement, command, reason = ROWS[damage]
    path = a_store_with_every_table(dstack_home)
    db = sqlite3.connect(path)
    db.execute(statement)
    db.commit()
    db.close()
    result = run_cli(*command, env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: the state store {path} is damaged: {reason}.\n"), result.stderr
    kept = [p.name for p in dstack_home.glob("state.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and f"It was moved to {kept[0]}, for inspection" in result.stderr
    assert run_cli("event", env={"DSTACK_HOME": str(dstack_home)}).stdout == "No events.\n"
