"""Scheduled tasks (`schedule: {cron: ...}`): there is no server to wake a run up, so the user's own cron does.

`dstack apply` of a task with a schedule registers it in `$DSTACK_HOME/schedules.json` (the configuration file's
path, its cron expressions, the next start) and makes sure the user's crontab holds one line, shared by every
schedule of this `$DSTACK_HOME`, that runs `dstack schedule tick` every minute. A tick starts, detached, each
scheduled run whose time has come and whose previous start has ended, as `dstack apply -f FILE -d` would, reading
the file (and its secrets) then, never from a copy. `dstack stop NAME` or `dstack delete NAME` removes the schedule;
with the last one goes the crontab line. Where there is no cron, `dstack schedule run` ticks in the foreground.
Times are UTC, as dstack's.

The crontab is the OS user's, shared by every `$DSTACK_HOME` of that user, and a change to it reads the table,
edits it and writes it back: changes are serialized by a lock every home of the user finds (crontab_lock_path), and
a table that cannot be read is never taken for an empty one (only crontab's own "no crontab for USER" means that).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from configuration.cron import parse_cron
from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_dir

CRON_MARK = "# dstack schedule tick for"
SEARCH_DAYS = 4 * 366 + 1  # every day of week of every date, leap days included


@dataclass
class Scheduled:
    name: str
    source: str  # the configuration file, absolute
    crons: List[str]
    next_at: Optional[float]  # the next start (epoch seconds); None: the expressions never match
    registered_at: float
    starts: int = 0  # how many times it has been started


def next_start(crons: Sequence[str], after: float) -> Optional[float]:
    """The first whole minute after `after` (UTC) that any of the expressions matches."""
    start = datetime.datetime.fromtimestamp(after, datetime.timezone.utc).replace(second=0, microsecond=0) + \
        datetime.timedelta(minutes=1)
    parsed = [parse_cron(text) for text in crons]
    found = []
    for cron in parsed:
        day = start.replace(hour=0, minute=0)
        for _ in range(SEARCH_DAYS):
            moment = _first_in_day(cron, day, start)
            if moment is not None:
                found.append(moment)
                break
            day += datetime.timedelta(days=1)
    return min(found).timestamp() if found else None


def _first_in_day(cron, day: datetime.datetime, not_before: datetime.datetime) -> Optional[datetime.datetime]:
    if day.month not in cron.months or not cron.matches(day.replace(hour=min(cron.hours), minute=min(cron.minutes))):
        return None
    for hour in sorted(cron.hours):
        for minute in sorted(cron.minutes):
            moment = day.replace(hour=hour, minute=minute)
            if moment >= not_before:
                return moment
    return None


class ScheduleBook:
    """`$DSTACK_HOME/schedules.json`, read and written under a lock (a tick and an apply may meet)."""

    def __init__(self):
        self.path = dstack_home() / "schedules.json"

    @contextmanager
    def editing(self) -> Iterator[Dict[str, Scheduled]]:
        private_dir(self.path.parent)
        with open(os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            tmp = self.path.with_suffix(".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump({name: asdict(entry) for name, entry in entries.items()}, f, indent=1)
            os.replace(tmp, self.path)

    def entries(self) -> Dict[str, Scheduled]:
        return self._read()

    def _read(self) -> Dict[str, Scheduled]:
        if not self.path.exists():
            return {}
        try:
            return {name: Scheduled(**value) for name, value in json.loads(self.path.read_text()).items()}
        except (ValueError, TypeError) as e:
            raise ConfigurationError(f"{self.path} is damaged ({e}): fix or remove it; the schedules it held are "
                                     "then gone; its tick line stays in your crontab until you remove the line that ends in "
                                     f"`{CRON_MARK} {dstack_home()}` (`crontab -e`)") from None


def register(name: str, source: str, crons: Sequence[str], now: float) -> Scheduled:
    """Adds the schedule once the crontab holds the tick line (a schedule no tick would start is not kept); the
    crontab changes under the book's lock, so that an unregister of this home cannot remove the line in between."""
    entry = Scheduled(name, source, list(crons), next_start(crons, now), now)
    with ScheduleBook().editing() as entries:
        install_tick()
        entries[name] = entry
    return entry


def unregister(name: str) -> bool:
    """Removes the schedule (and, with the last one, the crontab line); False when `name` has none. Where the crontab
    cannot be changed, the schedule stays."""
    with ScheduleBook().editing() as entries:
        found = entries.pop(name, None) is not None
        if found and not entries:
            remove_tick()
    return found


