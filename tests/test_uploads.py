"""Uploads: a folder that is no repository never leaves whole, ignore files and venvs are honoured everywhere, the
size is checked before provisioning, and the archive goes as one stream (fast over SSH)."""

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from configuration.errors import ConfigurationError
from configuration.loader import parse_configuration
from provisioner.jobs.archive import archive_stream
from provisioner.jobs.uploads import Upload, UploadPlan, check_size, list_folder, plan_uploads
from tests.helpers import run_cli

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nfake0key0that0must0stay0home\n"


def fake_home(tmp_path: Path) -> Path:
    """A home folder as users have them: keys, dstack's own folder, and a task file."""
    home = tmp_path / "user"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(KEY)
    (home / ".dstack").mkdir()
    (home / ".dstack" / "secrets.yml").write_text("X: fake0key0that0must0stay0home\n")
    (home / "notes.txt").write_text("hello\n")
    return home


def files_anywhere(folder: Path, needle: bytes) -> list:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def names(chunks) -> dict:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        return {m.name: m.mode for m in tar.getmembers()}


def git_repo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    return folder


def test_a_home_folder_is_never_uploaded_on_local(tmp_path, dstack_home):
    home = fake_home(tmp_path)
    task = home / "t.dstack.yml"
    task.write_text("type: task\nname: home-local\nbackends: [local]\ncommands: [find . -type f]\n")
    result = run_cli("apply", "-f", str(task), "-y")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""  # the working directory is empty: nothing of the folder came
    assert files_anywhere(dstack_home / "jobs", b"fake0key0that0must0stay0home") == []


def test_a_home_folder_is_never_uploaded_to_an_ssh_host(tmp_path, dstack_home, make_host, client_key):
    host = make_host()
    home = fake_home(tmp_path)
    fleet = tmp_path / "fleet.dstack.yml"
    fleet.write_text(f"type: fleet\nname: lab\nssh_config:\n  identity_file: {client_key[0]}\n"
                     f"  hosts: [{host.address}]\n")
    assert run_cli("apply", "-f", str(fleet), "-y").returncode == 0
    task = home / "t.dstack.yml"
    task.write_text("type: task\nname: home-ssh\nbackends: [ssh]\nfiles: [notes.txt]\n"
                    "commands: [find . -type f]\n")
    result = run_cli("apply", "-f", str(task), "-y")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["./notes.txt"]  # only what `files` names
    assert files_anywhere(host.jobs_dir, b"fake0key0that0must0stay0home") == []


