"""What a host keeps for its jobs (provisioner.jobs.layout.HOST_CACHE): the login profile's environment, the
interpreter found and a venv template, each used again only while what it came from is unchanged; through local
jobs (the same job script as on an SSH host) with a HOME and PATH of the test's own."""

import os
import shutil
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import start_job
from provisioner.jobs.layout import HOST_CACHE
from provisioner.jobs.script import JobSpec
from tests.helpers import wait_exit


@pytest.fixture
def login_home(tmp_path, monkeypatch):
    """A HOME of the test's own whose `.profile` counts its readings, and a `python3` first on PATH that counts its
    starts (then runs the test's interpreter)."""
    home = tmp_path / "home"
    home.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    python = tools / "python3"
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/python.starts\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{tools}:/usr/local/bin:/usr/bin:/bin")
    monkeypatch.setenv("DSTACK_PROFILE_TIMEOUT", "5")
    return home


def write_profile(home: Path, value: str) -> None:
    """A profile that counts its readings and puts the test's tools first on PATH (/etc/profile may have set it)."""
    (home / ".profile").write_text(f'echo read >> "$HOME/profile.readings"\nexport FROM_PROFILE={value}\n'
                                   f'export PATH="{home.parent / "tools"}:$PATH"\n'
                                   'greet() { echo "hello from $*"; }\necho the profile speaks\n')


def readings(home: Path) -> int:
    path = home / "profile.readings"
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_job(local: LocalTransport, name: str, commands) -> str:
    start_job(local, JobSpec(run_name=name, commands=commands))
    code, log = wait_exit(local, name, timeout=60)
    assert code == 0, log
    return log


def own_interpreter(tmp_path) -> Path:
    """An interpreter of the test's own: a copy of this one beside its library (skips where a copy does not run)."""
    root = tmp_path / "pyroot"
    (root / "bin").mkdir(parents=True)
    own = root / "bin" / "python3"
    shutil.copy2(os.path.realpath(sys.executable), own)
    (root / "lib").symlink_to(Path(sys.prefix) / "lib")
    if subprocess.run([str(own), "-c", "import venv"], capture_output=True).returncode != 0:
        pytest.skip("this interpreter does not run from a copy")
    return own


def test_the_login_profile_is_read_once_per_host_and_again_when_it_changes(login_home, tmp_path):
    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    commands = ["echo $FROM_PROFILE", "greet the profile"]
    assert run_job(local, "first", commands) == "one\nhello from the profile\n"
    assert run_job(local, "second", commands) == "one\nhello from the profile\n"
    assert readings(login_home) == 1  # the second job started from the kept environment, without a login shell
    kept = tmp_path / "jobs" / HOST_CACHE / "profile.env"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert (tmp_path / "jobs" / "first" / "profile.log").read_text() == "the profile speaks\n"
    assert "kept" in (tmp_path / "jobs" / "second" / "profile.log").read_text()
    assert not (tmp_path / "jobs" / "second" / "profile.env").exists()  # read, then deleted, as before

    write_profile(login_home, "two")  # an edited profile is read again at the next job
    assert run_job(local, "third", commands) == "two\nhello from the profile\n"
    assert readings(login_home) == 2


def test_a_profile_that_fails_is_not_kept(login_home, tmp_path):
    (login_home / ".profile").write_text('echo read >> "$HOME/profile.readings"\nexport FROM_PROFILE=yes\nexit 3\n')
    local = LocalTransport(str(tmp_path / "jobs"))
    run_job(local, "first", ["true"])
    run_job(local, "second", ["true"])
    assert readings(login_home) == 2
    assert not (tmp_path / "jobs" / HOST_CACHE / "profile.env").exists()