def tick(now: float, start: Callable[[Scheduled], None], busy: Callable[[str], bool],
         say: Callable[[str], None] = lambda _: None) -> List[str]:
    """Starts every schedule whose time has come and whose last start has ended (`busy`); returns their names.
    A start that fails is said and counted; the schedule goes on."""
    started = []
    with ScheduleBook().editing() as entries:
        due = [e for e in entries.values() if e.next_at is not None and e.next_at <= now]
        for entry in due:
            entry.next_at = next_start(entry.crons, now)
            if busy(entry.name):
                say(f"{entry.name}: its last start is still running; skipping this one")
                continue
            entry.starts += 1
            started.append(entry)
    for entry in started:  # outside the lock: a start provisions, which takes a while
        try:
            start(entry)
        except Exception as e:  # one failed start must not stop the others; cron mails or logs what is said
            say(f"{entry.name}: could not start: {e}")
    return [e.name for e in started]


# --- the crontab line -----------------------------------------------------------------------------------------

def code_root() -> str:
    """The folder holding this installation's packages: a start runs the same code as the `dstack` that set it up."""
    return str(Path(__file__).resolve().parents[2])


def tick_line() -> str:
    home = str(dstack_home())
    log = os.path.join(home, "schedules.log")
    command = " ".join(shlex.quote(w) for w in (sys.executable, "-m", "cli.main", "schedule", "tick"))
    return (f"* * * * * DSTACK_HOME={shlex.quote(home)} PYTHONPATH={shlex.quote(code_root())} {command} "
            f">> {shlex.quote(log)} 2>&1 {CRON_MARK} {home}")


def crontab_lock_path() -> Path:
    """The lock that serializes our changes to the crontab. `crontab` edits the table of the user its real uid names,
    whatever `$DSTACK_HOME` says, so the lock is one file per uid: in the home directory the user database gives that
    uid. Not under `$DSTACK_HOME` (one per home), nor `$HOME` (sudo, cron or a script may set it otherwise), nor
    `$XDG_RUNTIME_DIR` (unset under cron), nor /tmp (another user could take the name first)."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid the user database lacks (some containers): crontab itself will say what is wrong
        home = str(Path.home())
    return Path(home) / ".dstack-crontab.lock"


@contextmanager
def _crontab_lock() -> Iterator[None]:
    path = crontab_lock_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise ConfigurationError(f"cannot open {path}, the lock that keeps changes to your crontab apart: "
                                 f"{e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_NO_CRONTAB = re.compile(r"^(crontab: )?no crontab for \S+$")  # crontab's own words for an empty table


class NoCron(ConfigurationError):
    def __init__(self):
        super().__init__("`schedule` needs cron (`crontab`), which is not installed: install cron, or start "
                         "`dstack schedule run` and keep it running")


class CrontabUnreadable(ConfigurationError):
    def __init__(self, said: str):
        super().__init__(f"cannot read your crontab: `crontab -l` said: {said}; it was left as it is")
        self.said = said


def _crontab() -> List[str]:
    """The user's crontab, one line per item; [] only where crontab says there is none yet. Any other failure
    (permission denied, a broken spool) refuses, so that writing back what was read never loses the user's lines."""
    try:
        listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        raise NoCron() from None
    if listed.returncode == 0:
        return listed.stdout.splitlines()
    said = "; ".join(line.strip() for line in listed.stderr.splitlines() if line.strip())
    if _NO_CRONTAB.match(said):
        return []
    raise CrontabUnreadable(said or f"exit {listed.returncode}")


def _write_crontab(lines: List[str]) -> None:
    done = subprocess.run(["crontab", "-"], input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise ConfigurationError(f"could not update the crontab: {done.stderr.strip()}")


def _ours(line: str) -> bool:
    return line.endswith(f"{CRON_MARK} {dstack_home()}")


def install_tick() -> None:
    with _crontab_lock():
        lines = _crontab()
        if not any(_ours(line) for line in lines):
            _write_crontab(lines + [tick_line()])


def remove_tick() -> None:
    with _crontab_lock():
        lines = _crontab()
        kept = [line for line in lines if not _ours(line)]
        if kept != lines:
            _write_crontab(kept)


def cron_missing() -> Optional[str]:
    """Why `apply` could not register a schedule (no `crontab` to put its tick line in); None when it can."""
    import shutil

    return None if shutil.which("crontab") else str(NoCron())


def tick_missing() -> Optional[str]:
    """Why nothing starts this home's schedules (no tick line in the crontab, or a crontab that cannot be read);
    None when the line is there."""
    try:
        lines = _crontab()
    except NoCron:
        return "cron is not installed (no `crontab`)"
    except CrontabUnreadable as e:
        return f"your crontab cannot be read (`crontab -l` said: {e.said})"
    if any(_ours(line) for line in lines):
        return None
    return f"your crontab has no `dstack schedule tick` line for {dstack_home()}"
