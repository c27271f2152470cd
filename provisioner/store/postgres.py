"""The team database: the state store's tables in PostgreSQL (psycopg 3), shared by every laptop of a team.

The schema is the SQLite store's (provisioner.store.schema, in PostgreSQL's types), its version in the one-row
`dstack_schema` table: brought up to date when older, refused when newer. A writing transaction (`begin`) takes one
transaction-scoped advisory lock first, so the check-then-change steps the tables make under SQLite's single writer
(claiming a host, a run, an instance) stay exclusive across machines; single-statement claims are atomic anyway
(an UPDATE re-reads its WHERE on the row it waited for).

There is no file to set aside: a record that fails its check, a missing table, a lost connection are each one clear
error naming the database (never its password), and nothing is changed or silently read as empty.

A command keeps one connection per thread (a round trip per query, not a new session per store call: over a WAN a
connection costs several round trips and a server process); one the server ended between two calls (a restart,
`pg_terminate_backend`, an idle timeout) is seen before it is used and replaced, so nothing was sent on it and
nothing is lost or written twice. One that breaks during a call is the ConnectionLost of `connect`.
"""

from __future__ import annotations

import atexit
import os
import select
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional, Set, Tuple

from configuration.database import describe
from configuration.errors import DstackError
from provisioner.store.errors import Conflict, ConnectionLost, Damage
from provisioner.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, TABLES, postgres_statement, tables_at

WRITE_LOCK = 0x64737461636B  # the advisory lock every writing transaction takes ("dstack" in ASCII)
CONNECT_TRIES = 3  # a refused or dropped connection is tried again this often, a second apart, then reported
CONNECT_TIMEOUT_S = 10
APPLICATION_NAME = "dstack"  # what pg_stat_activity and the server's log show for dstack's connections

_kept = threading.local()  # this thread's open connection per database URL (see the module's docstring)
_every_kept: list = []  # all of them, closed when the process exits; a forked child's inherited ones never are
_current: Set[str] = set()  # the URLs whose schema this process found current


class PostgresDb:
    """A connection to the team database as the tables use it (SqliteDb's interface: `?` placeholders)."""

    def __init__(self, connection):
        self.connection = connection

    def execute(self, sql: str, parameters=()):
        return self.connection.execute(sql.replace("?", "%s"), tuple(parameters))

    def executemany(self, sql: str, rows: list) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    def rows(self, sql: str, parameters=()) -> List[dict]:
        cursor = self.execute(sql, parameters)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def begin(self) -> None:
        """Starts a writing transaction, after any other's (see the module's docstring)."""
        self.connection.execute("BEGIN")
        self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))

    def commit(self) -> None:
        self.connection.execute("COMMIT")


