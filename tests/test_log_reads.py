"""What a read of a job's log and state asks of its host's shell (provisioner.jobs.control): every edge case reads
the same under dash, bash and busybox's tools (whose tail has no --pid: the shell polls), and a read starts as few
programs as it can: the shell's own `read` for the one-line files (pid, exit_code), one program for the log, no
probe on a first read (on 2 cores, 16 nodes' hosts share the client's CPU: each program started is ~1 ms of it)."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import LOG_READ_LIMIT, LogChunk, job_begun, job_state, read_log, start_job, stop_job
from provisioner.jobs.layout import EndedByDstack
from provisioner.jobs.script import JobSpec
from provisioner.jobs.spot_notice import NOTICE_FILE

LOGGED = ("cat", "tail", "head", "dd", "timeout", "sleep", "date", "stat", "wc")


def shell_path(tmp_path: Path, kind: str) -> str:
    """A PATH whose `sh` is `kind` ("busybox": busybox's sh and log tools, as on an Alpine host)."""
    folder = tmp_path / f"tools-{kind}"
    folder.mkdir()
    if kind == "busybox":
        if shutil.which("busybox") is None:
            pytest.skip("busybox is not installed")
        for tool in ("sh", "tail", "head", "dd", "timeout", "cat", "sleep"):
            (folder / tool).symlink_to(shutil.which("busybox"))
    else:
        (folder / "sh").symlink_to(shutil.which(kind))
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def logged_path(tmp_path: Path) -> tuple:
    """(a PATH where each program a read may start writes its command line to a log first, the log's path)."""
    folder, log = tmp_path / "logged", tmp_path / "programs.log"
    folder.mkdir()
    for tool in LOGGED:
        real = shutil.which(tool)
        (folder / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexec {real} "$@"\n')
        (folder / tool).chmod(0o755)
    log.write_text("")
    return f"{folder}{os.pathsep}{os.environ['PATH']}", log


def started(log: Path) -> list:
    """The programs logged since the last call (their names)."""
    names = [line.split()[0] for line in log.read_text().splitlines()]
    log.write_text("")
    return names


@pytest.mark.parametrize("kind", ["dash", "bash", "busybox"])
def test_each_edge_case_of_a_log_read_is_the_same_under_each_shell_and_toolset(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    local = LocalTransport(str(tmp_path / "jobs"))
    folder = tmp_path / "jobs" / "r"
    folder.mkdir(parents=True)
    assert read_log(local, "r", 0) == read_log(local, "r", 5, limit=3) == read_log(local, "gone", 0)
    assert read_log(local, "r", 0).data == b"" and read_log(local, "r", 0).exit_code is None  # no log yet
    (folder / "output.log").write_bytes(b"hello world\n")
    assert read_log(local, "r", 0).data == b"hello world\n" and read_log(local, "r", 0, limit=5).data == b"hello"
    assert read_log(local, "r", 6, limit=3).data == b"wor" and read_log(local, "r", 6, limit=99).data == b"world\n"
    assert read_log(local, "r", 6).data == b"world\n"
    assert read_log(local, "r", 12, limit=5).data == b"" == read_log(local, "r", 100, limit=5).data  # past the end
    big = bytes(range(256)) * 9000
    (folder / "output.log").write_bytes(big)
    pieces, offset = [], 0
    while not pieces or len(pieces[-1]) == 1 << 20:
        pieces.append(read_log(local, "r", offset, limit=1 << 20).data)
        offset += len(pieces[-1])
    assert b"".join(pieces) == big and len(pieces) == 3
    assert job_state(local, "r") == ("missing", None) and job_begun(local, "r") == (False, None)
    (folder / "exit_code").write_text("7")  # (no newline: still read)
    assert read_log(local, "r", len(big)).exit_code == 7 and job_state(local, "r") == ("exited", 7)
    (folder / "exit_code").write_text("124 max_duration\n")
    assert isinstance(read_log(local, "r", 0, limit=5).exit_code, EndedByDstack)
    assert isinstance(job_state(local, "r")[1], EndedByDstack)
    (folder / NOTICE_FILE).write_text("spot interruption notice from AWS: terminate at T\n")
    chunk = read_log(local, "r", 2, limit=3)
    assert (chunk.data, chunk.exit_code, chunk.notice) == (big[2:5], 124, "spot interruption notice from AWS: "
                                                                          "terminate at T")
    assert read_log(local, "gone", 0, wait=20).exit_code is None  # no job folder: no wait either


@pytest.mark.parametrize("kind", ["dash", "bash", "busybox"])
def test_a_first_read_waits_for_the_first_byte_the_end_or_its_bound_under_each_toolset(tmp_path, monkeypatch, kind):
    """GNU tail follows the log; busybox's tail has no --pid, and the shell polls instead: the same answers."""
    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="partial", commands=["sleep 1", "printf partial", "sleep 30"]))
    start_job(local, JobSpec(run_name="silent", commands=["sleep 30"]))
    start_job(local, JobSpec(run_name="ends", commands=["sleep 0.5", "exit 3"]))
    try:
        began = time.monotonic()
        assert read_log(local, "partial", 0, wait=20).data == b"partial"  # a first byte, no line end yet
        assert time.monotonic() - began < 10
        began = time.monotonic()
        assert read_log(local, "silent", 0, wait=1.5).data == b""
        assert 1.3 < time.monotonic() - began < 8
        assert job_state(local, "silent")[0] == "running"
        assert (read_log(local, "ends", 0, wait=20).data, read_log(local, "ends", 0).exit_code) == (b"", 3)
    finally:
        for name in ("partial", "silent", "ends"):
            stop_job(local, name, grace=0)


@pytest.mark.parametrize("kind", ["dash", "bash", "busybox"])
def test_an_exit_code_written_a_moment_after_the_jobs_end_comes_with_the_read_that_waited(tmp_path, monkeypatch,
                                                                                        kind):
    """The wrapper writes exit_code after the job's process is gone: a read that waited (for the first bytes, or
    the next ones) and saw the job end has it too. GNU tail follows until the job's parent, its wrapper, has ended
    (--pid), having written it; where the job was gone already, the shell polls for it, as where busybox's tail has
    no --pid."""
    import subprocess

    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    local = LocalTransport(str(tmp_path / "jobs"))
    for name, offset, gone in (("late-code", 0, False), ("late-code-later", 6, False), ("gone", 6, True)):
        folder = tmp_path / "jobs" / name
        folder.mkdir(parents=True)
        (folder / "output.log").write_bytes(b"start\n"[:offset])
        # as the wrapper does: the job in the background, its exit code written by the wrapper a moment after
        wrapper = subprocess.Popen(["sh", "-c", "sleep 0.5 & echo $! > pid; wait; sleep 0.3; "
                                    "echo 5 > exit_code.tmp; mv exit_code.tmp exit_code"], cwd=folder)
        deadline = time.monotonic() + 10
        pid = folder / "pid"  # waited for until it holds the number (it is there, empty, for a moment)
        while not (pid.exists() and pid.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if gone:
            time.sleep(0.6)  # the job has ended, its exit code not written yet
        began = time.monotonic()
        try:
            chunk = read_log(local, name, offset, limit=LOG_READ_LIMIT, wait=20)
        finally:
            wrapper.wait()
        assert (chunk.data, chunk.exit_code) == (b"", 5 if kind != "busybox" or offset == 0 else None), name
        assert time.monotonic() - began < 5
        if chunk.exit_code is not None:  # the read returned as the exit code came
            assert time.time() - (folder / "exit_code").stat().st_mtime < 0.4, name


def read_while_written_to(folder, local, pid: int, before: bytes, big: bytes, last_file: str, last_line: str,
                          limits: dict) -> tuple:
    """A waiting read of the job `pid`'s log in `folder` from byte len(`before`) on, while, 0.5 s in, `big` is
    appended to the log and then `last_file` (the exit code, the notice) appears holding `last_line`: what it got.
    Where the read ended with its first bytes before the last file came (a race the writer may win or lose), the
    next read, within what is left of the limit, has the rest: their bytes together, in order, and its last file."""
    folder.mkdir(parents=True)
    (folder / "pid").write_text(f"{pid}\n")
    (folder / "output.log").write_bytes(before)

    def write() -> None:  # as a job's end: its last bytes, then the exit code (or the notice's file)
        time.sleep(0.5)
        with open(folder / "output.log", "ab") as log:
            log.write(big)
        (folder / "last.tmp").write_text(last_line)
        (folder / "last.tmp").rename(folder / last_file)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        chunk = read_log(local, folder.name, len(before), wait=20, **limits)
    finally:
        writer.join()
    if chunk.exit_code is None and chunk.notice is None:
        left = {"limit": limits["limit"] - len(chunk.data)} if "limit" in limits else {}
        rest = read_log(local, folder.name, len(before) + len(chunk.data), wait=20, **left)
        return chunk.data + rest.data, rest.exit_code, rest.notice
    return chunk.data, chunk.exit_code, chunk.notice


@pytest.mark.parametrize("kind", ["dash", "bash", "busybox"])
def test_a_first_read_that_had_its_first_bytes_reads_on_where_the_job_ended_or_the_notice_came(tmp_path, monkeypatch,
                                                                                             kind):
    """The first bytes that tail follows in are the read's (one read of a pipe: at most 64 KB); where the exit code
    or the notice is there after them, the read goes on to the log's end (its limit): a read with an exit code has
    the whole log, one with a notice has its line."""
    import subprocess

    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    local = LocalTransport(str(tmp_path / "jobs"))
    job = subprocess.Popen(["sleep", "60"])
    big = bytes(range(256)) * 400  # more than a pipe holds: tail writes it in pieces

    def read_while_written(name: str, last_file: str, last_line: str, **limits) -> tuple:
        return read_while_written_to(tmp_path / "jobs" / name, local, job.pid, b"", big, last_file, last_line, limits)

    try:
        assert read_while_written("ended", "exit_code", "6\n", limit=LOG_READ_LIMIT) == (big, 6, None)
        assert read_while_written("ended-unlimited", "exit_code", "6\n") == (big, 6, None)
        assert read_while_written("limited", "exit_code", "6\n", limit=70000) == (big[:70000], 6, None)
        assert read_while_written("small", "exit_code", "6\n", limit=5) == (big[:5], 6, None)
        assert read_while_written("noticed", NOTICE_FILE, "preempted\n", limit=LOG_READ_LIMIT) == (big, None,
                                                                                                   "preempted")
    finally:
        job.kill()
        job.wait()


def test_a_read_starts_one_program_for_the_log_and_none_for_the_one_line_files(tmp_path, monkeypatch):
    path, log = logged_path(tmp_path)
    folder = tmp_path / "jobs" / "r"
    folder.mkdir(parents=True)
    monkeypatch.setenv("PATH", path)
    for content in (None, b""):  # no log yet, an empty one: nothing to read, and no program started for it
        if content is not None:
            (folder / "output.log").write_bytes(content)
        assert read_log(LocalTransport(str(tmp_path / "jobs")), "r", 0, limit=LOG_READ_LIMIT) == LogChunk(b"", None)
        assert started(log) == []
    monkeypatch.undo()
    (folder / "output.log").write_bytes(b"hello world\n")
    (folder / "pid").write_text(f"{os.getpid()}\n")
    plain = LocalTransport(str(tmp_path / "jobs"))
    monkeypatch.setenv("PATH", path)
    local = LocalTransport(str(tmp_path / "jobs"))
    assert read_log(local, "r", 6, limit=LOG_READ_LIMIT).data == b"world\n" and started(log) == ["dd"]
    assert read_log(local, "r", 0, limit=LOG_READ_LIMIT, wait=1).data == b"hello world\n"  # nothing to wait for
    assert started(log) == ["head"]
    assert job_state(local, "r") == ("missing", None) and started(log) == []  # (this process: no group of its own)
    (folder / "exit_code").write_text("0 \n")
    assert job_state(local, "r") == ("exited", 0) and job_begun(local, "r") == (False, 0) and started(log) == []
    (folder / NOTICE_FILE).write_text("spot interruption notice from GCP: preempted\n")  # read on every poll then
    chunk = read_log(local, "r", 6, limit=LOG_READ_LIMIT)
    assert (chunk.exit_code, chunk.notice) == (0, "spot interruption notice from GCP: preempted")
    assert started(log) == ["dd"]
    start_job(plain, JobSpec(run_name="late", commands=["sleep 1", "echo late", "sleep 30"]))
    try:
        deadline = time.monotonic() + 10  # (its process group exists once setsid has run: a moment after the start)
        while job_state(local, "late")[0] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        started(log)
        assert job_state(local, "late") == ("running", None) and started(log) == []
        assert read_log(local, "late", 0, limit=LOG_READ_LIMIT, wait=20).data == b"late\n"
        # the follow, whose first bytes are the read (dd): no probe, no second read of the log
        assert sorted(started(log)) == ["dd", "tail", "timeout"]
    finally:
        stop_job(plain, "late", grace=0)


def test_job_begun_gives_the_exit_code_of_a_job_that_ended_before_its_commands_began(tmp_path):
    """(A wave of a `startup_order` waits on job_begun: a node that failed in its setup is told at once, not after
    BEGIN_WAIT_S.) The code went to /dev/null before: `cat exit_code 2>/dev/null >&2`."""
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="early", commands=["echo never"], working_dir="/proc/none/such"))
    deadline = time.monotonic() + 20
    while job_state(local, "early")[0] != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_begun(local, "early") == (False, job_state(local, "early")[1]) != (False, 0)