def test_a_kept_environment_replaced_while_a_job_starts_from_it_is_still_the_one_its_key_matched(login_home, tmp_path):
    """A job starting beside this one renames its own reading over the kept file (another key: an edited profile, a
    docker job's DOCKER_HOST) just after this job found its key there: this job still reads the file whose key
    matched; the next job sees the other key and reads the profile again. Nothing but the shell's builtins runs
    between the key's check and the read, so the rename is made there by holding up the launcher's note in
    profile.log (a FIFO here, kept full: a folder used before keeps its profile.log until the note replaces it)."""
    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    assert run_job(local, "first", ["echo $FROM_PROFILE"]) == "one\n"
    kept = tmp_path / "jobs" / HOST_CACHE / "profile.env"
    other = tmp_path / "other.env"
    other.write_text("# another key\nexport FROM_PROFILE=other\n")
    folder = tmp_path / "jobs" / "second"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / "profile.log", 0o600)
    held = os.open(folder / "profile.log", os.O_RDWR | os.O_NONBLOCK)
    try:
        while True:  # full: the launcher's note waits in its write, after its key matched
            try:
                os.write(held, b"x" * 4096)
            except BlockingIOError:
                break
        start_job(local, JobSpec(run_name="second", commands=["echo $FROM_PROFILE"]))
        deadline = time.monotonic() + 30
        while str(folder / "profile.log") not in _open_elsewhere():
            assert time.monotonic() < deadline, "the launcher never wrote its note"
            time.sleep(0.01)
        other.rename(kept)
        note = b""
        while b"kept" not in note:
            assert time.monotonic() < deadline, note[-200:]
            try:
                note += os.read(held, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        os.close(held)
    code, log = wait_exit(local, "second", timeout=60)
    assert (code, log) == (0, "one\n")
    assert kept.read_text().startswith("# another key\n") and readings(login_home) == 1
    assert run_job(local, "third", ["echo $FROM_PROFILE"]) == "one\n"
    assert readings(login_home) == 2


def _open_elsewhere() -> set:
    """The paths other processes have open."""
    paths = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                paths.update(os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
            except OSError:  # gone, or not ours to read
                continue
    return paths


def test_a_job_that_becomes_root_through_sudo_starts_from_the_kept_environment_too(login_home, tmp_path):
    """sudo closes every file it is handed beyond stdin, stdout and stderr: a job that becomes root through it
    (privileged: true) reads a copy of the kept environment. The login user here says it is not root (`id -u`), and
    its `sudo` closes what sudo closes and runs the command as it is."""
    write_profile(login_home, "one")
    tools = tmp_path / "tools"
    (tools / "id").write_text(f'#!/bin/sh\n[ "$*" = -u ] && echo 1000 && exit\nexec {shutil.which("id")} "$@"\n')
    (tools / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec 3<&- 4<&- 5<&- 6<&- 7<&- 8<&- 9<&-\n'
                                'echo "$*" >> "$HOME/sudo.commands"\nexec "$@"\n')
    for tool in ("id", "sudo"):
        (tools / tool).chmod(0o755)
    local = LocalTransport(str(tmp_path / "jobs"))
    for name in ("first", "second"):
        start_job(local, JobSpec(run_name=name, commands=["echo $FROM_PROFILE"], privileged=True))
        code, log = wait_exit(local, name, timeout=60)
        assert (code, log) == (0, "one\n")
    assert "kept" in (tmp_path / "jobs" / "second" / "profile.log").read_text() and readings(login_home) == 1
    assert "DSTACK_JOB_STAGE=root" in (login_home / "sudo.commands").read_text()  # it went through sudo


def test_jobs_starting_at_once_on_one_host_all_get_the_profiles_environment(login_home, tmp_path):
    """Six jobs at once on a host with nothing kept (those that find no reading kept yet read the profile and keep
    theirs, renaming it over another's), then six more from what was kept."""
    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    read = []
    for wave in ("read", "kept"):
        names = [f"{wave}-{i}" for i in range(6)]
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda name: start_job(local, JobSpec(run_name=name, commands=[
                "echo $FROM_PROFILE", "greet the profile"])), names))
        for name in names:
            code, log = wait_exit(local, name, timeout=60)
            assert (code, log) == (0, "one\nhello from the profile\n"), name
        read.append(readings(login_home))
    assert all("kept" in (tmp_path / "jobs" / f"kept-{i}" / "profile.log").read_text() for i in range(6))
    assert 1 <= read[0] == read[1] <= 6


def test_the_venv_comes_from_a_template_kept_per_host_and_is_the_jobs_own(login_home, tmp_path):
    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    commands = ["command -v python", 'python -c "import sys; print(sys.prefix)"', "echo $VIRTUAL_ENV",
                "command -v pip", "pip --version | cut -d' ' -f1", "deactivate; command -v python3"]
    for name in ("first", "second"):
        venv = tmp_path / "jobs" / name / "venv"
        assert run_job(local, name, commands) == (f"{venv}/bin/python\n{venv}\n{venv}\n{venv}/bin/pip\npip\n"
                                                  f"{tmp_path}/tools/python3\n")
    starts = (tmp_path / "python.starts").read_text().splitlines()
    assert len(starts) == 1  # the first job's search for python3; the second's answer was kept
    templates = templates_of(tmp_path)
    assert len(templates) == 1
    started = (tmp_path / "jobs" / "second" / "pid").stat().st_mtime
    venv = tmp_path / "jobs" / "second" / "venv"
    copied = os.lstat(venv / "bin" / "python3").st_mtime
    assert copied == os.lstat(templates[0] / "bin" / "python3").st_mtime < started  # a copy, not a venv made anew
    assert sorted(p.name for p in venv.iterdir()) == sorted(p.name for p in templates[0].iterdir())  # nothing more
    made_at = (templates[0].parent / "made-at").read_text().strip()
    for copy in ("bin/activate", "bin/activate.fish", "pyvenv.cfg", "bin/pip", "bin/pip3"):
        text = (venv / copy).read_text()
        assert "first" not in text and made_at not in text and str(templates[0].parent) not in text, copy
    for shim in ("pip", "pip3"):  # the job's own, executable after the copy and the rewrite
        assert (venv / "bin" / shim).read_text() == f'#!/bin/sh\nexec "{venv}/bin/python" -m pip "$@"\n'
        assert stat.S_IMODE((venv / "bin" / shim).stat().st_mode) & 0o100

    time.sleep(0.01)
    (tmp_path / "tools" / "python3.99").write_text("")  # an interpreter added on PATH: python3 is looked for again
    run_job(local, "third", ["true"])
    assert len((tmp_path / "python.starts").read_text().splitlines()) == 2


