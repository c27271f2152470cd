"""A job with nothing to upload has its folder's own files written by the start command itself, with the shell's
builtin printf (provisioner.jobs.launch.written_inline): no `base64` and no `tar` on the host, every byte of the files
and of the env's values as they were, their modes as the archive gave them, under each host shell and in a folder used
before; a shell without the builtin gets the archive instead (an external printf would show the files in the process
list), and so do files that are not text."""

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.host.access import HostAccess
from provisioner.host.ssh import connect
from provisioner.host.transport import CommandResult
from provisioner.jobs.cluster_ssh import cluster_ssh
from provisioner.jobs.control import job_folder_files, start_job
from provisioner.jobs.layout import job_folder
from provisioner.jobs.launch import INLINE_MAX, INLINE_REFUSED, start_command, written_inline
from provisioner.jobs.script import JobSpec
from provisioner.jobs.uploads import Upload, UploadPlan
from tests.helpers import wait_exit
from tests.netns_hosts import host_without
from tests.test_remote import target

# What a task's env may hold: quotes of both kinds, what a shell would expand, printf's own escapes, newlines, text
# that is not ASCII, a control character, a trailing newline.
AWKWARD = "it's \"quoted\" $HOME `id` $(id) \\n %s %b\\\\ \nsecond line é ☃ \x01 end'\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cluster_job(name: str, **fields) -> JobSpec:
    ssh, _ = cluster_ssh(name, [HostAccess("ssh", "10.251.9.1", 22, "root", host_key="ssh-ed25519 AAAAone")])
    return JobSpec(run_name=name, cluster_ssh=ssh, env={"AWKWARD": AWKWARD, "TOKEN": "s3cr3t"},
                   commands=['printf "%s" "$AWKWARD" > awkward', 'echo "token=$TOKEN"', "command -v ssh",
                             'wc -c < "$JOB_DIR/env"'], **fields)  # job.sh's own folder


class StdinShell:
    """A host whose commands reach `shell` on its stdin, as they reach the kept shell over SSH (provisioner.host.ssh);
    a command with stdin gets it on a channel of its own (`shell -c`)."""

    description = "stdin-shell"

    def __init__(self, shell: str, env: dict, prefix: str = ""):
        self.shell, self.env, self.prefix, self.stdins = shell.split(), env, prefix, []

    def run(self, command, stdin=None, timeout=None):
        self.stdins.append(stdin is not None)
        if stdin is None:
            done = subprocess.run(self.shell, input=f"( {self.prefix}{command}\n) < /dev/null\n".encode(),
                                  capture_output=True, env=self.env, timeout=timeout)
        else:
            data = stdin if isinstance(stdin, bytes) else b"".join(stdin)
            done = subprocess.run([*self.shell, "-c", self.prefix + command], input=data, capture_output=True,
                                  env=self.env, timeout=timeout)
        return CommandResult(done.returncode, done.stdout, done.stderr)