class TeamDatabase:
    """The database at `url`, checked (and its schema made or brought up to date) when opened."""

    def __init__(self, url: str):
        self.psycopg = _psycopg()
        self.url = url
        self.description = describe(url)
        self._open()

    @contextmanager
    def connect(self) -> Iterator[PostgresDb]:
        """This thread's connection (kept for the next call) whose errors are the user's: Conflict for a
        constraint, ConnectionLost when it broke during the call, one line for the rest. A transaction the caller
        began and left (a claim that found nothing to claim) is rolled back here. A call made while this thread's
        kept connection is in use (a store call inside another's block) gets a connection of its own, closed after
        it: its transaction must not be the outer one's."""
        nested = self.url in _in_use()
        connection = self._connection() if nested else self._kept_connection()
        _in_use().add(self.url)
        errors = self.psycopg.errors
        try:
            yield PostgresDb(connection)
        except errors.UniqueViolation:
            raise Conflict() from None
        except Damage as e:
            raise DstackError(f"{self.description} is damaged: {e.reason}; dstack changed nothing (fix or delete "
                              "what is named)") from None
        except (errors.UndefinedTable, errors.UndefinedColumn) as e:
            raise DstackError(f"{self.description} is damaged: {_first_line(e)}; dstack changed nothing") from None
        except self.psycopg.OperationalError as e:
            raise ConnectionLost(f"lost the connection to {self.description} ({_first_line(e)}): what this command "
                              "was writing may not be recorded; `dstack ps` shows what is, run the command again") \
                from None
        except self.psycopg.Error as e:
            raise DstackError(f"{self.description}: {_first_line(e)}") from None
        finally:
            if nested:
                _close(connection)
            else:
                _in_use().discard(self.url)
                _settle(connection)

    def _kept_connection(self):
        """This thread's connection to the database, made on first use or when the last one was ended by the
        server (or this process is a fork of the one that made it)."""
        connection = _kept_connections().get(self.url)
        if connection is None or not _usable(connection):
            connection = _keep(self.url, self._connection())
        return connection

    def _connection(self):
        """A new connection (autocommit: each statement its own transaction unless `begin`); a refused one is tried
        again, CONNECT_TRIES times in all."""
        for attempt in range(CONNECT_TRIES):
            try:
                return self.psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                            application_name=APPLICATION_NAME)
            except self.psycopg.Error as e:
                failure = e
                if attempt + 1 < CONNECT_TRIES:
                    time.sleep(1.0)
        raise DstackError(f"cannot reach {self.description}: {_first_line(failure)} (tried {CONNECT_TRIES} times; "
                          "`dstack config check` reports the database)")

    def _open(self) -> None:
        if self.url in _current:
            return  # checked by this process already (a command opens the store more than once)
        with self.connect() as db:
            tables, version = schema_of(db)
            if version == SCHEMA_VERSION and TABLES <= tables:
                _current.add(self.url)
                return
            db.begin()  # made or upgraded by one laptop at a time; the others wait, then find it done
            tables, version = schema_of(db)
            if version is None:
                if tables & TABLES:
                    raise Damage(f"it holds dstack's {' and '.join(sorted(tables & TABLES))} tables but no "
                                 "dstack_schema table")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(postgres_statement(statement))
                db.execute("CREATE TABLE dstack_schema (version INTEGER NOT NULL)")
                db.execute("INSERT INTO dstack_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                if version > SCHEMA_VERSION:
                    raise DstackError(f"{self.description} was written by a newer dstack (schema {version}, this one "
                                      f"knows {SCHEMA_VERSION}); upgrade dstack")
                missing = tables_at(version) - tables
                if missing:
                    raise Damage(f"its {' and '.join(sorted(missing))} table is missing")
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS.get(step, []):
                        db.execute(postgres_statement(statement))
                db.execute("UPDATE dstack_schema SET version = ?", (SCHEMA_VERSION,))
            db.commit()


def check_team_database(url: str) -> Tuple[str, str]:
    """(ok, warn or fail, what was found) for `dstack config check`: whether the database answers, its schema
    version against this dstack's, and a round trip's time; nothing is made or upgraded."""
    description = describe(url)
    try:
        database = TeamDatabase.__new__(TeamDatabase)  # connected to without _open: a check changes nothing
        database.psycopg, database.url, database.description = _psycopg(), url, description
        started = time.monotonic()
        connection = database._connection()  # a new one, not this command's kept one: its time is what is shown
        connected = time.monotonic() - started
        _keep(url, connection)
        with database.connect() as db:
            rounds = []
            for _ in range(3):
                started = time.monotonic()
                db.execute("SELECT 1").fetchone()
                rounds.append(time.monotonic() - started)
            tables, version = schema_of(db)
    except (DstackError, Damage) as e:
        return "fail", str(e) if isinstance(e, DstackError) else f"{description} is damaged: {e.reason}"
    timing = f"connect {connected * 1000:.0f} ms, round trip {sorted(rounds)[1] * 1000:.1f} ms"
    if version is None:
        if tables & TABLES:
            return "fail", f"{description} holds dstack tables but no dstack_schema table ({timing})"
        return "ok", f"{description}: reachable, empty (the first command makes schema {SCHEMA_VERSION}); {timing}"
    if version > SCHEMA_VERSION:
        return "fail", (f"{description}: schema {version} was written by a newer dstack (this one knows "
                        f"{SCHEMA_VERSION}): upgrade dstack; {timing}")
    if version < SCHEMA_VERSION:
        return "warn", f"{description}: schema {version}, the next command upgrades it to {SCHEMA_VERSION}; {timing}"
    return "ok", f"{description}: reachable, schema {version}; {timing}"


def schema_of(db: PostgresDb) -> tuple:
    """(the tables of the connection's schema, the recorded schema version or None when there is none)."""
    tables: Set[str] = {row[0] for row in db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()}
    version: Optional[int] = None
    if "dstack_schema" in tables:
        row = db.execute("SELECT version FROM dstack_schema").fetchone()
        if row is None:
            raise Damage("its dstack_schema table is empty")
        version = row[0]
    return tables - {"dstack_schema"}, version


def _kept_connections() -> dict:
    if getattr(_kept, "pid", None) != os.getpid():
        _kept.pid, _kept.connections, _kept.in_use = os.getpid(), {}, set()
    return _kept.connections


def _in_use() -> set:
    """The URLs whose kept connection this thread is using now (inside a `connect` block)."""
    if getattr(_kept, "pid", None) != os.getpid():
        _kept_connections()
    return _kept.in_use


def _keep(url: str, connection):
    """`connection` becomes this thread's kept one for `url` (the one it replaces is closed)."""
    replaced = _kept_connections().get(url)
    if replaced is not None:
        _close(replaced)
    _kept_connections()[url] = connection
    _every_kept.append((os.getpid(), connection))
    return connection


def _usable(connection) -> bool:
    """Whether an idle kept connection can carry the next call: not closed or broken, and nothing waiting on its
    socket (an idle session gets no message but the server's goodbye: a termination, a shutdown)."""
    if connection.closed or connection.broken:
        return False
    try:
        return not select.select([connection.pgconn.socket], [], [], 0)[0]
    except Exception:  # no socket any more (psycopg says so in its own error)
        return False


def _settle(connection) -> None:
    """Leaves a kept connection idle: a transaction left open is rolled back (nothing of it is kept)."""
    if connection.closed or connection.broken:
        return
    try:
        from psycopg.pq import TransactionStatus

        if connection.info.transaction_status != TransactionStatus.IDLE:
            connection.execute("ROLLBACK")
    except Exception:  # broken meanwhile: the next call sees it and makes a new one
        pass


def _close(connection) -> None:
    try:
        connection.close()
    except Exception:  # already gone
        pass


@atexit.register
def _close_kept() -> None:
    """Ends this process's sessions politely (a forked child leaves its parent's alone: closing one would end it for
    the parent too)."""
    for pid, connection in _every_kept:
        if pid == os.getpid():
            _close(connection)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        from stacks.extras import install_command

        raise DstackError(f"a team database (DSTACK_DATABASE_URL) needs psycopg: {install_command('postgresql')}") \
            from None
    return psycopg


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