def templates_of(tmp_path: Path) -> list:
    """The venv templates the host keeps (each `venv` beside its `made-at`)."""
    return sorted(made_at.parent / "venv" for made_at in (tmp_path / "jobs" / HOST_CACHE).rglob("made-at"))


def test_a_changed_path_or_interpreter_is_looked_for_and_made_anew(login_home, tmp_path):
    """The kept answer and template hold only while what they came from is unchanged: another PATH looks python3 up
    again, an interpreter changed in place (its time here) gets a template of its own."""
    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    run_job(local, "first", ["true"])
    run_job(local, "second", ["true"])
    assert len((tmp_path / "python.starts").read_text().splitlines()) == 1
    more = tmp_path / "more"
    more.mkdir()
    with (login_home / ".profile").open("a") as profile:
        profile.write(f'export PATH="$PATH:{more}"\n')
    assert run_job(local, "third", ["echo $PATH"]).endswith(f":{more}\n")
    assert len((tmp_path / "python.starts").read_text().splitlines()) == 2  # another PATH: looked for again
    assert len(templates_of(tmp_path)) == 1

    # an interpreter of the test's own (a copy of this one beside its library), changed after its first job
    own = own_interpreter(tmp_path)
    (tmp_path / "tools" / "python3").unlink()
    (tmp_path / "tools" / "python3").symlink_to(own)  # where python3 points is in the kept answer's key
    before = templates_of(tmp_path)
    for name in ("fourth", "fifth"):
        venv = tmp_path / "jobs" / name / "venv"
        assert run_job(local, name, ['python -c "import sys; print(sys.prefix)"', "pip --version | cut -c1-4"]) == \
            f"{venv}\npip \n"
        assert f"executable = {own}\n" in (venv / "pyvenv.cfg").read_text()
    made = [template for template in templates_of(tmp_path) if template not in before]
    assert len(made) == 1  # the interpreter's own template, which the fifth job's venv is a copy of
    assert os.lstat(tmp_path / "jobs" / "fifth" / "venv" / "bin" / "python3").st_mtime == \
        os.lstat(made[0] / "bin" / "python3").st_mtime
    os.utime(own, (time.time() - 100, time.time() - 100))
    run_job(local, "sixth", ["true"])
    assert len(templates_of(tmp_path)) == 3  # a template of the changed interpreter, not the one before


def test_a_cluster_jobs_interpreter_is_kept_per_host_too(login_home, tmp_path):
    """A node of a multi-node run has its own bin folder (the cluster's `ssh`) first on PATH when the interpreter is
    looked for: the kept answer is used all the same, and no entry is added per run."""
    from provisioner.jobs.cluster_ssh import ClusterSSH

    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    cluster = ClusterSSH(private_key=b"not a key\n", known_hosts="", config="Host *\n  IdentityFile JOB_DIR/key\n")
    for name in ("first", "second", "third"):
        start_job(local, JobSpec(run_name=name, commands=["command -v ssh", "command -v python"], cluster_ssh=cluster))
        code, log = wait_exit(local, name, timeout=60)
        assert code == 0 and log == f"{tmp_path}/jobs/{name}/bin/ssh\n{tmp_path}/jobs/{name}/venv/bin/python\n", log
    assert len((tmp_path / "python.starts").read_text().splitlines()) == 1  # the first job's search alone
    assert len([p for p in (tmp_path / "jobs" / HOST_CACHE).iterdir() if p.name.startswith("interpreter-")]) == 1


def searches(tmp_path: Path) -> int:
    """How many times python3 was started (each search for the interpreter starts it once)."""
    return len((tmp_path / "python.starts").read_text().splitlines())


