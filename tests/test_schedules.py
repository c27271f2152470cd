"""Scheduled tasks: when the next start is (UTC), the crontab line shared by every schedule of a $DSTACK_HOME
(through a stand-in `crontab` that keeps the table in a file), kept whole when it cannot be read and when many homes
register at once; what a tick starts."""

import datetime
import json
import os
import time

import pytest

from provisioner.runs import schedules
from provisioner.runs.schedules import next_start, register, tick, unregister
from tests.helpers import ROOT, run_cli

UTC = datetime.timezone.utc


def at(*args) -> float:
    return datetime.datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("crons, after, expected", [
    (["0 8 * * mon-fri"], at(2026, 11, 28, 9, 30), at(2026, 11, 30, 8, 0)),  # Saturday -> Monday 08:00
    (["*/15 * * * *"], at(2026, 11, 27, 10, 14, 59), at(2026, 11, 27, 10, 15)),
    (["*/15 * * * *"], at(2026, 11, 27, 10, 15), at(2026, 11, 27, 10, 30)),  # strictly after
    (["30 23 * * *", "0 6 * * *"], at(2026, 11, 27, 12, 0), at(2026, 11, 27, 23, 30)),
    (["0 0 29 feb *"], at(2026, 11, 27), at(2028, 2, 29)),  # the next leap day
    (["0 12 1,15 * mon"], at(2026, 11, 27), at(2026, 11, 30, 12)),  # both day fields restricted: either matches
])
def test_next_start_is_the_first_matching_minute_after(crons, after, expected):
    assert next_start(crons, after) == expected


def test_an_expression_that_never_matches_has_no_next_start():
    assert next_start(["0 0 30 2 *"], at(2026, 1, 1)) is None


@pytest.fixture
def crontab(tmp_path, monkeypatch):
    """A stand-in `crontab` (-l prints the table or fails when there is none, - installs stdin); the table's file.
    $CRONTAB_LIST_FAILS makes -l fail with that message; $CRONTAB_LIST_SLEEP makes it take that long (seconds)."""
    table = tmp_path / "crontab.txt"
    tool = tmp_path / "bin" / "crontab"
    tool.parent.mkdir()
    tool.write_text(f"""#!/bin/sh
case "$1" in
  -l) [ -z "$CRONTAB_LIST_FAILS" ] || {{ echo "$CRONTAB_LIST_FAILS" >&2; exit 1; }}
      [ -f {table} ] || {{ echo "no crontab for $(id -un)" >&2; exit 1; }}
      cat {table}; sleep "${{CRONTAB_LIST_SLEEP:-0}}" ;;
  -) cat > {table} ;;
  *) exit 2 ;;
esac
""")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")
    return table


def test_one_crontab_line_serves_every_schedule_and_goes_with_the_last(crontab, dstack_home):
    crontab.write_text("0 3 * * * backup.sh\n")
    register("nightly", "/src/nightly.dstack.yml", ["0 2 * * *"], at(2026, 11, 27))
    register("hourly", "/src/hourly.dstack.yml", ["0 * * * *"], at(2026, 11, 27))
    lines = crontab.read_text().splitlines()
    assert lines[0] == "0 3 * * * backup.sh" and len(lines) == 2
    assert lines[1].startswith("* * * * * DSTACK_HOME=") and "schedule tick" in lines[1]
    assert f" PYTHONPATH={ROOT} " in lines[1]  # the folder holding `cli`, so that cron runs this very code
    assert lines[1].endswith(f"{schedules.CRON_MARK} {dstack_home}")
    assert (dstack_home / "schedules.json").stat().st_mode & 0o777 == 0o600
    assert unregister("nightly") and len(crontab.read_text().splitlines()) == 2
    assert not unregister("nightly")
    assert unregister("hourly") and crontab.read_text().splitlines() == ["0 3 * * * backup.sh"]


def test_without_cron_the_message_says_what_to_do(dstack_home, monkeypatch, tmp_path):
    from configuration.errors import ConfigurationError

    monkeypatch.setenv("PATH", str(tmp_path))  # no crontab anywhere
    with pytest.raises(ConfigurationError, match="dstack schedule run"):
        register("nightly", "/src/n.dstack.yml", ["0 2 * * *"], at(2026, 11, 27))