def test_ignore_files_venvs_git_and_dstack_home_are_never_listed(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    for name in ("keep.txt", "out.log", "sub/private.key", "sub/keep.py", "env/pyvenv.cfg", "env/lib/x.py",
                 "home/state.db", ".git/config", "nested/.git/HEAD"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    (folder / ".gitignore").write_text("*.log\n")
    (folder / "sub" / ".dstackignore").write_text("*.key\n")
    monkeypatch.setenv("DSTACK_HOME", str(folder / "home"))
    listed = [name for name, _ in list_folder(folder)]
    assert listed == [".gitignore", "keep.txt", "sub/.dstackignore", "sub/keep.py"]


def test_a_repository_uploads_what_git_would_commit_minus_dstackignore(tmp_path):
    repo = git_repo(tmp_path / "repo")
    (repo / ".gitignore").write_text("data/\n")
    (repo / ".dstackignore").write_text("big.bin\n")
    for name in ("train.py", "data/x.bin", "big.bin", ".venv/pyvenv.cfg", ".venv/bin/python"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name)
    subprocess.run(["git", "-C", str(repo), "add", "-f", "big.bin", ".venv"], check=True)  # tracked, still left out
    listed = [name for name, _ in list_folder(repo)]
    assert listed == [".dstackignore", ".gitignore", "train.py"]


def test_the_size_is_checked_before_provisioning_and_names_the_biggest_files(tmp_path, dstack_home):
    repo = git_repo(tmp_path / "repo")
    (repo / "weights.bin").write_bytes(b"x" * (3 * 1024 * 1024))
    (repo / "small.py").write_text("x")
    task = repo / "t.dstack.yml"
    task.write_text("type: task\nname: too-big\nbackends: [local]\ncommands: [echo never]\n")
    result = run_cli("apply", "-f", str(task), "-y", env={"DSTACK_UPLOAD_LIMIT_MB": "2"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "over the 2 MB limit" in result.stderr and f"3.0 MB  {repo / 'weights.bin'}" in result.stderr
    assert "DSTACK_UPLOAD_LIMIT_MB" in result.stderr
    assert run_cli("ps", "-a", "--json").stdout.count('"name"') == 0  # no run was even created


def test_files_that_vanish_while_packing_are_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    plan = UploadPlan([Upload(tmp_path, list_folder(tmp_path), ".", "files[0]")])
    (tmp_path / "b.txt").unlink()
    archive = names(archive_stream(plan, {"job.sh": (b"#!/bin/sh\n", 0o700), "env": (b"A=1\n", 0o600)}))
    assert set(archive) == {"job.sh", "env", "uploads/0/a.txt"}
    assert archive["env"] == 0o600 and archive["job.sh"] == 0o700


def test_a_task_in_a_plain_folder_under_tmp_uploads_nothing(tmp_path, dstack_home):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "junk.txt").write_text("not for the host")
    task = folder / "t.dstack.yml"
    task.write_text("type: task\nname: plain-tmp\nbackends: [local]\ncommands: [ls -A]\n")
    result = run_cli("apply", "-f", str(task), "-y")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_dstack_home_is_refused_as_a_file_mapping(tmp_path, dstack_home):
    (dstack_home).mkdir()
    (dstack_home / "state.db").write_text("x")
    configuration = parse_configuration(f"type: task\ncommands: [x]\nfiles: ['{dstack_home}:/h']\n", "t.dstack.yml")
    with pytest.raises(ConfigurationError, match=r"files\[0\].*never uploaded"):
        plan_uploads(configuration, tmp_path, "t.dstack.yml")


def test_progress_is_reported_up_to_the_total(tmp_path):
    (tmp_path / "a.bin").write_bytes(os.urandom(3 << 20))
    plan = UploadPlan([Upload(tmp_path, list_folder(tmp_path), ".", "files[0]")])
    seen = []
    b"".join(archive_stream(plan, {}, lambda done, total: seen.append((done, total))))
    assert seen[-1] == (3 << 20, 3 << 20) and all(d <= t for d, t in seen)
    check_size(plan, limit_mb=4)
    with pytest.raises(ConfigurationError, match="over the 2 MB limit"):
        check_size(plan, limit_mb=2)


def test_a_large_upload_reaches_an_ssh_host_in_one_stream(tmp_path, make_host, client_key, dstack_home):
    """64 MB of incompressible data: paramiko's sendall on bytes copied what was left after every packet (over a
    minute here); as chunks of memoryviews it takes seconds. The bound is generous."""
    from provisioner.host.ssh import SSHTarget, connect
    from provisioner.jobs.control import start_job
    from provisioner.jobs.script import JobSpec

    host = make_host()
    (tmp_path / "w.bin").write_bytes(os.urandom(64 << 20))
    ssh = connect(SSHTarget(host.address, 22, "root", client_key[0], host_key=host.host_public_key), total_wait=10)
    job = JobSpec(run_name="big-upload", commands=["cmp w.bin " + str(tmp_path / "w.bin") + " && echo same"],
                  uploads=UploadPlan([Upload(tmp_path, list_folder(tmp_path), ".", "files[0]")]))
    started = time.monotonic()
    start_job(ssh, job)
    took = time.monotonic() - started
    deadline = time.monotonic() + 30
    while not (host.jobs_dir / "big-upload" / "exit_code").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    ssh.close()
    assert (host.jobs_dir / "big-upload" / "output.log").read_text() == "same\n"
    assert took < 30, took


def test_only_compressible_uploads_are_compressed(tmp_path):
    from provisioner.jobs.archive import compression_level

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("def f(x):\n    return x\n" * 5000)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(os.urandom(1 << 20))
    for name, level in (("code", 1), ("weights", 0)):
        folder = tmp_path / name
        assert compression_level(UploadPlan([Upload(folder, list_folder(folder), ".", name)])) == level


def mixed_folder(folder: Path) -> None:
    """Code, weights that do not compress, an empty file, an executable script and a symlink."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "train.py").write_text("def step(x):\n    return x * 2\n" * 200_000)
    (folder / "weights.bin").write_bytes(os.urandom(3 << 20))
    (folder / "small.bin").write_bytes(os.urandom(5000))
    (folder / "empty").write_bytes(b"")
    (folder / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (folder / "run.sh").chmod(0o755)
    (folder / "latest").symlink_to("weights.bin")


def gzip_members(data: bytes) -> int:
    import zlib

    count = 0
    while data:
        member = zlib.decompressobj(31)
        member.decompress(data)
        data, count = member.unused_data, count + 1
    return count


def unpack(archive: bytes, into: Path) -> None:
    into.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(into)], input=archive, check=True)


def test_each_file_gets_its_own_compression_and_the_archive_round_trips(tmp_path):
    """Weights go stored, code compressed, in one gzip stream of several members that `tar -xz` reads as one:
    every byte, mode and link comes back as it was."""
    from provisioner.jobs.archive import archive_stream
    from provisioner.jobs.uploads import upload_name

    folder = tmp_path / "repo"
    mixed_folder(folder)
    plan = UploadPlan([Upload(folder, list_folder(folder), ".", "files[0]")])
    archive = b"".join(archive_stream(plan, {"job.sh": (b"echo job\n", 0o700)}))
    code = (folder / "src" / "train.py").stat().st_size
    assert (3 << 20) < len(archive) < (3 << 20) + code // 10  # the weights as they are, the code shrunk
    assert gzip_members(archive) >= 2
    unpack(archive, tmp_path / "out")
    out = tmp_path / "out" / upload_name(0)
    for name in ("src/train.py", "weights.bin", "small.bin", "empty", "run.sh"):
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(out / "latest") == "weights.bin"
    assert (tmp_path / "out" / "job.sh").read_bytes() == b"echo job\n"
    assert (tmp_path / "out" / "job.sh").stat().st_mode & 0o777 == 0o700


def test_the_level_follows_the_link(tmp_path):
    """A sender that keeps the queue full (a slow link) raises the level of what compresses; an empty queue (a
    fast link) lowers it back; what does not compress stays stored either way."""
    from provisioner.jobs.archive import LEVEL_EVERY, MAX_LEVEL, MIN_LEVEL, _FileLevels

    folder = tmp_path / "repo"
    mixed_folder(folder)
    backlog = [1.0]
    levels = _FileLevels(1, lambda: backlog[0])
    code, weights = folder / "src" / "train.py", folder / "weights.bin"
    seen = [levels.of(code, LEVEL_EVERY) for _ in range(10)]
    assert seen[0] == MIN_LEVEL + 1 and seen[-1] == MAX_LEVEL
    assert levels.of(weights, LEVEL_EVERY) == 0
    backlog[0] = 0.0
    assert [levels.of(code, LEVEL_EVERY) for _ in range(10)][-1] == MIN_LEVEL
    assert _FileLevels(0, lambda: 0.0).of(folder / "small.bin", 5000) == 0  # a store of weights only: all stored


def test_a_dry_run_checks_the_uploads_too(tmp_path, dstack_home):
    from tests.helpers import run_cli

    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\ncommands: [x]\nfiles: [missing-folder:/data]\n")
    result = run_cli("apply", "-f", str(conf), "--dry-run", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and "files[0]" in result.stderr and "does not exist" in result.stderr
    (tmp_path / "big.bin").write_bytes(b"\0" * 3 * 1024 * 1024)
    conf.write_text("type: task\ncommands: [x]\nfiles: [big.bin:/data/big.bin]\n")
    over = run_cli("apply", "-f", str(conf), "--dry-run", env={"DSTACK_HOME": str(dstack_home),
                                                                 "DSTACK_UPLOAD_LIMIT_MB": "1"})
    assert over.returncode == 1 and "over the 1 MB limit" in over.stderr and "big.bin" in over.stderr


def test_a_job_without_uploads_goes_as_a_plain_tar_that_its_host_unpacks_without_gzip(tmp_path, monkeypatch):
    """The job folder's own few files need no gzip on the host (a process per job start); uploads still go gzipped,
    and the start command unpacks what comes (provisioner.jobs.archive.unpack_command)."""
    from provisioner.host.transport import LocalTransport
    from provisioner.jobs.control import start_job, stop_job
    from provisioner.jobs.launch import start_command
    from provisioner.jobs.script import JobSpec

    job = JobSpec(run_name="plain", commands=["echo plain"])
    plain = b"".join(archive_stream(job.uploads, {"job.sh": (b"echo job\n", 0o700)}))
    assert not plain.startswith(b"\x1f\x8b") and "tar -xf -" in start_command(job)
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r|") as tar:
        assert [member.name for member in tar] == ["job.sh"]
    (tmp_path / "a.txt").write_text("a")
    uploads = UploadPlan([Upload(tmp_path, list_folder(tmp_path), ".", "files[0]")])
    assert b"".join(archive_stream(uploads, {})).startswith(b"\x1f\x8b")
    assert "tar -xzf -" in start_command(JobSpec(run_name="up", commands=[], uploads=uploads))
    shims, calls = tmp_path / "shims", tmp_path / "calls"
    shims.mkdir()
    for name in ("gzip", "tar"):  # each logs that it ran, then runs the real one
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexec /usr/bin/{name} "$@"\n')
        (shims / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, job)
    try:
        assert calls.read_text().splitlines() == ["tar -xf -"] and (tmp_path / "jobs" / "plain" / "job.sh").exists()
    finally:
        stop_job(local, "plain", grace=0)
