"""`dstack state migrate`: a home's records copied from one store to another (this home's SQLite store to a team
database, or a team database's records of this home back to SQLite), in one writing transaction on the target.

Every row of every table is copied as stored (JSON columns as text), events in their order with the target's own
ids; a name the target already holds (a run, a fleet, a volume) refuses the whole copy, naming each. The source
is read, never changed: the caller decides what becomes of it once the copy is committed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Optional

from configuration.errors import ConfigurationError
from provisioner.store.connection import StoreFile
from provisioner.store.damage import store_lock

NAMED = ("runs", "fleets", "volumes", "cloud_fleets")  # tables whose rows are named, the name their key
BY_RUN = ("events", "jobs", "cluster_keys_left")  # rows that belong to a run
COPY_ORDER = NAMED + BY_RUN + ("instances", "sealed_files")


def source_rows(source: StoreFile, owner: Optional[str]) -> Dict[str, List[dict]]:
    """Every table's rows; with `owner`, only those of that home's runs and fleets, and what belongs to them."""
    rows: Dict[str, List[dict]] = {}
    with source._connect(read=True) as db:
        for table in NAMED:
            where = " WHERE owner_id = ?" if owner else ""
            rows[table] = db.rows(f"SELECT * FROM {table}{where} ORDER BY name", (owner,) if owner else ())
        order = {"events": "id", "jobs": "run, rank", "cluster_keys_left": "run, host"}
        runs = {row["name"] for row in rows["runs"]}
        for table in BY_RUN:
            found = db.rows(f"SELECT * FROM {table} ORDER BY {order[table]}")
            rows[table] = [row for row in found if not owner or row["run"] in runs]
        fleets = {row["name"] for row in rows["cloud_fleets"]}
        rows["instances"] = [row for row in db.rows("SELECT * FROM instances ORDER BY fleet, num")
                             if not owner or row["fleet"] in fleets]
        rows["sealed_files"] = [row for row in db.rows("SELECT * FROM sealed_files ORDER BY path")
                                if not owner or row["run"] in runs or row["fleet"] in fleets]
    for row in rows["events"]:
        del row["id"]  # the target numbers them, after its own
    return rows


def copy_rows(rows: Dict[str, List[dict]], target: StoreFile, owner_id: str, user_name: str) -> Dict[str, int]:
    """Writes `rows` into `target` (rows without an owner become this home's); refuses, changing nothing, when a
    name is taken there. Returns how many rows of each table were copied."""
    with target._connect() as db:
        db.begin()
        taken = []
        for table in NAMED:
            names = [row["name"] for row in rows[table]]
            if names:
                found = db.execute(f"SELECT name FROM {table} WHERE name IN ({', '.join('?' for _ in names)})",
                                   names).fetchall()
                taken += [f"{table.replace('_', ' ')[:-1]} {name}" for (name,) in found]
        if taken:
            raise ConfigurationError(f"{target.where} already holds {', '.join(sorted(taken))}: nothing was copied "
                                     "(rename or delete those first)")
        for table in COPY_ORDER:
            for row in rows[table]:
                if table in NAMED and row.get("owner_id") is None:
                    row = {**row, "owner_id": owner_id, "user_name": user_name}
                columns = ", ".join(row)
                db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' for _ in row)})",
                           list(row.values()))
        db.commit()
    return {table: len(rows[table]) for table in COPY_ORDER}


def delete_rows(rows: Dict[str, List[dict]], store: StoreFile) -> None:
    """Removes the copied runs and fleets (with what belongs to them) from `store`, in one transaction."""
    with store._connect() as db:
        db.begin()
        for row in rows["runs"]:
            for table, column in (("events", "run"), ("jobs", "run"), ("cluster_keys_left", "run"),
                                  ("sealed_files", "run"), ("runs", "name")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (row["name"],))
        for row in rows["cloud_fleets"]:
            db.execute("DELETE FROM instances WHERE fleet = ?", (row["name"],))
            db.execute("DELETE FROM sealed_files WHERE fleet = ?", (row["name"],))
        for table in ("fleets", "volumes", "cloud_fleets"):
            for row in rows[table]:
                db.execute(f"DELETE FROM {table} WHERE name = ?", (row["name"],))
        db.commit()


def retire_sqlite(store: StoreFile) -> Path:
    """Renames the SQLite store just copied (and its WAL files) to `state.db.migrated-<time>` and removes its
    marker, under its lock: the home's state is the team database's now, and no stale copy is ever read."""
    path = store.path
    target = path.with_name(f"{path.name}.migrated-{time.strftime('%Y%m%d-%H%M%S')}")
    with store_lock(path):
        for suffix in ("", "-wal", "-shm"):
            try:
                os.rename(f"{path}{suffix}", f"{target}{suffix}")
            except FileNotFoundError:
                pass
        store.marker.unlink(missing_ok=True)
    return target