def test_a_tick_starts_what_is_due_and_not_running(crontab, dstack_home):
    register("due", "/src/due.dstack.yml", ["0 2 * * *"], at(2026, 11, 27, 1, 0))
    register("busy", "/src/busy.dstack.yml", ["0 2 * * *"], at(2026, 11, 27, 1, 0))
    register("later", "/src/later.dstack.yml", ["0 5 * * *"], at(2026, 11, 27, 1, 0))
    started, said = [], []
    names = tick(at(2026, 11, 27, 2, 0, 20), start=lambda e: started.append((e.name, e.source)),
                 busy=lambda name: name == "busy", say=said.append)
    assert names == ["due"] and started == [("due", "/src/due.dstack.yml")]
    assert said == ["busy: its last start is still running; skipping this one"]
    book = schedules.ScheduleBook().entries()
    assert book["due"].next_at == at(2026, 11, 28, 2, 0) and book["due"].starts == 1
    assert book["busy"].next_at == at(2026, 11, 28, 2, 0) and book["busy"].starts == 0
    assert book["later"].next_at == at(2026, 11, 27, 5, 0)
    assert tick(at(2026, 11, 27, 2, 1), start=started.append, busy=lambda name: False) == []


def test_a_start_that_fails_is_said_and_the_others_go_on(crontab, dstack_home):
    register("broken", "/src/a.dstack.yml", ["* * * * *"], at(2026, 11, 27))
    register("fine", "/src/b.dstack.yml", ["* * * * *"], at(2026, 11, 27))
    said, started = [], []

    def start(entry):
        if entry.name == "broken":
            raise RuntimeError("the file is gone")
        started.append(entry.name)

    assert sorted(tick(at(2026, 11, 27, 0, 5), start=start, busy=lambda n: False, say=said.append)) == \
        ["broken", "fine"]
    assert started == ["fine"] and said == ["broken: could not start: the file is gone"]


