"""Runs and fleets, in a small SQLite store at `$DSTACK_HOME/state.db`.

Every step of a run is written before it is taken (WAL journal, one short transaction per update, a busy timeout),
so two `dstack` processes can share the store and a crash at any point leaves enough to finish the teardown: the
stack's identity is recorded before `up`, the host's address before the job starts. Secrets are never stored: the
configuration is kept as the plan prints it, with `[secret]` in their place.

The store is checked when opened (SQLite's quick_check, its tables, the schema version in `PRAGMA user_version`) and
each row when read. A store that fails a check is damaged: it is moved aside and the user is told what may still be
running (provisioner.store_damage); dstack never silently starts afresh. `state.db.marker`, written once the store
exists, tells a store that was truncated, emptied or deleted apart from a home where none was made yet.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote

from configuration.errors import ConfigurationError, DstackError
from configuration.home import dstack_home, private_dir
from provisioner.store_errors import DAMAGED, FULL, failure_kind, store_error

ACTIVE = ("submitted", "provisioning", "pulling", "running", "terminating")  # then done, failed or terminated
SCHEMA_VERSION = 4  # 2: runs.owner_started; 3: the events table; 4: volumes, jobs, cloud fleets and their
# instances; stores from before versions read 0

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
    owner_started INTEGER,
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
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run, at);
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    backend TEXT NOT NULL,
    region TEXT NOT NULL,
    zone TEXT,
    size_gb INTEGER,
    volume_id TEXT,
    external INTEGER NOT NULL DEFAULT 0,
    stack TEXT,
    configuration TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    run TEXT NOT NULL,
    rank INTEGER NOT NULL,
    status TEXT NOT NULL,
    host TEXT,
    exit_code INTEGER,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run, rank)
);
CREATE TABLE IF NOT EXISTS cloud_fleets (
    name TEXT PRIMARY KEY,
    source TEXT,
    backend TEXT NOT NULL,
    stack TEXT,
    configuration TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    fleet TEXT NOT NULL,
    num INTEGER NOT NULL,
    backend TEXT NOT NULL,
    offer TEXT NOT NULL,
    host TEXT NOT NULL,
    status TEXT NOT NULL,
    run TEXT,
    idle_since REAL,
    idle_duration INTEGER,
    PRIMARY KEY (fleet, num)
)
"""
_TABLES = {"runs", "fleets", "events", "volumes", "jobs", "cloud_fleets", "instances"}
_TABLES_ADDED = {3: {"events"}, 4: {"volumes", "jobs", "cloud_fleets", "instances"}}  # a store older than the
# version has none of them yet: no damage


def _statements(first: str, last: str) -> List[str]:
    """The CREATE statements of _SCHEMA from the one starting with `first` to the one starting with `last`."""
    statements = [s.strip() for s in _SCHEMA.split(";") if s.strip()]
    start = next(i for i, s in enumerate(statements) if s.startswith(first))
    end = next(i for i, s in enumerate(statements) if s.startswith(last))
    return statements[start:end + 1]


_MIGRATIONS = {  # from each version to the next
    0: ["ALTER TABLE runs ADD COLUMN owner_started INTEGER"],
    2: _statements("CREATE TABLE IF NOT EXISTS events", "CREATE INDEX IF NOT EXISTS events_by_run"),
    3: _statements("CREATE TABLE IF NOT EXISTS volumes", "CREATE TABLE IF NOT EXISTS instances"),
}
_JSON_FIELDS = {"host": dict, "stack": dict, "offer": dict, "ports": list, "attempts": list, "configuration": dict}
_NUMBER_FIELDS = ("submitted_at", "started_at", "finished_at", "price", "exit_code", "owner_pid", "owner_started",
                  "max_duration")


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
    owner_started: Optional[int] = None  # the owner's start time (provisioner.owner): a reused pid is no owner
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
                "age_s": round(now - self.submitted_at, 1), "ports": self.ports or [],
                "tags": (self.configuration or {}).get("tags") or {}}

    def cost(self, now: Optional[float] = None) -> float:
        if not self.price or not self.started_at:
            return 0.0
        end = self.finished_at or (now or time.time())
        return self.price * max(0.0, end - self.started_at) / 3600


