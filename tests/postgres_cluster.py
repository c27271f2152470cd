"""A throwaway PostgreSQL cluster for the team-database tests: made with `initdb` in a temporary folder, run as the
unprivileged `nobody` (PostgreSQL refuses root), listening on a Unix socket in that folder only (no TCP), stopped
and removed at the end. One per test session (per xdist worker); each test gets a schema of its own in one database
(its URL sets the search_path), which is made in milliseconds where a database takes half a second.

pg_ctl detaches the server, so a test run that is killed (SIGKILL, a CI timeout) would leave it running: a watchdog
started with the cluster waits on a pipe that only this process writes to, and stops and removes the cluster at its
end of file, which comes when this process ends, however it ends."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shlex
import signal
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import pytest

_RUN_AS = "nobody"


def postgres_bin() -> Optional[Path]:
    """The newest installed PostgreSQL's bin folder (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The bin folder of the PostgreSQL a cluster is made with; skips the test where there is none to make."""
    found = postgres_bin()
    if found is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    if shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("the test cluster is started as `nobody` with runuser, which needs root")
    return found


class Cluster:
    def __init__(self):
        self.bin = require_postgres()
        self.folder = Path(tempfile.mkdtemp(prefix="dstack-pg-"))
        user = pwd.getpwnam(_RUN_AS)
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.data = self.folder / "data"
        self.names = itertools.count()
        self.watchdog: Optional[subprocess.Popen] = None

    def _stop_command(self) -> list:
        return ["runuser", "-u", _RUN_AS, "--", str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                "stop"]

    def _start_watchdog(self) -> None:
        """In a session of its own, so a Ctrl-C to the test run's process group does not end it before the run."""
        script = (f"cat > /dev/null; {shlex.join(self._stop_command())} > /dev/null 2>&1; "
                  f"rm -rf {shlex.quote(str(self.folder))}")
        self.watchdog = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)

    def _as_owner(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", _RUN_AS, "--", *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> "Cluster":
        self._start_watchdog()
        self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--no-sync")
        options = (f"-k {self.folder} -c listen_addresses='' -F -c max_connections=300 -c shared_buffers=16MB "
                   "-c log_connections=on")  # the log counts the sessions a command opens
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                       str(self.folder / "log"), "-w", "start")
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE team TEMPLATE template0")
        return self

    def url(self, schema: Optional[str] = None, database: str = "postgres") -> str:
        options = f"&options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql://postgres@/{database}?host={self.folder}{options}"

    def new_database(self) -> str:
        """The URL of a fresh, empty team database (a schema of its own)."""
        import psycopg

        name = f"t_{next(self.names)}"
        with psycopg.connect(self.url(database="team"), autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {name}")
        return self.url(name, database="team")

    def connections(self) -> int:
        """How many sessions were opened to the team databases since the cluster started (its log's `connection
        authorized` lines): the sessions a command opened, counted around it."""
        return (self.folder / "log").read_text().count("connection authorized: user=postgres database=team")

    def stop(self) -> None:
        try:
            subprocess.run(self._stop_command(), check=True, capture_output=True, timeout=120)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.watchdog is not None:  # its work is done: it goes, with the `cat` it waits on
                os.killpg(self.watchdog.pid, signal.SIGKILL)
                self.watchdog.wait()
                self.watchdog.stdin.close()
