"""Ctrl-C on an attached `dstack apply`, as dstack does it: in a terminal it asks "Stop the run before detaching?",
with `-y` (or no terminal) it detaches, a second Ctrl-C while asked aborts; SIGTERM and SIGHUP stop and tear down."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ROOT, run_cli, write


def ps(env):
    result = run_cli("ps", "-a", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)["runs"]}


def in_terminal(args, env):
    """`dstack ARGS` with a terminal for stdin, stdout and stderr, as a person runs it."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=dict(os.environ, **env),
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    return process, controller


def read_until(controller, needle: bytes, process=None, timeout=30) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in seen or (process is not None and process.poll() is not None and needle == b""):
            return seen
        if select.select([controller], [], [], 0.2)[0]:
            try:
                seen += os.read(controller, 4096)
            except OSError:
                break
    if needle in seen:
        return seen
    raise AssertionError(f"{needle!r} never came; saw {seen!r}")


def job_alive(env, name) -> bool:
    """Whether a process of the job's group still runs. A killed process that init has not reaped yet (a zombie:
    this machine's init reaps orphans late) is not running: killpg(pgid, 0) would still find it."""
    group = int((Path(env["DSTACK_HOME"]) / "jobs" / name / "pid").read_text().strip())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, ...
            return True
    return False


def task(tmp_path, name):
    return write(tmp_path, f"{name}.dstack.yml", f"type: task\nname: {name}\ncommands: [echo running, sleep 300]\n")


def finish(process, controller, env, name):
    os.close(controller)
    if process.poll() is None:
        process.kill()
        process.wait(10)
    run_cli("stop", name, "-x", "-y", env=env)


def test_ctrl_c_with_yes_detaches_and_the_job_goes_on(tmp_path, home_env):
    process, controller = in_terminal(["apply", "-f", task(tmp_path, "cc-yes"), "-y"], home_env)
    try:
        read_until(controller, b"running")
        process.send_signal(signal.SIGINT)
        shown = read_until(controller, b"Detached", process).decode(errors="replace")
        assert process.wait(30) == 0
        assert "Stop the run" not in shown and "Traceback" not in shown
        run = ps(home_env)["cc-yes"]
        assert run["status"] == "running" and job_alive(home_env, "cc-yes")
    finally:
        finish(process, controller, home_env, "cc-yes")


def test_ctrl_c_without_a_terminal_detaches(tmp_path, home_env):
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", task(tmp_path, "cc-pipe")], cwd=ROOT,
                               env=dict(os.environ, **home_env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        process.stdin.write(b"y\n")
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while ps(home_env).get("cc-pipe", {}).get("status") != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, process.stderr.read()
        assert ps(home_env)["cc-pipe"]["status"] == "running" and job_alive(home_env, "cc-pipe")
    finally:
        if process.poll() is None:
            process.kill()
        run_cli("stop", "cc-pipe", "-x", "-y", env=home_env)


def test_ctrl_c_in_a_terminal_asks_and_no_detaches(tmp_path, home_env):
    process, controller = in_terminal(["apply", "-f", task(tmp_path, "cc-ask")], home_env)
    try:
        read_until(controller, b"Submit the run?")
        os.write(controller, b"y\n")
        read_until(controller, b"running")
        process.send_signal(signal.SIGINT)
        read_until(controller, b"Stop the run cc-ask before detaching?")
        os.write(controller, b"n\n")
        read_until(controller, b"Detached", process)
        assert process.wait(30) == 0
        assert ps(home_env)["cc-ask"]["status"] == "running" and job_alive(home_env, "cc-ask")
    finally:
        finish(process, controller, home_env, "cc-ask")


def test_ctrl_c_in_a_terminal_asks_and_yes_stops(tmp_path, home_env):
    process, controller = in_terminal(["apply", "-f", task(tmp_path, "cc-stop")], home_env)
    try:
        read_until(controller, b"Submit the run?")
        os.write(controller, b"y\n")
        read_until(controller, b"running")
        process.send_signal(signal.SIGINT)
        read_until(controller, b"before detaching?")
        os.write(controller, b"y\n")
        assert process.wait(30) == 130
        run = ps(home_env)["cc-stop"]
        assert (run["status"], run["reason"]) == ("terminated", "interrupted")
        assert not job_alive(home_env, "cc-stop")
    finally:
        finish(process, controller, home_env, "cc-stop")


def test_second_ctrl_c_while_asked_aborts(tmp_path, home_env):
    name = "cc-abort"  # a job that ignores SIGTERM: only an abort (no grace period) ends it at once
    conf = write(tmp_path, "a.dstack.yml", f"type: task\nname: {name}\nstop_duration: 60s\n"
                 "commands: [\"trap '' TERM; echo running; while true; do sleep 1; done\"]\n")
    process, controller = in_terminal(["apply", "-f", conf], home_env)
    try:
        read_until(controller, b"Submit the run?")
        os.write(controller, b"y\n")
        read_until(controller, b"running")
        process.send_signal(signal.SIGINT)
        read_until(controller, b"before detaching?")
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
        assert time.monotonic() - started < 20  # not the 60s grace period
        run = ps(home_env)[name]
        assert (run["status"], run["reason"]) == ("terminated", "aborted")
        assert not job_alive(home_env, name)
    finally:
        finish(process, controller, home_env, name)


def test_sigterm_still_stops_and_tears_down_with_yes(tmp_path, home_env):
    process, controller = in_terminal(["apply", "-f", task(tmp_path, "cc-term"), "-y"], home_env)
    try:
        read_until(controller, b"running")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
        run = ps(home_env)["cc-term"]
        assert (run["status"], run["reason"]) == ("terminated", "interrupted")
        assert not job_alive(home_env, "cc-term")
    finally:
        finish(process, controller, home_env, "cc-term")