@dataclass
class VolumeRecord:
    """A network volume: created by its own Pulumi stack (recorded before `up`), or registered (`external`)."""

    name: str
    status: str  # submitted (its stack is being created), active, deleting
    backend: str
    region: str
    created_at: float
    zone: Optional[str] = None
    size_gb: Optional[int] = None
    volume_id: Optional[str] = None  # the cloud's id: an EBS volume id, a GCP disk name
    external: bool = False  # registered with `volume_id`: never created or deleted by dstack
    stack: Optional[dict] = None
    configuration: Optional[dict] = None

    def summary(self) -> dict:
        """The shape of one volume in `dstack volume list --json`."""
        return {"name": self.name, "status": self.status, "backend": self.backend, "region": self.region,
                "zone": self.zone, "size_gb": self.size_gb, "volume_id": self.volume_id, "external": self.external,
                "created_at": self.created_at}


JOB_FINAL = ("done", "failed", "terminated")


@dataclass
class JobRecord:
    """One node's job of a run: its host (provisioner.access.HostAccess) and where it stands: `provisioning`
    (host chosen), `running`, then `done`, `failed` or `terminated` with its exit code."""
    run: str
    rank: int
    status: str
    host: Optional[dict] = None
    exit_code: Optional[int] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None

    @property
    def final(self) -> bool:
        return self.status in JOB_FINAL

    def summary(self) -> dict:
        """The shape of one job in `dstack ps --json`."""
        from provisioner.access import HostAccess

        host = HostAccess.from_json(self.host).description if self.host else None
        return {"node": self.rank, "status": self.status, "host": host, "exit_code": self.exit_code,
                "started_at": self.started_at, "finished_at": self.finished_at}