@pytest.mark.parametrize("kind", ["dash", "bash", "busybox"])
def test_a_later_read_that_has_nothing_new_waits_for_the_next_bytes_the_end_or_its_bound(tmp_path, monkeypatch,
                                                                                          kind):
    """A read from byte N that finds nothing past it waits on the host as a first read does (GNU tail from byte
    N+1): it returns as the next bytes come, with the exit code as the job ends, or at its bound. Busybox's tail has
    no --pid: such a read returns at once, as a read that does not wait (the client polls)."""
    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    local = LocalTransport(str(tmp_path / "jobs"))
    waits = kind != "busybox"

    def started_with_first(name: str, *commands: str) -> float:
        start_job(local, JobSpec(run_name=name, commands=["printf first", *commands]))
        deadline = time.monotonic() + 10
        while read_log(local, name, 0).data != b"first" and time.monotonic() < deadline:
            time.sleep(0.02)
        return time.monotonic()

    try:
        began = started_with_first("more", "sleep 1", "printf second", "sleep 30")
        chunk = read_log(local, "more", 5, limit=LOG_READ_LIMIT, wait=20)
        assert chunk.data == (b"second" if waits else b"") and time.monotonic() - began < (10 if waits else 0.5)
        began = started_with_first("quiet", "sleep 30")
        assert read_log(local, "quiet", 5, limit=LOG_READ_LIMIT, wait=1.5) == LogChunk(b"", None)
        assert (1.3 < time.monotonic() - began < 8) if waits else (time.monotonic() - began < 0.5)
        began = started_with_first("ends", "sleep 1", "exit 4")
        chunk = read_log(local, "ends", 5, limit=LOG_READ_LIMIT, wait=20)
        if waits:  # the exit code with the read that saw the end, a moment after it (the wrapper writes it then)
            assert (chunk.data, chunk.exit_code) == (b"", 4) and 0.5 < time.monotonic() - began < 5
        deadline = time.monotonic() + 10
        while read_log(local, "ends", 5).exit_code is None and time.monotonic() < deadline:  # (busybox: polled)
            time.sleep(0.05)
        assert read_log(local, "ends", 0, limit=3, wait=20) == LogChunk(b"fir", 4)  # bytes there: no wait
        assert read_log(local, "ends", 2, limit=3, wait=20) == LogChunk(b"rst", 4)
    finally:
        for name in ("more", "quiet", "ends"):
            stop_job(local, name, grace=0)


