"""The state store's tables, its version (SQLite's `PRAGMA user_version`, the team database's `dstack_schema` table)
and the steps that bring an older store up to it; written once, for SQLite, and translated for PostgreSQL
(postgres_statement)."""

from __future__ import annotations

import re
from typing import List

SCHEMA_VERSION = 9  # 2: runs.owner_started; 3: the events table; 4: volumes, jobs, cloud fleets and their
# instances; 5: cluster keys left on nodes; 6: each record's owner (a team database); 7: run keys sealed with the
# team key; 8: every key dstack makes sealed (sealed_files: a run's, a dev environment's, a cloud fleet's); 9: runs
# indexed by status and submission time (`dstack ps` over many runs); stores from before versions read 0

OWNED_TABLES = ("runs", "fleets", "volumes", "cloud_fleets")  # their rows carry owner_id and user_name


SCHEMA = """
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
    configuration TEXT,
    owner_id TEXT,
    user_name TEXT
);
CREATE TABLE IF NOT EXISTS fleets (
    name TEXT PRIMARY KEY,
    source TEXT,
    hosts TEXT NOT NULL,
    created_at REAL NOT NULL,
    owner_id TEXT,
    user_name TEXT
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
    created_at REAL NOT NULL,
    owner_id TEXT,
    user_name TEXT
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
    created_at REAL NOT NULL,
    owner_id TEXT,
    user_name TEXT
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
);
CREATE TABLE IF NOT EXISTS cluster_keys_left (
    run TEXT NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (run, host)
);
CREATE TABLE IF NOT EXISTS sealed_files (
    path TEXT PRIMARY KEY,
    run TEXT,
    fleet TEXT,
    sealed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, submitted_at);
CREATE INDEX IF NOT EXISTS runs_by_submission ON runs (submitted_at)
"""


TABLES = {"runs", "fleets", "events", "volumes", "jobs", "cloud_fleets", "instances", "cluster_keys_left",
          "sealed_files"}


# A store older than the version has none of them yet: no damage.
TABLES_ADDED = {3: {"events"}, 4: {"volumes", "jobs", "cloud_fleets", "instances"}, 5: {"cluster_keys_left"},
                8: {"sealed_files"}}


_OWNER_COLUMNS = ",\n    owner_id TEXT,\n    user_name TEXT"


def _statements(first: str, last: str) -> List[str]:
    """The CREATE statements of SCHEMA from the one starting with `first` to the one starting with `last`, as they
    were before version 6 added the owner columns (which its own step adds)."""
    statements = [s.strip().replace(_OWNER_COLUMNS, "") for s in SCHEMA.split(";") if s.strip()]
    start = next(i for i, s in enumerate(statements) if s.startswith(first))
    end = next(i for i, s in enumerate(statements) if s.startswith(last))
    return statements[start:end + 1]


MIGRATIONS = {  # from each version to the next
    0: ["ALTER TABLE runs ADD COLUMN owner_started INTEGER"],
    2: _statements("CREATE TABLE IF NOT EXISTS events", "CREATE INDEX IF NOT EXISTS events_by_run"),
    3: _statements("CREATE TABLE IF NOT EXISTS volumes", "CREATE TABLE IF NOT EXISTS instances"),
    4: _statements("CREATE TABLE IF NOT EXISTS cluster_keys_left", "CREATE TABLE IF NOT EXISTS cluster_keys_left"),
    5: [f"ALTER TABLE {table} ADD COLUMN {column} TEXT" for table in OWNED_TABLES
        for column in ("owner_id", "user_name")],
    6: ["CREATE TABLE IF NOT EXISTS sealed_keys (run TEXT PRIMARY KEY, sealed TEXT NOT NULL)"],
    7: [*_statements("CREATE TABLE IF NOT EXISTS sealed_files", "CREATE TABLE IF NOT EXISTS sealed_files"),
        "INSERT INTO sealed_files (path, run, sealed) SELECT 'runs/' || run || '/id_ed25519', run, sealed "
        "FROM sealed_keys", "DROP TABLE sealed_keys"],
    8: _statements("CREATE INDEX IF NOT EXISTS runs_by_status", "CREATE INDEX IF NOT EXISTS runs_by_submission"),
}


def tables_at(version: int) -> set:
    """The tables a store of `version` must hold."""
    return TABLES - {table for added, tables in TABLES_ADDED.items() if added > version for table in tables}


def postgres_statement(statement: str) -> str:
    """A statement of SCHEMA or MIGRATIONS in PostgreSQL's types: 64-bit integers (a process start time, a size in
    bytes), double precision for SQLite's REAL, a sequence for the events' AUTOINCREMENT ids."""
    statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    return re.sub(r"\bINTEGER\b", "BIGINT", statement)
