"""Runs and fleets, in a small SQLite store at `$DSTACK_HOME/state.db`.

Every step of a run is written before it is taken (WAL journal, one short transaction per update, a busy timeout),
so two `dstack` processes can share the store and a crash at any point leaves enough to finish the teardown: the
stack's identity is recorded before `up`, the host's address before the job starts. Secrets are never stored: the
configuration is kept as the plan prints it, with `[secret]` in their place.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Iterator, List, Optional

from configuration.home import dstack_home, private_dir

ACTIVE = ("submitted", "provisioning", "pulling", "running", "terminating")  # then done, failed or terminated

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT,
    backend TEXT,
    region TEXT,
    instance TEXT,
    price REAL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    exit_code INTEGER,
    owner_pid INTEGER,
    detached INTEGER NOT NULL DEFAULT 0,
    max_duration INTEGER,
    host TEXT,
    stack TEXT,
    offer TEXT,
    ports TEXT,
    attempts TEXT,
    configuration TEXT
);
CREATE TABLE IF NOT EXISTS fleets (
    name TEXT PRIMARY KEY,
    source TEXT,
    hosts TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
_JSON_FIELDS = ("host", "stack", "offer", "ports", "attempts", "configuration")


@dataclass
class RunRecord:
    name: str
    status: str
    submitted_at: float
    reason: Optional[str] = None
    backend: Optional[str] = None
    region: Optional[str] = None
    instance: Optional[str] = None
    price: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    exit_code: Optional[int] = None
    owner_pid: Optional[int] = None
    detached: bool = False
    max_duration: Optional[int] = None
    host: Optional[dict] = None  # how to reach the job (provisioner.access.HostAccess)
    stack: Optional[dict] = None  # the cloud stack to destroy, recorded before `up`
    offer: Optional[dict] = None
    ports: Optional[list] = None  # [[local, remote], ...] as forwarded
    attempts: list = field(default_factory=list)  # offers tried and why they failed
    configuration: Optional[dict] = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self, now: float) -> dict:
        """The shape of one run in `dstack ps --json` and `dstack apply --json`."""
        return {"name": self.name, "status": self.status, "reason": self.reason, "backend": self.backend,
                "region": self.region, "instance": self.instance, "price": self.price,
                "cost": round(self.cost(now), 6), "exit_code": self.exit_code, "submitted_at": self.submitted_at,
                "age_s": round(now - self.submitted_at, 1), "ports": self.ports or []}

    def cost(self, now: Optional[float] = None) -> float:
        if not self.price or not self.started_at:
            return 0.0
        end = self.finished_at or (now or time.time())
        return self.price * max(0.0, end - self.started_at) / 3600


class StateStore:
    def __init__(self, path=None):
        self.path = path or dstack_home() / "state.db"
        private_dir(self.path.parent)
        with self._connect() as db:
            db.executescript(_SCHEMA)
        os.chmod(self.path, 0o600)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # --- runs ---

    def create_run(self, record: RunRecord) -> None:
        values = self._row(record)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", list(values.values()))
        except sqlite3.IntegrityError:
            from configuration.errors import ConfigurationError

            raise ConfigurationError(f"a run named {record.name} already exists; pick another name, or "
                                     f"`dstack delete {record.name}` once it has finished") from None

    def update_run(self, name: str, **changes) -> RunRecord:
        values = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in changes.items()}
        if "detached" in values:
            values["detached"] = int(bool(values["detached"]))
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"UPDATE runs SET {assignments} WHERE name = ?", [*values.values(), name])
            db.execute("COMMIT")
        return self.get_run(name)

    def claim_run(self, name: str, expected: tuple, status: str, **changes) -> bool:
        """Moves a run to `status` only if it is in one of `expected` now; one process wins the race."""
        values = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in changes.items()}
        values["status"] = status
        assignments = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in expected)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(f"UPDATE runs SET {assignments} WHERE name = ? AND status IN ({marks})",
                                [*values.values(), name, *expected])
            db.execute("COMMIT")
            return cursor.rowcount == 1

    def get_run(self, name: str) -> Optional[RunRecord]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
        return self._record(row) if row else None

    def list_runs(self) -> List[RunRecord]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM runs ORDER BY submitted_at DESC").fetchall()
        return [self._record(r) for r in rows]

    def delete_run(self, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE name = ?", (name,))

    @staticmethod
    def _row(record: RunRecord) -> dict:
        row = {}
        for f in fields(RunRecord):
            value = getattr(record, f.name)
            if f.name in _JSON_FIELDS and value is not None:
                value = json.dumps(value)
            elif f.name == "detached":
                value = int(value)
            row[f.name] = value
        return row

    @staticmethod
    def _record(row) -> RunRecord:
        data = dict(row)
        for name in _JSON_FIELDS:
            if data.get(name) is not None:
                data[name] = json.loads(data[name])
        data["detached"] = bool(data["detached"])
        data["attempts"] = data.get("attempts") or []
        return RunRecord(**data)

    # --- fleets ---

    def save_fleet(self, name: str, source: str, hosts: list) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO fleets (name, source, hosts, created_at) VALUES (?, ?, ?, ?)",
                       (name, source, json.dumps(hosts), time.time()))

    def list_fleets(self) -> List[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT name, source, hosts, created_at FROM fleets ORDER BY name").fetchall()
        return [{"name": r[0], "source": r[1], "hosts": json.loads(r[2]), "created_at": r[3]} for r in rows]

    def delete_fleet(self, name: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM fleets WHERE name = ?", (name,)).rowcount == 1