class _Damage(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StateStore:
    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path else dstack_home() / "state.db"
        self.marker = self.path.with_name(self.path.name + ".marker")
        private_dir(self.path.parent)
        self._open()

    def _open(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise self._damaged("it is a directory, not a file" if self.path.is_dir() else "it is not a regular file")
        if not self.path.exists() and self.marker.exists():
            raise self._damaged("it is gone, though dstack recorded runs in it before")
        if self.path.exists():
            with self._connect(read=True) as db:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise _Damage("SQLite's check of its pages failed")
                tables, version = self._schema(db)
            if _TABLES <= tables and version == SCHEMA_VERSION:
                self._mark()
                return
        self._initialise()

    def _initialise(self) -> None:
        """Creates the tables, or brings an older store's up to date. Under the write lock, so that two processes
        opening a new home at once agree; the marker is written after the commit, so a store without tables and
        with a marker was emptied, never half made."""
        with self._connect(create=True) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            tables, version = self._schema(db)
            if not tables and self.marker.exists():
                raise _Damage("it holds no tables: it was truncated or emptied")
            missing = _tables_at(version) - tables
            if tables and missing:
                raise _Damage(f"its {' and '.join(sorted(missing))} table is missing")
            if version > SCHEMA_VERSION:
                raise DstackError(f"{self.path} was written by a newer dstack (schema {version}); upgrade dstack")
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            else:
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS.get(step, []):
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        os.chmod(self.path, 0o600)
        self._mark()

    @staticmethod
    def _schema(db: sqlite3.Connection) -> tuple:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return tables, db.execute("PRAGMA user_version").fetchone()[0]

    def _mark(self) -> None:
        if self.marker.exists():
            return
        try:
            self.marker.write_text("dstack's state store state.db was made in this folder: if it is ever lost or "
                                   "emptied, dstack says so instead of starting afresh.\n")
        except OSError:  # a full disk: the empty file it leaves marks as well, and the text comes next time
            pass

    @contextmanager
    def _connect(self, read: bool = False, create: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection whose SQLite errors become the user's: damage moves the store aside, a full disk says so."""
        try:
            db = self._reader() if read else self._connection("rwc" if create else "rw")
        except sqlite3.Error as e:
            raise self._failure(e) from None
        failure: Optional[Exception] = None
        try:
            yield db
        except sqlite3.IntegrityError:  # a constraint the caller explains (a run name taken)
            raise
        except (sqlite3.Error, _Damage) as e:
            failure = e
        finally:
            db.close()
        if failure is not None:
            raise self._failure(failure) from None

    def _connection(self, mode: str, immutable: bool = False) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path))}?mode={mode}" + ("&immutable=1" if immutable else "")
        return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)

    def _reader(self) -> sqlite3.Connection:
        """A connection for reading. On a full disk SQLite cannot make the shared-memory file that WAL reads need;
        then no dstack process is connected (it would have made it), so every committed change is in the main
        file, which is read as it is: `dstack ps` and `dstack logs` work on a full disk."""
        db = self._connection("rw")
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.Error as e:
            db.close()
            if failure_kind(e, self.path.parent) != FULL:
                raise
        return self._connection("ro", immutable=True)

    def _failure(self, error: Exception) -> Exception:
        if isinstance(error, _Damage):
            return self._damaged(error.reason)
        kind = failure_kind(error, self.path.parent)
        if kind == DAMAGED:
            return self._damaged(f"SQLite says: {error}")
        return store_error(kind, self.path, error)

    def _damaged(self, reason: str) -> DstackError:
        from provisioner.store_damage import set_aside_and_report

        return set_aside_and_report(self.path, self.marker, reason)

    # --- runs ---

    def create_run(self, record: RunRecord) -> None:
        values = self._row(record)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", list(values.values()))
        except sqlite3.IntegrityError:
            raise ConfigurationError(f"a run named {record.name} already exists; pick another name, or "
                                     f"`dstack delete {record.name}` once it has finished") from None

    def update_run(self, name: str, **changes) -> RunRecord:
        values = self._columns(changes)
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            updated = db.execute(f"UPDATE runs SET {assignments} WHERE name = ?", [*values.values(), name]).rowcount
            db.execute("COMMIT")
        if not updated:
            raise DstackError(f"{self.path} no longer holds run {name}: the store was moved aside or replaced while "
                              "the run went on; its job may still be running (`dstack ps` says where)")
        return self.get_run(name)

    def claim_run(self, name: str, expected: tuple, status: str, **changes) -> bool:
        """Moves a run to `status` only if it is in one of `expected` now; one process wins the race."""
        values = self._columns({**changes, "status": status})
        assignments = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in expected)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(f"UPDATE runs SET {assignments} WHERE name = ? AND status IN ({marks})",
                                [*values.values(), name, *expected])
            db.execute("COMMIT")
            return cursor.rowcount == 1

    def claim_hosts(self, name: str, candidates: List[dict], count: int) -> Tuple[Optional[List[dict]], List[str]]:
        """Claims the first `count` of `candidates` that no other active run holds (as its host or one of its jobs'),
        in order, and records them as run `name`'s jobs (rank order; the run's host is rank 0's). Returns (the hosts
        claimed, []) or, when fewer than `count` are free, (None, the runs holding the others): all or none. The
        check and the claim are one transaction, so two runs started at once never both get a host."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            held = self._held_addresses(db, name)
            chosen = [host for host in candidates if _address(host) not in held][:count]
            if len(chosen) < count:
                holders = sorted({held[_address(h)] for h in candidates if _address(h) in held})
                return None, holders  # the transaction ends, unchanged, with the connection
            db.execute("UPDATE runs SET host = ? WHERE name = ?", (json.dumps(chosen[0]), name))
            self._insert_jobs(db, name, chosen)
            db.execute("COMMIT")
        return chosen, []

    @staticmethod
    def _held_addresses(db: sqlite3.Connection, name: str) -> dict:
        """(hostname, port) -> the active run other than `name` that holds it, as its host or a job's."""
        marks = ", ".join("?" for _ in ACTIVE)
        held = {}
        rows = db.execute(f"SELECT name, host FROM runs WHERE name != ? AND host IS NOT NULL AND status IN ({marks})",
                          (name, *ACTIVE)).fetchall()
        rows += db.execute(f"SELECT jobs.run, jobs.host FROM jobs JOIN runs ON runs.name = jobs.run WHERE "
                           f"jobs.run != ? AND jobs.host IS NOT NULL AND runs.status IN ({marks})",
                           (name, *ACTIVE)).fetchall()
        for other, text in rows:
            held[_address(_load_json(text, dict, f"run {other}'s host"))] = other
        return held

    # --- jobs: one per node of a run, rank 0 the master ---

    def set_jobs(self, run: str, hosts: List[dict]) -> None:
        """Records the run's jobs, one per host in rank order, before any is started."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            self._insert_jobs(db, run, hosts)
            db.execute("COMMIT")

    @staticmethod
    def _insert_jobs(db: sqlite3.Connection, run: str, hosts: List[dict]) -> None:
        db.execute("DELETE FROM jobs WHERE run = ?", (run,))
        db.executemany("INSERT INTO jobs (run, rank, status, host) VALUES (?, ?, 'provisioning', ?)",
                       [(run, rank, json.dumps(host)) for rank, host in enumerate(hosts)])

    def list_jobs(self, run: str) -> List[JobRecord]:
        with self._connect(read=True) as db:
            rows = db.execute("SELECT run, rank, status, host, exit_code, started_at, finished_at FROM jobs "
                              "WHERE run = ? ORDER BY rank", (run,)).fetchall()
        jobs = []
        for row in rows:
            if not isinstance(row[1], int) or not isinstance(row[2], str):
                raise _Damage(f"a job of run {run} has no rank or status")
            host = _load_json(row[3], dict, f"run {run}'s job {row[1]}'s host") if row[3] is not None else None
            jobs.append(JobRecord(run=row[0], rank=row[1], status=row[2], host=host, exit_code=row[4],
                                  started_at=row[5], finished_at=row[6]))
        return jobs

    def update_job(self, run: str, rank: int, **changes) -> None:
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE run = ? AND rank = ?", [*changes.values(), run, rank])

    def get_run(self, name: str) -> Optional[RunRecord]:
        with self._connect(read=True) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
            return self._record(row) if row else None

    def list_runs(self) -> List[RunRecord]:
        with self._connect(read=True) as db:
            db.row_factory = sqlite3.Row
            return [self._record(r) for r in db.execute("SELECT * FROM runs ORDER BY submitted_at DESC")]

    def delete_run(self, name: str) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM runs WHERE name = ?", (name,))
            db.execute("DELETE FROM events WHERE run = ?", (name,))
            db.execute("DELETE FROM jobs WHERE run = ?", (name,))
            db.execute("COMMIT")

    # --- events: a run's lifecycle, for `dstack event` ---

    def add_event(self, run: str, kind: str, message: str = "", at: Optional[float] = None) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO events (run, at, kind, message) VALUES (?, ?, ?, ?)",
                       (run, time.time() if at is None else at, kind, message))

    def list_events(self, run: Optional[str] = None, since: Optional[float] = None, after_id: int = 0) -> List[dict]:
        """Events in the order they happened: one run's or all, from `since` (a time) and after `after_id`."""
        query, values = "SELECT id, run, at, kind, message FROM events WHERE id > ?", [after_id]
        if run is not None:
            query, values = query + " AND run = ?", [*values, run]
        if since is not None:
            query, values = query + " AND at >= ?", [*values, since]
        with self._connect(read=True) as db:
            rows = db.execute(query + " ORDER BY id", values).fetchall()
        for row in rows:
            if not isinstance(row[2], (int, float)) or not isinstance(row[3], str):
                raise _Damage(f"event {row[0]} of run {row[1]} is not a time and a kind")
        return [{"id": r[0], "run": r[1], "at": r[2], "kind": r[3], "message": r[4] or ""} for r in rows]

    @staticmethod
    def _columns(changes: dict) -> dict:
        """Column values as stored: JSON text for the structured fields, 0/1 for `detached`."""
        values = {}
        for name, value in changes.items():
            if name in _JSON_FIELDS and value is not None:
                value = json.dumps(value)
            elif name == "detached":
                value = int(bool(value))
            values[name] = value
        return values

    @classmethod
    def _row(cls, record: RunRecord) -> dict:
        return cls._columns({f.name: getattr(record, f.name) for f in fields(RunRecord)})

    @staticmethod
    def _record(row) -> RunRecord:
        data = dict(row)
        for name, kind in _JSON_FIELDS.items():
            if data.get(name) is not None:
                data[name] = _load_json(data[name], kind, f"run {data['name']}'s {name}")
        for name in _NUMBER_FIELDS:
            if data.get(name) is not None and not isinstance(data[name], (int, float)):
                raise _Damage(f"run {data['name']}'s {name} is not a number")
        data["detached"] = bool(data["detached"])
        data["attempts"] = data.get("attempts") or []
        return RunRecord(**data)

    # --- fleets ---

    def save_fleet(self, name: str, source: str, hosts: list) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO fleets (name, source, hosts, created_at) VALUES (?, ?, ?, ?)",
                       (name, source, json.dumps(hosts), time.time()))

    def list_fleets(self) -> List[dict]:
        with self._connect(read=True) as db:
            rows = db.execute("SELECT name, source, hosts, created_at FROM fleets ORDER BY name").fetchall()
            return [{"name": r[0], "source": r[1], "hosts": _load_json(r[2], list, f"fleet {r[0]}'s hosts"),
                     "created_at": r[3]} for r in rows]

    def delete_fleet(self, name: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM fleets WHERE name = ?", (name,)).rowcount == 1


    # --- volumes ---

    def create_volume(self, record: VolumeRecord) -> None:
        values = {f.name: getattr(record, f.name) for f in fields(VolumeRecord)}
        values.update(external=int(record.external), stack=_json_or_none(record.stack),
                      configuration=_json_or_none(record.configuration))
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO volumes ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                           list(values.values()))
        except sqlite3.IntegrityError:
            raise ConfigurationError(f"a volume named {record.name} already exists (see `dstack volume list`)") \
                from None

    def update_volume(self, name: str, **changes) -> None:
        values = {k: _json_or_none(v) if k in ("stack", "configuration") else v for k, v in changes.items()}
        with self._connect() as db:
            db.execute(f"UPDATE volumes SET {', '.join(f'{k} = ?' for k in values)} WHERE name = ?",
                       [*values.values(), name])

    def get_volume(self, name: str) -> Optional[VolumeRecord]:
        found = self._volumes("WHERE name = ?", (name,))
        return found[0] if found else None

    def list_volumes(self) -> List[VolumeRecord]:
        return self._volumes("ORDER BY name", ())

    def delete_volume(self, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM volumes WHERE name = ?", (name,))

    def _volumes(self, where: str, values: tuple) -> List[VolumeRecord]:
        with self._connect(read=True) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(f"SELECT * FROM volumes {where}", values)]
        for data in rows:
            for name in ("stack", "configuration"):
                if data[name] is not None:
                    data[name] = _load_json(data[name], dict, f"volume {data['name']}'s {name}")
            data["external"] = bool(data["external"])
        return [VolumeRecord(**data) for data in rows]

    # --- cloud fleets and their instances (provisioner.fleets, provisioner.instances) ---

    def create_cloud_fleet(self, name: str, source: str, backend: str, configuration: dict,
                           stack: Optional[dict] = None, instances: Sequence["InstanceRecord"] = ()) -> bool:
        """Records a cloud fleet (and any instances it already has) unless one of that name exists: False then."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM cloud_fleets WHERE name = ?", (name,)).fetchone():
                return False  # the transaction ends, unchanged, with the connection
            db.execute("INSERT INTO cloud_fleets (name, source, backend, stack, configuration, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (name, source, backend, _json_or_none(stack), json.dumps(configuration),
                                                     time.time()))
            for instance in instances:
                self._insert_instance(db, instance)
            db.execute("COMMIT")
        return True

    def set_fleet_stack(self, name: str, stack: dict) -> None:
        with self._connect() as db:
            db.execute("UPDATE cloud_fleets SET stack = ? WHERE name = ?", (json.dumps(stack), name))

    def list_cloud_fleets(self) -> List[dict]:
        with self._connect(read=True) as db:
            rows = db.execute("SELECT name, source, backend, stack, configuration, created_at FROM cloud_fleets "
                              "ORDER BY name").fetchall()
        return [{"name": r[0], "source": r[1], "backend": r[2],
                 "stack": _load_json(r[3], dict, f"fleet {r[0]}'s stack") if r[3] is not None else None,
                 "configuration": _load_json(r[4], dict, f"fleet {r[0]}'s configuration"), "created_at": r[5]}
                for r in rows]

    def get_cloud_fleet(self, name: str) -> Optional[dict]:
        return next((f for f in self.list_cloud_fleets() if f["name"] == name), None)

    def delete_cloud_fleet(self, name: str) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM instances WHERE fleet = ?", (name,))
            db.execute("DELETE FROM cloud_fleets WHERE name = ?", (name,))
            db.execute("COMMIT")

    def add_instances(self, instances: Sequence["InstanceRecord"]) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for instance in instances:
                self._insert_instance(db, instance)
            db.execute("COMMIT")

    @staticmethod
    def _insert_instance(db: sqlite3.Connection, instance: "InstanceRecord") -> None:
        db.execute("INSERT INTO instances (fleet, num, backend, offer, host, status, run, idle_since, idle_duration) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (instance.fleet, instance.num, instance.backend, json.dumps(instance.offer),
                    json.dumps(instance.host), instance.status, instance.run, instance.idle_since,
                    instance.idle_duration))

    def list_instances(self, fleet: Optional[str] = None) -> List["InstanceRecord"]:
        query, values = "SELECT fleet, num, backend, offer, host, status, run, idle_since, idle_duration " \
                        "FROM instances", []
        if fleet is not None:
            query, values = query + " WHERE fleet = ?", [fleet]
        with self._connect(read=True) as db:
            rows = db.execute(query + " ORDER BY fleet, num", values).fetchall()
        return [InstanceRecord(fleet=r[0], num=r[1], backend=r[2],
                               offer=_load_json(r[3], dict, f"instance {r[0]}/{r[1]}'s offer"),
                               host=_load_json(r[4], dict, f"instance {r[0]}/{r[1]}'s host"), status=r[5], run=r[6],
                               idle_since=r[7], idle_duration=r[8]) for r in rows]

    def claim_instance(self, fleet: str, num: int, run: str) -> bool:
        """Makes an idle instance run `run`'s; one run wins when two claim it at once."""
        with self._connect() as db:
            return db.execute("UPDATE instances SET status = 'busy', run = ?, idle_since = NULL "
                              "WHERE fleet = ? AND num = ? AND status = 'idle'", (run, fleet, num)).rowcount == 1

    def release_instance(self, run: str) -> bool:
        """The instances `run` holds (one per node) become idle from now; False when it holds none."""
        with self._connect() as db:
            return db.execute("UPDATE instances SET status = 'idle', run = NULL, idle_since = ? "
                              "WHERE run = ? AND status = 'busy'", (time.time(), run)).rowcount > 0

    def claim_fleet_teardown(self, fleet: str, expired_at: Optional[float] = None) -> bool:
        """Marks `fleet`'s instances `terminating` when no run holds any (with `expired_at`: when each has been
        idle past its idle_duration at that time; a fleet with no instances yet is never expired). Instances left
        `terminating` by a teardown that failed count as claimable, so the next command tries again."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT status, idle_since, idle_duration FROM instances WHERE fleet = ?",
                              (fleet,)).fetchall()
            if expired_at is not None:
                ready = bool(rows) and all(row[0] == "terminating" or _expired(*row, expired_at) for row in rows)
            else:
                ready = all(row[0] in ("idle", "terminating") for row in rows)
            if not ready:
                return False  # the transaction ends, unchanged, with the connection
            db.execute("UPDATE instances SET status = 'terminating' WHERE fleet = ?", (fleet,))
            db.execute("COMMIT")
        return True


@dataclass
class InstanceRecord:
    """One instance of a cloud fleet: how to reach it, and whether a run holds it (`busy`) or it waits (`idle`)."""

    fleet: str
    num: int  # its index in the fleet's stack
    backend: str
    offer: dict  # the offer it was provisioned from (Offer.to_json)
    host: dict  # provisioner.access.HostAccess
    status: str = "idle"  # idle, busy, or terminating (its fleet's stack is being destroyed)
    run: Optional[str] = None
    idle_since: Optional[float] = None
    idle_duration: Optional[int] = None  # seconds; None: kept until `dstack fleet delete`

    def to_json(self, now: float) -> dict:
        idle_for = round(now - self.idle_since, 1) if self.status == "idle" and self.idle_since else None
        return {"fleet": self.fleet, "instance_num": self.num, "backend": self.backend,
                "region": self.offer.get("region"), "instance_type": self.offer.get("instance", {}).get("name"),
                "price": self.offer.get("price"), "hostname": self.host.get("hostname"), "status": self.status,
                "run": self.run, "idle_for_s": idle_for, "idle_duration": self.idle_duration}


def _expired(status: str, idle_since: Optional[float], idle_duration: Optional[int], now: float) -> bool:
    return status == "idle" and idle_duration is not None and idle_since is not None and \
        now >= idle_since + idle_duration


def _json_or_none(value) -> Optional[str]:
    return None if value is None else json.dumps(value)


def _address(host: dict) -> tuple:
    return host.get("hostname"), host.get("port")


def _tables_at(version: int) -> set:
    """The tables a store of `version` must hold."""
    return _TABLES - {table for added, tables in _TABLES_ADDED.items() if added > version for table in tables}


def _load_json(text, kind: type, what: str):
    """A JSON column's value, checked to be the object or list it must be: anything else is damage."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise _Damage(f"{what} is not valid JSON") from None
    if not isinstance(value, kind):
        raise _Damage(f"{what} is not a JSON {'object' if kind is dict else 'list'}")
    return value
