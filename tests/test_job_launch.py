"""How a job starts on its host (provisioner.jobs.launch): the process group the start hands back is the job's (a stop
ends it), the job's signals are as they were under `nohup`, and the sampler of `output.sizes` reads a log whose
time does not tell it apart from its last sample. Through local jobs (the same shell text as on an SSH host)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import start_job, stop_job
from provisioner.jobs.launch import _SIZES_START, OUTPUT_SIZES, SIZES_SAMPLED
from provisioner.jobs.script import JobSpec
from tests.helpers import wait_exit
from tests.test_runs import group_alive


def signal_mask(pid: int, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1], 16)


def test_the_start_returns_the_jobs_process_group_and_a_stop_ends_it(tmp_path, monkeypatch):
    """The start returns as soon as the job runs (the job is detached: nothing of it holds the start's output), with
    the process group id that is also in the job folder's `pid`; the job's commands are in that group, in a session
    of its own, with SIGHUP ignored (as `nohup` left it) and SIGPIPE not; a stop ends the group."""
    monkeypatch.setenv("HOME", str(tmp_path))
    local = LocalTransport(str(tmp_path / "jobs"))
    began = time.monotonic()
    group = start_job(local, JobSpec(run_name="grouped", commands=[f"echo $$ > {tmp_path}/shell.pid", "sleep 300"]))
    assert time.monotonic() - began < 20  # not the job's 300 s
    assert int((tmp_path / "jobs" / "grouped" / "pid").read_text()) == group
    deadline = time.monotonic() + 20
    while not (tmp_path / "shell.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    shell = int((tmp_path / "shell.pid").read_text())
    assert (os.getpgid(shell), os.getsid(shell)) == (group, group)
    ignored = signal_mask(shell, "SigIgn")
    assert ignored & 1 << 0 and not ignored & 1 << 12  # bit n: signal n + 1 (SIGHUP 1, SIGPIPE 13)
    assert stop_job(local, "grouped", grace=10) == 143
    assert not group_alive(group)


SHELLS = [shell for shell in (["sh"], ["bash"], ["busybox", "sh"]) if shutil.which(shell[0])]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda shell: shell[0])
def test_the_sampler_reads_a_log_whose_time_ties_with_its_last_sample(tmp_path, shell):
    """A file's time may be as coarse as the kernel's tick: a log written just after a sample can carry the very
    time of the sample's mark. Such a log is read (its new size recorded) and not taken for unchanged; an emptied
    log is recorded at 0 bytes."""
    (tmp_path / "output.log").write_text("12345")
    (tmp_path / SIZES_SAMPLED).write_text("")
    for name in ("output.log", SIZES_SAMPLED):
        os.utime(tmp_path / name, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    job = subprocess.Popen(["sleep", "30"])
    try:
        script = (f"J={job.pid}; {_SIZES_START}sleep 1.2; echo 123456789 > output.log; sleep 1.2; "
                  ": > output.log; sleep 1.2; kill $T")
        subprocess.run([*shell, "-c", script], cwd=tmp_path, check=True, timeout=30)
    finally:
        job.kill()
        job.wait()
    sizes = [line.split()[1] for line in (tmp_path / OUTPUT_SIZES).read_text().splitlines()]
    assert sizes == ["5", "10", "0"]


def test_a_job_without_uploads_works_in_its_own_repo_folder_made_with_its_job_folder(tmp_path, monkeypatch):
    """The start makes a new job folder's `repo` with it where nothing is uploaded or cloned (job.sh then starts no
    mkdir): the job still works there, in a folder of the user's alone, empty; a second start in the same folder
    (a retry) removes the last job's repo and the job gets it again."""
    monkeypatch.setenv("HOME", str(tmp_path))
    local = LocalTransport(str(tmp_path / "jobs"))
    repo = tmp_path / "jobs" / "plain" / "repo"
    for attempt in (1, 2):
        start_job(local, JobSpec(run_name="plain", commands=['echo "$PWD $(stat -c %a .) $(ls -A | wc -l)"',
                                                               "touch left-by-the-job"]))
        deadline = time.monotonic() + 20
        while not (tmp_path / "jobs" / "plain" / "exit_code").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = (tmp_path / "jobs" / "plain" / "output.log").read_text()
        assert log.split() == [str(repo), "700", "0"], (attempt, log)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_launcher_runs_in_the_jobs_own_shell(tmp_path, monkeypatch):
    """The launcher (the login profile's read, or its kept environment) runs in the shell that then runs job.sh, which
    it sources: no `sh` is started for it, and the commands see no argument and none of its variables."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "sh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$2" | head -n 1 >> {tmp_path}/sh.starts\n'
                              f'exec {shutil.which("sh")} "$@"\n')
    (tools / "sh").chmod(0o755)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", f"{tools}:/usr/local/bin:/usr/bin:/bin")
    monkeypatch.setenv("DSTACK_PROFILE_TIMEOUT", "5")
    local = LocalTransport(str(tmp_path / "jobs"))
    for name in ("login", "kept"):  # the profile read by a login shell, then its kept environment
        start_job(local, JobSpec(run_name=name, commands=['echo "$0 $# ${sh-unset} ${key-unset} ${kept-unset}"',
                                                          "echo $BASH_VERSION | cut -c1"]))
        code, log = wait_exit(local, name, timeout=60)
        assert (code, log.splitlines()) == (0, ["./job.sh 0 unset unset unset", subprocess.run(
            ["bash", "-c", "echo $BASH_VERSION | cut -c1"], capture_output=True, text=True).stdout.strip()]), log
    started = (tmp_path / "sh.starts").read_text().splitlines()
    assert started and not any(line.startswith("sh=sh;") for line in started), started