def test_a_scheduled_task_is_registered_started_by_a_tick_and_removed_by_stop(crontab, dstack_home, tmp_path):
    """Through the CLI, on this machine: apply registers (nothing runs), a tick at the due minute starts NAME-1
    detached, `dstack stop NAME` removes the schedule and the crontab line."""

    from cli.commands.schedule import start_scheduled
    from provisioner.runs.schedules import ScheduleBook

    conf = tmp_path / "nightly.dstack.yml"
    conf.write_text("type: task\nname: nightly\ncommands: ['echo started by cron']\nschedule: {cron: '0 2 * * *'}\n")
    env = {"DSTACK_HOME": str(dstack_home), "PATH": os.environ["PATH"]}
    plan = run_cli("apply", "-f", str(conf), "--dry-run", env=env)
    assert plan.returncode == 0 and "schedule 0 2 * * * (UTC)" in plan.stdout + plan.stderr
    applied = run_cli("apply", "-f", str(conf), "-y", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "Scheduled nightly (0 2 * * *): next start" in applied.stderr
    assert json.loads(run_cli("ps", "-a", "--json", env=env).stdout)["runs"] == []  # nothing ran
    assert "schedule tick" in crontab.read_text()
    listed = json.loads(run_cli("schedule", "list", "--json", env=env).stdout)["schedules"]
    assert [(e["name"], e["crons"], e["starts"]) for e in listed] == [("nightly", ["0 2 * * *"], 0)]

    due = ScheduleBook().entries()["nightly"].next_at
    assert tick(due, start=start_scheduled, busy=lambda name: False) == ["nightly"]
    runs = json.loads(run_cli("ps", "-a", "--json", env=env).stdout)["runs"]
    assert [r["name"] for r in runs] == ["nightly-1"]
    deadline = time.monotonic() + 30
    while "started by cron" not in run_cli("logs", "nightly-1", env=env).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "started by cron" in run_cli("logs", "nightly-1", env=env).stdout

    stopped = run_cli("stop", "nightly", "-y", env=env)
    assert stopped.returncode == 0 and "Removed the schedule of nightly" in stopped.stderr
    assert "schedule tick" not in crontab.read_text()
    assert json.loads(run_cli("schedule", "list", "--json", env=env).stdout)["schedules"] == []


def test_a_scheduled_task_from_stdin_is_refused(crontab, dstack_home):

    result = run_cli("apply", "-f", "-", "-y", env={"DSTACK_HOME": str(dstack_home), "PATH": os.environ["PATH"]},
                     input="type: task\ncommands: [x]\nschedule: {cron: '0 2 * * *'}\n")
    assert result.returncode == 1 and "needs a file (-f FILE)" in result.stderr


def scheduled_task(tmp_path, name="nightly") -> str:
    from tests.helpers import write

    return write(tmp_path, f"{name}.dstack.yml", f"type: task\nname: {name}\ncommands: [echo]\n"
                 "schedule: {cron: '0 2 * * *'}\n")


def test_a_crontab_that_cannot_be_read_is_left_as_it_is(crontab, dstack_home, tmp_path, monkeypatch):
    """Only crontab's own "no crontab for USER" means an empty table; any other failure refuses, with its text."""


    conf = scheduled_task(tmp_path)
    crontab.write_text("0 3 * * * backup.sh\n")
    monkeypatch.setenv("CRONTAB_LIST_FAILS", "crontab: Permission denied")
    refused = run_cli("apply", "-f", conf, "-y")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines()[-1] == \
        "error: cannot read your crontab: `crontab -l` said: crontab: Permission denied; it was left as it is"
    assert crontab.read_text() == "0 3 * * * backup.sh\n"
    assert json.loads(run_cli("schedule", "list", "--json").stdout)["schedules"] == []  # not registered

    monkeypatch.delenv("CRONTAB_LIST_FAILS")
    assert run_cli("apply", "-f", conf, "-y").returncode == 0
    with_tick = crontab.read_text()
    monkeypatch.setenv("CRONTAB_LIST_FAILS", "crontab: Permission denied")
    stopped = run_cli("stop", "nightly", "-y")
    assert stopped.returncode == 1 and "crontab: Permission denied; it was left as it is" in stopped.stderr
    assert crontab.read_text() == with_tick
    monkeypatch.delenv("CRONTAB_LIST_FAILS")
    assert [e["name"] for e in json.loads(run_cli("schedule", "list", "--json").stdout)["schedules"]] == ["nightly"]


def test_homes_registering_at_once_all_get_their_tick_line(crontab, tmp_path, monkeypatch):
    """Ten $DSTACK_HOMEs of one user apply a scheduled task at once (a slow `crontab -l` widens the window between
    reading the table and writing it back): every tick line is there, and the user's own line too."""
    from concurrent.futures import ThreadPoolExecutor


    conf = scheduled_task(tmp_path)
    crontab.write_text("0 3 * * * backup.sh\n")
    monkeypatch.setenv("CRONTAB_LIST_SLEEP", "0.3")
    homes = [tmp_path / f"home-{i}" for i in range(10)]
    with ThreadPoolExecutor(len(homes)) as pool:
        results = list(pool.map(lambda home: run_cli("apply", "-f", conf, "-y", env={"DSTACK_HOME": str(home)}),
                                homes))
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    lines = crontab.read_text().splitlines()
    assert lines[0] == "0 3 * * * backup.sh" and len(lines) == 11
    assert sorted(line.rpartition(f"{schedules.CRON_MARK} ")[2] for line in lines[1:]) == sorted(map(str, homes))


def test_a_schedule_without_its_tick_line_says_so_in_the_list(crontab, dstack_home, tmp_path):


    assert run_cli("apply", "-f", scheduled_task(tmp_path), "-y").returncode == 0
    listed = run_cli("schedule", "list")
    assert listed.returncode == 0 and "no tick" not in listed.stdout + listed.stderr
    assert [e["ticking"] for e in json.loads(run_cli("schedule", "list", "--json").stdout)["schedules"]] == [True]

    crontab.write_text("0 3 * * * backup.sh\n")  # the user removed the line, or a lost update did
    listed = run_cli("schedule", "list")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.split()[0] == "nightly")
    assert "no tick line" in row
    assert listed.stderr == (f"warning: your crontab has no `dstack schedule tick` line for {dstack_home}, so these "
                             "schedules never start: `dstack apply` one of them again to put the line back, or keep "
                             "`dstack schedule run` running\n")
    assert [e["ticking"] for e in json.loads(run_cli("schedule", "list", "--json").stdout)["schedules"]] == [False]


def test_a_damaged_schedule_book_says_how_to_remove_its_tick_line(crontab, dstack_home, tmp_path):
    assert run_cli("apply", "-f", scheduled_task(tmp_path), "-y").returncode == 0
    (dstack_home / "schedules.json").write_text("{not json")
    listed = run_cli("schedule", "list")
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    assert "crontab -e" in listed.stderr and f"# dstack schedule tick for {dstack_home}" in listed.stderr
    assert "schedule off" not in listed.stderr
