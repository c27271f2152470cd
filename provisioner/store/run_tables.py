"""The runs, their jobs (one per node) and their lifecycle events, in the state store."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from typing import Dict, List, Optional, Sequence, Tuple

from configuration.errors import ConfigurationError, DstackError
from provisioner.store.connection import Damage, StoreFile, load_json, owner, read_again, stored_status
from provisioner.store.errors import Conflict
from provisioner.store.records import JobRecord, RunRecord
from provisioner.store.statuses import ACTIVE, RUNNING, JobStatus, RunStatus

_JSON_FIELDS = {"host": dict, "stack": dict, "offer": dict, "ports": list, "attempts": list, "configuration": dict}
_NUMBER_FIELDS = ("submitted_at", "started_at", "finished_at", "price", "exit_code", "owner_pid", "owner_started",
                  "max_duration")


class RunTables(StoreFile):
    """The runs, jobs and events tables."""

    # --- runs ---

    def create_run(self, record: RunRecord) -> None:
        """Records a new run, as this home's (its owner and user) unless the record names another."""
        values = self._row(record)
        if values["owner_id"] is None:
            values["owner_id"], values["user_name"] = owner()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", list(values.values()))
        except Conflict:
            raise ConfigurationError(f"a run named {record.name} already exists; pick another name, or "
                                     f"`dstack delete {record.name}` once it has finished") from None

    def update_run(self, name: str, **changes) -> RunRecord:
        values = self._columns(changes)
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.begin()
            updated = db.execute(f"UPDATE runs SET {assignments} WHERE name = ?", [*values.values(), name]).rowcount
            db.commit()
        if not updated:
            raise DstackError(f"{self.where} no longer holds run {name}: the store was moved aside or replaced while "
                              "the run went on; its job may still be running (`dstack ps` says where)")
        return self.get_run(name)

    def claim_run(self, name: str, expected: Tuple[RunStatus, ...], status: RunStatus, **changes) -> bool:
        """Moves a run to `status` only if it is in one of `expected` now; one process wins the race."""
        with self._connect() as db:
            db.begin()
            claimed = self._claim(db, name, expected, status, changes)
            db.commit()
            return claimed

    def run_started(self, name: str, started: Dict[int, float], expected: Tuple[RunStatus, ...], status: RunStatus,
                    event: str, **changes) -> bool:
        """jobs_started, claim_run and, where the claim is won, the `started` event (`event` its message), in one
        commit: the last jobs of a run started on their hosts, whose first lines are read after it. While a
        cluster's hosts start their jobs the disk is busy and each commit's fsync waited ~50 ms here: three in a
        row held a 16-node run's first lines back."""
        with self._connect() as db:
            db.begin()
            self._jobs_started(db, name, started)
            claimed = self._claim(db, name, expected, status, changes)
            if claimed:
                self._insert_event(db, name, "started", event)
            db.commit()
            return claimed

    def _claim(self, db, name: str, expected: Tuple[RunStatus, ...], status: RunStatus, changes: dict) -> bool:
        values = self._columns({**changes, "status": status})
        assignments = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in expected)
        cursor = db.execute(f"UPDATE runs SET {assignments} WHERE name = ? AND status IN ({marks})",
                            [*values.values(), name, *expected])
        return cursor.rowcount == 1

    def claim_hosts(self, name: str, candidates: List[dict], count: int
                    ) -> Tuple[Optional[List[dict]], List[Tuple[dict, str]]]:
        """Claims the first `count` of `candidates` that no other active run holds (as its host or one of its jobs'),
        in order, and records them as run `name`'s jobs (rank order; the run's host is rank 0's). The first
        candidate is the offer's own host, so it must be among them. Returns (the hosts claimed, []) or, when it is
        held or fewer than `count` are free, (None, each held candidate with the run holding it): all or none. The
        check and the claim are one transaction, so two runs started at once never both get a host."""
        return self.claim_host_groups(name, [(candidates, count)])

    def claim_host_groups(self, name: str, groups: List[Tuple[List[dict], int]]
                          ) -> Tuple[Optional[List[dict]], List[Tuple[dict, str]]]:
        """claim_hosts for node groups: each group's `count` hosts among its own candidates, in group order, no host
        twice; the first candidate of group 0 must be among them. All groups or none, in one transaction."""
        with self._connect() as db:
            db.begin()
            held = self._held_addresses(db, name)
            chosen: List[dict] = []
            for candidates, count in groups:
                taken = {_address(host) for host in chosen}
                mine = [host for host in candidates if _address(host) not in held and _address(host) not in taken]
                chosen += mine[:count]
                if len(mine) < count:
                    break
            first = groups[0][0][:1]
            if len(chosen) < sum(count for _, count in groups) or chosen[:1] != first:
                holders = [(host, held[_address(host)]) for candidates, _ in groups for host in candidates
                           if _address(host) in held]
                return None, holders  # the transaction ends, unchanged, with the connection
            db.execute("UPDATE runs SET host = ? WHERE name = ?", (json.dumps(chosen[0]), name))
            self._insert_jobs(db, name, chosen)
            db.commit()
        return chosen, []

    @read_again
    def busy_hosts(self) -> dict:
        """(hostname, port) -> the active run that holds it, as its host or a job's: what the plan offers last."""
        with self._connect(read=True) as db:
            return self._held_addresses(db, "")

    @staticmethod
    def _held_addresses(db, name: str) -> dict:
        """(hostname, port) -> the active run other than `name` that holds it, as its host or a job's."""
        marks = ", ".join("?" for _ in ACTIVE)
        held = {}
        rows = db.execute(f"SELECT name, host FROM runs WHERE name != ? AND host IS NOT NULL AND status IN ({marks})",
                          (name, *ACTIVE)).fetchall()
        rows += db.execute(f"SELECT jobs.run, jobs.host FROM jobs JOIN runs ON runs.name = jobs.run WHERE "
                           f"jobs.run != ? AND jobs.host IS NOT NULL AND runs.status IN ({marks})",
                           (name, *ACTIVE)).fetchall()
        for other, text in rows:
            held[_address(load_json(text, dict, f"run {other}'s host"))] = other
        return held

    # --- jobs: one per node of a run, rank 0 the master ---

    def set_jobs(self, run: str, hosts: List[dict]) -> None:
        """Records the run's jobs, one per host in rank order, before any is started."""
        with self._connect() as db:
            db.begin()
            self._insert_jobs(db, run, hosts)
            db.commit()

    @staticmethod
    def _insert_jobs(db, run: str, hosts: List[dict]) -> None:
        db.execute("DELETE FROM jobs WHERE run = ?", (run,))
        db.executemany("INSERT INTO jobs (run, rank, status, host) VALUES (?, ?, ?, ?)",
                       [(run, rank, JobStatus.PROVISIONING, json.dumps(host)) for rank, host in enumerate(hosts)])

    @read_again
    def list_jobs(self, run: str) -> List[JobRecord]:
        with self._connect(read=True) as db:  # rows are checked inside: damage they show moves the store aside
            rows = db.execute("SELECT run, rank, status, host, exit_code, started_at, finished_at FROM jobs "
                              "WHERE run = ? ORDER BY rank", (run,)).fetchall()
            return [self._job(run, row) for row in rows]

    def recorded_jobs(self, record: RunRecord) -> List[JobRecord]:
        """The run's jobs as recorded; a run recorded before jobs existed has one, on its host (none without one)."""
        jobs = self.list_jobs(record.name)
        if not jobs and record.host:
            jobs = [JobRecord(run=record.name, rank=0, status=JobStatus.RUNNING if record.status in RUNNING
                              else JobStatus.PROVISIONING, host=record.host, started_at=record.started_at)]
        return jobs

    @staticmethod
    def _job(run: str, row: tuple) -> JobRecord:
        if not isinstance(row[1], int) or not isinstance(row[2], str):
            raise Damage(f"a job of run {run} has no rank or status")
        host = load_json(row[3], dict, f"run {run}'s job {row[1]}'s host") if row[3] is not None else None
        status = stored_status(JobStatus, row[2], f"run {run}'s job {row[1]}")
        return JobRecord(run=row[0], rank=row[1], status=status, host=host, exit_code=row[4], started_at=row[5],
                         finished_at=row[6])

    def jobs_started(self, run: str, started: Dict[int, float]) -> None:
        """Records the jobs of `started` (rank: when it started) running, in one write: a cluster's wave costs one
        commit (and one fsync), not one per node that each node's first line would wait for in turn."""
        with self._connect() as db:
            db.begin()
            self._jobs_started(db, run, started)
            db.commit()

    @staticmethod
    def _jobs_started(db, run: str, started: Dict[int, float]) -> None:
        db.executemany("UPDATE jobs SET status = ?, started_at = ?, exit_code = NULL, finished_at = NULL "
                       "WHERE run = ? AND rank = ?",
                       [(JobStatus.RUNNING, at, run, rank) for rank, at in sorted(started.items())])

    def update_job(self, run: str, rank: int, **changes) -> None:
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE run = ? AND rank = ?", [*changes.values(), run, rank])

    @read_again
    def get_run(self, name: str) -> Optional[RunRecord]:
        with self._connect(read=True) as db:
            rows = db.rows("SELECT * FROM runs WHERE name = ?", (name,))
            return self._record(rows[0]) if rows else None

    @read_again
    def list_runs(self, active_only: bool = False, limit: Optional[int] = None) -> List[RunRecord]:
        """The runs, newest first: the active ones only, and at most `limit`, where asked. The filter and the limit
        are the query's (runs are indexed by status and submission time): `dstack ps` over a store of many finished
        runs reads the few it shows, never every run's record. `active_only` reads every run not in a finished
        status, so that a status no dstack writes is read, and reported as damage, as before."""
        where, parameters = "", []
        if active_only:
            finished = [status.value for status in RunStatus if not status.is_active()]
            where = f"WHERE status NOT IN ({', '.join('?' for _ in finished)}) "
            parameters += finished
        if limit is not None:
            parameters.append(limit)
        with self._connect(read=True) as db:
            return [self._record(r) for r in db.rows(f"SELECT * FROM runs {where}ORDER BY submitted_at DESC"
                                                     + (" LIMIT ?" if limit is not None else ""), parameters)]

    def delete_run(self, name: str) -> bool:
        """Forgets a finished run with its events and jobs; False (nothing deleted) when no finished run has the
        name: the check and the delete are one statement, so a run of the name submitted meanwhile is never lost."""
        marks = ", ".join("?" for _ in ACTIVE)
        with self._connect() as db:
            db.begin()
            deleted = db.execute(f"DELETE FROM runs WHERE name = ? AND status NOT IN ({marks})",
                                 (name, *ACTIVE)).rowcount
            if deleted:
                db.execute("DELETE FROM events WHERE run = ?", (name,))
                db.execute("DELETE FROM jobs WHERE run = ?", (name,))
                db.execute("DELETE FROM sealed_files WHERE run = ?", (name,))
            db.commit()
        return bool(deleted)

    def archive_run(self, name: str) -> Optional[str]:
        """Keeps a finished run apart under `NAME@N` (its events and jobs with it), so that `NAME` can be submitted
        again; N counts the earlier runs of the name. `@` is in no run name, so no name of a user's meets it. None
        when no finished run is named `name` (none at all, or an active one)."""
        marks = ", ".join("?" for _ in ACTIVE)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(f"SELECT name FROM runs WHERE name = ? AND status NOT IN ({marks})",
                             (name, *ACTIVE)).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            earlier = [n for (n,) in db.execute("SELECT name FROM runs WHERE name LIKE ?", (f"{name}@%",))]
            numbers = [int(n.rpartition("@")[2]) for n in earlier if n.rpartition("@")[2].isdigit()]
            kept = f"{name}@{max(numbers, default=0) + 1}"
            db.execute("UPDATE runs SET name = ? WHERE name = ?", (kept, name))
            db.execute("UPDATE events SET run = ? WHERE run = ?", (kept, name))
            db.execute("UPDATE jobs SET run = ? WHERE run = ?", (kept, name))
            db.execute("COMMIT")
        return kept

    # --- events: a run's lifecycle, for `dstack event` ---

    def add_event(self, run: str, kind: str, message: str = "", at: Optional[float] = None) -> None:
        with self._connect() as db:
            self._insert_event(db, run, kind, message, at)

    @staticmethod
    def _insert_event(db, run: str, kind: str, message: str, at: Optional[float] = None) -> None:
        db.execute("INSERT INTO events (run, at, kind, message) VALUES (?, ?, ?, ?)",
                   (run, time.time() if at is None else at, kind, message))

    @read_again
    def list_events(self, run: Optional[str] = None, since: Optional[float] = None, after_id: int = 0) -> List[dict]:
        """Events in the order they happened: one run's or all, from `since` (a time) and after `after_id`."""
        query, values = "SELECT id, run, at, kind, message FROM events WHERE id > ?", [after_id]
        if run is not None:
            query, values = query + " AND run = ?", [*values, run]
        if since is not None:
            query, values = query + " AND at >= ?", [*values, since]
        with self._connect(read=True) as db:
            return [self._event(row) for row in db.execute(query + " ORDER BY id", values).fetchall()]

    @staticmethod
    def _event(row: tuple) -> dict:
        number, run, at, kind, message = row
        if not isinstance(at, (int, float)) or not isinstance(kind, str):
            raise Damage(f"event {number} of run {run} is not a time and a kind")
        if not isinstance(run, str) or not isinstance(message, (str, type(None))):
            raise Damage(f"event {number} of run {run}'s {'message' if isinstance(run, str) else 'run'} is not text")
        return {"id": number, "run": run, "at": at, "kind": kind, "message": message or ""}

    # --- cluster keys left on nodes that could not be reached when their run ended (provisioner.jobs.cluster_ssh) ---

    def add_key_left(self, run: str, host: dict) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO cluster_keys_left (run, host) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       (run, json.dumps(host, sort_keys=True)))

    def keys_left(self, host: dict) -> List[Tuple[str, dict]]:
        """(run, its node as recorded) for each run whose key is left on `host`'s account: its address and user."""
        return self.keys_left_on([host])[0]

    @read_again
    def keys_left_on(self, hosts: Sequence[dict]) -> List[List[Tuple[str, dict]]]:
        """keys_left of each of `hosts`, from one read: a cluster's start connects to all its nodes at once, and a
        read of its own for each node took ~0.4 ms of CPU (a connection to the store)."""
        with self._connect(read=True) as db:
            rows = db.execute("SELECT run, host FROM cluster_keys_left ORDER BY run").fetchall()
            left = [(run, load_json(text, dict, f"the node run {run}'s cluster key was left on")) for run, text in rows]
        return [[(run, node) for run, node in left if _account(node) == _account(host)] for host in hosts]

    def remove_key_left(self, run: str, host: dict) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM cluster_keys_left WHERE run = ? AND host = ?",
                       (run, json.dumps(host, sort_keys=True)))

    # --- keys dstack made under a home, sealed with the team key (provisioner.jobs.team_keys): opaque text here ---

    def save_sealed_file(self, path: str, sealed: str, run: Optional[str] = None, fleet: Optional[str] = None) -> None:
        """`path` is the file's place under `$DSTACK_HOME` (`runs/NAME/id_ed25519`); the run or fleet it belongs to
        goes with it (deleted and migrated with it)."""
        with self._connect() as db:
            db.execute("INSERT INTO sealed_files (path, run, fleet, sealed) VALUES (?, ?, ?, ?) ON CONFLICT (path) "
                       "DO UPDATE SET run = excluded.run, fleet = excluded.fleet, sealed = excluded.sealed",
                       (path, run, fleet, sealed))

    @read_again
    def sealed_paths(self, fleet: str) -> List[str]:
        with self._connect(read=True) as db:
            return [row[0] for row in db.execute("SELECT path FROM sealed_files WHERE fleet = ? ORDER BY path",
                                                 (fleet,)).fetchall()]

    @read_again
    def sealed_file(self, path: str) -> Optional[str]:
        with self._connect(read=True) as db:
            row = db.execute("SELECT sealed FROM sealed_files WHERE path = ?", (path,)).fetchone()
            return row[0] if row else None

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
    def _record(data: dict) -> RunRecord:
        for name, kind in _JSON_FIELDS.items():
            if data.get(name) is not None:
                data[name] = load_json(data[name], kind, f"run {data['name']}'s {name}")
        for name in _NUMBER_FIELDS:
            if data.get(name) is not None and not isinstance(data[name], (int, float)):
                raise Damage(f"run {data['name']}'s {name} is not a number")
        data["detached"] = bool(data["detached"])
        data["attempts"] = data.get("attempts") or []
        data["status"] = stored_status(RunStatus, data["status"], f"run {data['name']}")
        return RunRecord(**data)


def _address(host: dict) -> tuple:
    return host.get("hostname"), host.get("port")


def _account(host: dict) -> tuple:
    return host.get("hostname"), host.get("port"), host.get("user")