def test_a_folder_changed_in_the_tick_of_the_kept_answer_is_looked_for_again(login_home, tmp_path):
    """The kept answer holds while each PATH folder is strictly older than it: a folder whose time is the kept file's
    (changed in the clock tick it was written in, or the second, where the shell's test compares seconds) is a
    change; and an answer found while a folder's time is not before the search's start is not kept at all."""
    write_profile(login_home, "one")
    local = LocalTransport(str(tmp_path / "jobs"))
    tools = tmp_path / "tools"
    run_job(local, "first", ["true"])
    kept = tmp_path / "jobs" / HOST_CACHE / "interpreter-"
    os.utime(tools, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns))  # as if changed just after the writing
    run_job(local, "second", ["true"])
    assert searches(tmp_path) == 2
    run_job(local, "third", ["true"])
    assert searches(tmp_path) == 2  # the second kept its answer: the folder was older than its search

    later = time.time() + 1000  # a folder not older than the search's start: the answer is not kept
    os.utime(tools, (later, later))
    for name in ("fourth", "fifth"):
        run_job(local, name, ["true"])
    assert searches(tmp_path) == 4
    kept.unlink()
    os.utime(tools, (time.time() - 10, time.time() - 10))
    for name in ("sixth", "seventh"):
        run_job(local, name, ["true"])
    assert searches(tmp_path) == 5


def test_pyenvs_version_files_and_versions_and_a_path_folder_made_later_are_noticed(login_home, tmp_path):
    """The kept answer's key holds pyenv's global version file and ~/.python-version as text and the versions' names;
    a version reinstalled (the versions folder's time) and a PATH folder made after the answer was kept (missing
    then) are noticed by time. Not the shims folder's time: each `pyenv rehash` makes and removes its lock there."""
    root = login_home / ".pyenv"
    (root / "versions" / "3.11.1").mkdir(parents=True)
    (root / "shims").mkdir()
    later = tmp_path / "later"
    write_profile(login_home, "one")
    with (login_home / ".profile").open("a") as profile:
        profile.write(f'export PATH="$PATH:{root}/shims:{later}"\n')
    local = LocalTransport(str(tmp_path / "jobs"))
    run_job(local, "first", ["true"])
    time.sleep(0.01)
    (root / "shims" / ".pyenv-shim").write_text("")
    (root / "shims" / ".pyenv-shim").unlink()
    run_job(local, "second", ["true"])
    assert searches(tmp_path) == 1
    changes = [lambda: (root / "version").write_text("3.11.1\n"),
               lambda: (login_home / ".python-version").write_text("3.11.1\n"),
               lambda: (root / "versions" / "3.12.0").mkdir(),
               lambda: shutil.rmtree(root / "versions" / "3.11.1") or (root / "versions" / "3.11.1").mkdir(),
               lambda: later.mkdir()]
    for number, change in enumerate(changes, start=2):
        time.sleep(0.01)
        change()
        run_job(local, f"changed-{number}", ["true"])
        run_job(local, f"again-{number}", ["true"])
        assert searches(tmp_path) == number, change


def test_the_kept_template_is_used_without_a_stat_until_the_interpreter_is_written(login_home, tmp_path):
    """A job whose kept answer names the interpreter's template starts no `stat` (the interpreter's time is still the
    template's made-at's); an interpreter written in place gets a template of its own."""
    write_profile(login_home, "one")
    own = own_interpreter(tmp_path)
    tools = tmp_path / "tools"
    (tools / "stat").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/stat.calls\nexec {shutil.which("stat")} "$@"\n')
    (tools / "stat").chmod(0o755)
    (tools / "python3").unlink()
    (tools / "python3").symlink_to(own)
    local = LocalTransport(str(tmp_path / "jobs"))

    def stats() -> int:  # of the interpreter (the launcher's are of the profile's files and the output's size)
        calls = tmp_path / "stat.calls"
        return len([c for c in calls.read_text().splitlines() if "python" in c]) if calls.exists() else 0

    run_job(local, "first", ["true"])
    assert len(templates_of(tmp_path)) == 1
    before = stats()
    for name in ("second", "third"):
        venv = tmp_path / "jobs" / name / "venv"
        assert run_job(local, name, ['python -c "import sys; print(sys.prefix)"']) == f"{venv}\n"
        assert f"executable = {own}\n" in (venv / "pyvenv.cfg").read_text()
    assert stats() == before  # the kept template, named by the kept answer

    with open(own, "r+b") as interpreter:  # written in place: a new time, the same inode
        first = interpreter.read(1)
        interpreter.seek(0)
        interpreter.write(first)
    venv = tmp_path / "jobs" / "fourth" / "venv"
    assert run_job(local, "fourth", ['python -c "import sys; print(sys.prefix)"']) == f"{venv}\n"
    assert stats() == before + 1 and len(templates_of(tmp_path)) == 2
    made_at = templates_of(tmp_path)
    assert os.stat(own).st_mtime_ns in [os.stat(t.parent / "made-at").st_mtime_ns for t in made_at]
