"""The state store's file: opened and checked, brought up to the current schema, connected to with SQLite's
errors made the user's, and set aside when damaged (provisioner.store.damage); the table classes build on it. With
a team database (configuration.database) the same tables live in PostgreSQL instead (provisioner.store.postgres):
the tables' code sees one connection interface (SqliteDb here, PostgresDb there) whichever engine holds them."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple
from urllib.parse import quote

from configuration.database import database_url
from configuration.errors import DstackError
from configuration.home import dstack_home, private_dir
from configuration.owner import owner_id, user_name
from provisioner.store.damage import (file_identity, moved_aside, remove_leftovers, set_aside_and_report, stat_of,
                                      store_lock)
from provisioner.store.errors import DAMAGED, FULL, Conflict, ConnectionLost, Damage, failure_kind, store_error
from provisioner.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, TABLES, tables_at

__all__ = ["Damage", "SqliteDb", "StoreFile", "json_or_none", "load_json", "owner", "read_again", "stored_status"]


class SqliteDb:
    """A connection to the SQLite store as the tables use it (PostgresDb is the team database's)."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:
        return self.connection.execute(sql, parameters)

    def executemany(self, sql: str, rows: list) -> None:
        self.connection.executemany(sql, rows)

    def rows(self, sql: str, parameters=()) -> List[dict]:
        """The rows as dicts, by column name."""
        cursor = self.connection.execute(sql, parameters)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def begin(self) -> None:
        """Starts a writing transaction: the check and the change that follow are one step no other process sees
        half made (SQLite: one writer at a time)."""
        self.connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()


# The store files this process has checked whole (path, (device, inode)): SQLite's quick_check reads every page, so
# its cost grows with the store (80 ms at 10,000 runs), and a command opens the store several times. A file checked
# once is not checked again by the same process; damage met later still surfaces where a read or write meets it.
_CHECKED: set = set()


class StoreFile:
    """`$DSTACK_HOME/state.db` (or `path`), checked when opened; or the team database at `url`, or configured (when
    no `path` is given), checked the same way."""

    def __init__(self, path: Optional[Path] = None, url: Optional[str] = None):
        url = url or (None if path else database_url())
        self.team = None
        if url:
            from provisioner.store.postgres import TeamDatabase

            self.team = TeamDatabase(url)
            self.path, self.where = None, self.team.description
            return
        self.path = Path(path) if path else dstack_home() / "state.db"
        self.where = str(self.path)
        self.marker = self.path.with_name(self.path.name + ".marker")
        self.identity: Optional[Tuple[int, int]] = None  # the file opened and checked, which failures are about
        private_dir(self.path.parent)
        self._open()

    def _open(self) -> None:
        found = stat_of(self.path)
        if found is None:
            with store_lock(self.path):  # made under the lock that moving a damaged store aside holds
                found = stat_of(self.path)
                if found is None:
                    if self.marker.exists():
                        raise self._damaged("it is gone, though dstack recorded runs in it before")
                    remove_leftovers(self.path)
                    self._initialise(create=True)
                    return
        self.identity = found.st_dev, found.st_ino  # what is judged below is this file, whatever happens to the path
        if not stat.S_ISREG(found.st_mode):
            raise self._damaged("it is a directory, not a file" if stat.S_ISDIR(found.st_mode) else
                                "it is not a regular file")
        if (str(self.path), self.identity) in _CHECKED:
            return
        with self._connect(read=True) as db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise Damage("SQLite's check of its pages failed")
            tables, version = self._schema(db)
        if TABLES <= tables and version == SCHEMA_VERSION:
            self._mark()
            _CHECKED.add((str(self.path), self.identity))
            return
        self._initialise()

    def _initialise(self, create: bool = False) -> None:
        """Creates the tables (in a new file with `create`, under store_lock), or brings an older store's up to date.
        Under the write lock, so that two processes opening a new home at once agree; the marker is written after
        the commit, so a store without tables and with a marker was emptied, never half made."""
        with self._connect(create=create) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.begin()
            tables, version = self._schema(db)
            if not tables and self.marker.exists():
                raise Damage("it holds no tables: it was truncated or emptied")
            missing = tables_at(version) - tables
            if tables and missing:
                raise Damage(f"its {' and '.join(sorted(missing))} table is missing")
            if version > SCHEMA_VERSION:
                raise DstackError(f"{self.path} was written by a newer dstack (schema {version}); upgrade dstack")
            if not tables:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            else:
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS.get(step, []):
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.commit()
        os.chmod(self.path, 0o600)
        if create:
            self.identity = file_identity(self.path)
        self._mark()

    @staticmethod
    def _schema(db: SqliteDb) -> tuple:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return tables, db.execute("PRAGMA user_version").fetchone()[0]

    def _mark(self) -> None:
        """Writes the marker unless it is there; only while the file checked is still in place (a command that
        checked the store just before another moved it aside must not mark the empty folder it leaves)."""
        if self.marker.exists():
            return
        try:
            with store_lock(self.path):
                if self.marker.exists() or file_identity(self.path) != self.identity:
                    return
                self.marker.write_text("dstack's state store state.db was made in this folder: if it is ever lost "
                                       "or emptied, dstack says so instead of starting afresh.\n")
        except (OSError, DstackError):  # a full disk (no room for the lock or the text): the next command marks it
            pass

    @contextmanager
    def _connect(self, read: bool = False, create: bool = False) -> Iterator:
        """A connection whose errors become the user's: SQLite's damage moves the store aside, a full disk says so
        (the team database's: provisioner.store.postgres). A constraint is raised as Conflict, for the caller."""
        if self.team is not None:
            with self.team.connect() as db:
                yield db
            return
        try:
            db = SqliteDb(self._reader() if read else self._connection("rwc" if create else "rw"))
        except sqlite3.Error as e:
            raise self._failure(e) from None
        failure: Optional[Exception] = None
        try:
            yield db
        except sqlite3.IntegrityError:  # a constraint the caller explains (a run name taken)
            raise Conflict() from None
        except (sqlite3.Error, Damage) as e:
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
        if isinstance(error, Damage):
            return self._damaged(error.reason)
        kind = failure_kind(error, self.path.parent)
        if kind == DAMAGED:
            return self._damaged(f"SQLite says: {error}")
        return moved_aside(self.path, self.identity) or store_error(kind, self.path, error)

    def _damaged(self, reason: str) -> DstackError:
        return set_aside_and_report(self.path, self.marker, reason, self.identity)


def stored_status(kind: type, value, what: str):
    """A stored status as its enum; a value the enum does not know is damage."""
    try:
        return kind(value)
    except ValueError:
        raise Damage(f"{what}'s status {value!r} is not one dstack writes") from None


def read_again(method: Callable) -> Callable:
    """A reading method of the tables, run once more on a new connection when the team database's connection broke
    during it (reads change nothing: repeating one is safe)."""
    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ConnectionLost:
            return method(self, *args, **kwargs)
    return read


def owner() -> Tuple[str, str]:
    """(owner id, user name) of this home, which each record it makes carries (configuration.owner)."""
    return owner_id(), user_name()


def json_or_none(value) -> Optional[str]:
    return None if value is None else json.dumps(value)


def load_json(text, kind: type, what: str):
    """A JSON column's value, checked to be the object or list it must be: anything else is damage."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise Damage(f"{what} is not valid JSON") from None
    if not isinstance(value, kind):
        raise Damage(f"{what} is not a JSON {'object' if kind is dict else 'list'}")
    return value
