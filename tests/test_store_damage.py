"""Damage the state store's checks find in any table's rows, and a damaged store met by many commands at once: one
clear message each with the right reason, one copy set aside, and the fresh store the first of them starts kept."""

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.store.damage import COPY_SIDE_FILES
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


def copies(home: Path) -> list:
    """The damaged copies set aside in `home`, without their side files."""
    return [p for p in home.glob("state.db.damaged-*") if not p.name.endswith(COPY_SIDE_FILES)]


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
    kept = copies(dstack_home)
    assert len(kept) == 1 and f"It was moved to {kept[0].name}, for inspection" in result.stderr
    assert Path(f"{kept[0]}-reason").read_text() == reason + "\n"  # why, kept with the copy
    assert run_cli("event", env={"DSTACK_HOME": str(dstack_home)}).stdout == "No events.\n"


def bad_host(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET host = '{\"kind\": ' WHERE name = 'r7'")
    db.commit()
    db.close()


def garbage_pages(path: Path) -> None:
    import random

    data = bytearray(path.read_bytes())
    data[4096:] = random.Random(13).randbytes(len(data) - 4096)
    path.write_bytes(bytes(data))


AT_ONCE = {  # damage, and what every command that meets it must give as the reason
    "bad JSON": (bad_host, "run r7's host is not valid JSON"),
    "garbage pages": (garbage_pages, "SQLite"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]), "SQLite"),
}


@pytest.mark.parametrize("damage", list(AT_ONCE))
def test_commands_at_once_on_a_damaged_store_set_one_copy_aside_for_the_right_reason(damage, dstack_home):
    """Eight commands meet the damaged store at once: one moves it aside; each of the others either says the same
    (naming that copy and the reason) or works on the fresh store, which none of them moves aside in turn."""
    spoil, reason = AT_ONCE[damage]
    env = {"DSTACK_HOME": str(dstack_home)}
    store = StateStore()
    for n in range(40):
        store.create_run(RunRecord(name=f"r{n}", status="done", submitted_at=1.0 + n, host={"kind": "local"}))
    spoil(store.path)
    damaged_file = store.path.stat().st_ino
    full_env = {**os.environ, **env}
    commands = [subprocess.Popen([sys.executable, "-m", "cli.main", "ps", "-a"], cwd=ROOT, env=full_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [(c.wait(timeout=120), c.stdout.read(), c.stderr.read()) for c in commands]
    kept = copies(dstack_home)
    assert [p.stat().st_ino for p in kept] == [damaged_file], (kept, results)
    told = 0
    for code, out, err in results:
        if code == 0:
            assert out == "No runs.\n" and err == "", (out, err)
            continue
        told += 1
        assert err.startswith(f"error: the state store {store.path} is damaged: "), results
        assert reason in err.splitlines()[0] and kept[0].name in err, results
    assert told >= 1
    fresh = run_cli("ps", "-a", env=env)
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (0, "No runs.\n", "")
    assert len(copies(dstack_home)) == 1


def test_a_command_that_met_the_new_store_midway_gives_the_reason_its_mover_recorded(dstack_home):
    """A command that had opened the damaged store, and whose next read met the fresh store another command was
    still making at the path ("no such table"), names the copy with the reason that command found, not its own."""
    from provisioner.store.connection import StoreFile
    from provisioner.store.damage import set_aside_and_report

    store = StateStore()
    store.create_run(RunRecord(name="r7", status="done", submitted_at=1.0, host={"kind": "local"}))
    reader = StoreFile(store.path)  # opened and checked before the damage was found
    moved = set_aside_and_report(store.path, reader.marker, "run r7's host is not valid JSON", reader.identity)
    assert "It was moved to" in str(moved)
    StateStore()  # the next command starts the new store
    told = str(reader._damaged("SQLite says: no such table: runs"))
    assert "is damaged: run r7's host is not valid JSON." in told and "Another dstack command moved it" in told, told
    assert len(copies(dstack_home)) == 1