def host_env(tmp_path: Path) -> dict:
    """A PATH whose `tar` and `base64` fail, saying so in a file: an archive that reached them is seen."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for name in ("tar", "base64"):
        (tools / name).write_text(f"#!/bin/sh\necho {name} >> {tmp_path}/unpackers; exit 1\n")
        (tools / name).chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": f"{tools}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
            "DSTACK_JOBS_DIR": str(tmp_path / "jobs"), "DSTACK_PROFILE_TIMEOUT": "5", "LANG": "C.UTF-8"}


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox sh"])
def test_the_folders_files_are_written_by_the_shell_itself_under_each_host_shell(tmp_path, shell):
    """Twice in the same folder: the second start finds the first job's files (one of them made 0644 since) and
    leaves every file with the mode and bytes of its own."""
    if shutil.which(shell.split()[0]) is None:
        pytest.skip(f"no {shell}")
    host = StdinShell(shell, host_env(tmp_path))
    folder = tmp_path / "jobs" / "inline"
    for attempt in range(2):
        job = cluster_job("inline", utilization=(50, 600) if attempt else None)
        job.commands.append('ls -d "$JOB_DIR/monitor.sh" 2>/dev/null || echo none')
        start_job(host, job)
        code, log = wait_exit(host, "inline", timeout=60)
        assert code == 0, log
        assert log.splitlines() == ["token=s3cr3t", f"{folder}/bin/ssh", "0",  # env emptied once read
                                    f"{folder}/monitor.sh" if attempt else "none"]
        assert (folder / "repo" / "awkward").read_text() == AWKWARD
        files = job_folder_files(job)
        assert (folder / "known_hosts").read_bytes() == files["known_hosts"][0]
        assert (mode(folder / "known_hosts"), mode(folder / "bin" / "ssh")) == (0o600, 0o700)
        assert not any((folder / name).exists() for name in ("job.sh", "env", "cluster_key"))  # gone with the job
        if attempt:
            assert mode(folder / "monitor.sh") == 0o700
        (folder / "known_hosts").chmod(0o644)
    assert host.stdins == [False] * len(host.stdins)
    assert not (tmp_path / "unpackers").exists()


def test_a_shell_without_a_builtin_printf_gets_the_archive(tmp_path):
    """bash with its printf builtin turned off: the start refuses before anything is made, and the archive comes
    instead (the env's values never an external program's arguments)."""
    env = host_env(tmp_path)
    env["PATH"] = env["PATH"].split(":", 1)[1]  # the real tar: the archive is unpacked here
    host = StdinShell("bash", env, prefix="enable -n printf\n")
    start_job(host, cluster_job("no-printf"))
    code, log = wait_exit(host, "no-printf", timeout=60)
    assert code == 0, log
    assert host.stdins[:2] == [False, True] and log.splitlines()[0] == "token=s3cr3t"
    assert (tmp_path / "jobs" / "no-printf" / "repo" / "awkward").read_text() == AWKWARD
    refused = StdinShell("bash", env, prefix="enable -n printf\n")
    job = cluster_job("refused")
    result = refused.run(start_command(job, job_folder_files(job)))
    assert result.code == 1 and INLINE_REFUSED in result.stderr.decode()
    assert not (tmp_path / "jobs" / "refused").exists()


def test_files_that_are_not_text_or_too_big_and_uploads_go_as_the_archive(tmp_path):
    job = JobSpec(run_name="x", commands=["true"])
    files = job_folder_files(job)
    assert written_inline(job, files)
    assert not written_inline(job, {**files, "cluster_key": (b"\xff\xfe", 0o600)})
    assert not written_inline(job, {**files, "cluster_key": (b"a\0b", 0o600)})
    assert not written_inline(job, {**files, "big": (b"x" * (INLINE_MAX + 1), 0o600)})
    (tmp_path / "f").write_text("x")
    uploading = JobSpec(run_name="x", commands=["true"],
                        uploads=UploadPlan([Upload(tmp_path / "f", (("", 1),), "f", "files[0]")]))
    assert not written_inline(uploading, files)


def test_an_ssh_host_without_tar_or_base64_starts_a_job_with_nothing_to_upload(make_host, client_key):
    """Over SSH, through the kept shell: the host's PATH has neither `base64` nor `tar` (each start of them, two per
    job start before, is gone), and the job gets its files and env whole."""
    host = host_without(make_host, "base64", "tar")
    ssh = connect(target(host, client_key, user="tester"), total_wait=10)
    try:
        assert ssh.run("command -v tar base64 || echo none").text == "none\n"
        job = cluster_job("over-ssh")
        start_job(ssh, job)
        code, log = wait_exit(ssh, "over-ssh", timeout=60)
        assert code == 0, log
        folder = ssh.run(f"cd {job_folder('over-ssh')} && pwd").text.strip()
        assert log.splitlines() == ["token=s3cr3t", f"{folder}/bin/ssh", "0"]
        assert ssh.run(f"cat {folder}/repo/awkward").stdout == AWKWARD.encode()
        assert ssh.run(f"stat -c %a {folder}/bin/ssh {folder}/known_hosts").text.split() == ["700", "600"]
    finally:
        ssh.close()