@pytest.mark.parametrize("kind", ["dash", "bash"])
def test_a_later_read_that_waited_reads_on_where_the_job_ended_or_the_notice_came(tmp_path, monkeypatch, kind):
    """As a first read (above): the bytes that came after the wait, then the rest where the exit code or the notice
    is there by then, within the limit."""
    import subprocess

    monkeypatch.setenv("PATH", shell_path(tmp_path, kind))
    local = LocalTransport(str(tmp_path / "jobs"))
    job = subprocess.Popen(["sleep", "60"])
    big = bytes(range(256)) * 400

    def read_while_written(name: str, last_file: str, **limits) -> tuple:
        return read_while_written_to(tmp_path / "jobs" / name, local, job.pid, b"before\n", big, last_file, "6\n",
                                     limits)

    try:
        assert read_while_written("ended", "exit_code", limit=LOG_READ_LIMIT) == (big, 6, None)
        assert read_while_written("ended-unlimited", "exit_code") == (big, 6, None)
        assert read_while_written("limited", "exit_code", limit=70000) == (big[:70000], 6, None)
        assert read_while_written("noticed", NOTICE_FILE, limit=LOG_READ_LIMIT) == (big, None, "6")
    finally:
        job.kill()
        job.wait()


def test_a_later_read_that_waits_starts_one_program_where_there_is_something_new(tmp_path, monkeypatch):
    """What is past the offset is read by one dd, whose count says whether to wait: nothing new costs the follow
    (timeout, tail, dd) on top, once per bound instead of a poll's dd five times a second."""
    path, log = logged_path(tmp_path)
    plain = LocalTransport(str(tmp_path / "jobs"))
    start_job(plain, JobSpec(run_name="w", commands=["echo one", "sleep 1", "echo two", "sleep 30"]))
    monkeypatch.setenv("PATH", path)
    local = LocalTransport(str(tmp_path / "jobs"))
    try:
        deadline = time.monotonic() + 10
        while read_log(local, "w", 0).data != b"one\n" and time.monotonic() < deadline:
            time.sleep(0.02)
        started(log)
        assert read_log(local, "w", 2, limit=LOG_READ_LIMIT, wait=20).data == b"e\n" and started(log) == ["dd"]
        assert read_log(local, "w", 4, limit=LOG_READ_LIMIT, wait=20).data == b"two\n"
        assert sorted(started(log)) == ["dd", "dd", "tail", "timeout"]
    finally:
        stop_job(plain, "w", grace=0)
