"""Races between dstack processes: `ps` (reconcile) and `stop` against an `apply` that is still starting its job,
an owner whose pid was reused, and two runs taking the same fleet host at once."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from configuration.backends import DstackConfig
from configuration.interpolation import resolve_run
from configuration.loader import parse_configuration
from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.backends.hosts import FleetBackend
from provisioner.host.access import HostAccess
from provisioner.host.transport import LocalTransport
from provisioner.jobs import run_jobs
from provisioner.jobs.control import start_job
from provisioner.jobs.script import JobSpec
from provisioner.planning.host_offers import local_offer
from provisioner.runs.lifecycle import submit
from provisioner.host.owner import owner_alive, process_start_time
from provisioner.runs.reconcile import reconcile
from provisioner.runs.session import RunSession
from provisioner.runs.teardown import stop_run
from provisioner.store.records import RunRecord
from provisioner.store.store import StateStore
from stacks.errors import StackFailure
from tests.helpers import ROOT, run_cli, write
from tests.test_runs import group_alive, ps


def local_session() -> RunSession:
    return RunSession(store=StateStore(), config=DstackConfig())


def job_pgid(dstack_home: Path, name: str) -> int:
    return int((dstack_home / "jobs" / name / "pid").read_text())


def group_gone(pgid: int, timeout: float = 5) -> bool:
    """Killed processes stay in their group as zombies until reaped, for a moment."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not group_alive(pgid)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, 9)
    except ProcessLookupError:
        pass


class HeldStart:
    """Holds `submit` just before it starts the job (its host chosen and recorded), until released."""

    def __init__(self, monkeypatch):
        self.reached, self.release = threading.Event(), threading.Event()
        real = run_jobs.start_job

        def held(transport, job, repo=None):
            self.reached.set()
            assert self.release.wait(60)
            return real(transport, job, repo)

        monkeypatch.setattr(run_jobs, "start_job", held)


def submit_in_thread(name: str, detach: bool):
    configuration = parse_configuration(f"type: task\nname: {name}\ncommands: [sleep 300]\n", "r.dstack.yml")
    result = {}

    def run():
        try:
            result["record"] = submit(local_session(), name, resolve_run(configuration, "r.dstack.yml", [], {}),
                                             [local_offer()[0]], None, detach)
        except BaseException as e:  # surfaced by the test
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_reconcile_leaves_a_run_whose_live_owner_is_starting_it(monkeypatch, dstack_home):
    held = HeldStart(monkeypatch)
    thread, result = submit_in_thread("starting", detach=True)
    assert held.reached.wait(30)
    try:
        records = {r.name: r for r in reconcile(local_session())}  # `dstack ps` while `apply -d` starts it
        assert records["starting"].active, (records["starting"].status, records["starting"].reason)
    finally:
        held.release.set()
        thread.join(60)
    assert "error" not in result and result["record"].status == "running"
    pgid = job_pgid(dstack_home, "starting")
    try:
        record = {r.name: r for r in reconcile(local_session())}["starting"]
        assert (record.status, record.reason) == ("running", None) and group_alive(pgid)
        stopped = stop_run(local_session(), "starting", abort=True)
        assert (stopped.status, stopped.reason) == ("terminated", "aborted") and group_gone(pgid)
    finally:
        kill_group(pgid)


def test_stop_while_the_owner_starts_the_job_stops_the_job(monkeypatch, dstack_home):
    held = HeldStart(monkeypatch)
    thread, result = submit_in_thread("stopped-early", detach=False)
    assert held.reached.wait(30)
    stopped = {}
    stopper = threading.Thread(target=lambda: stopped.update(record=stop_run(local_session(), "stopped-early")))
    stopper.start()
    deadline = time.monotonic() + 30
    while StateStore().get_run("stopped-early").status != "terminating" and time.monotonic() < deadline:
        time.sleep(0.02)
    held.release.set()  # the owner starts the job only now, after `dstack stop` has claimed the run
    thread.join(60)
    stopper.join(60)
    pgid = job_pgid(dstack_home, "stopped-early")
    try:
        assert "error" not in result, result
        assert (stopped["record"].status, stopped["record"].reason) == ("terminated", "stopped by user")
        assert StateStore().get_run("stopped-early").status == "terminated"
        assert group_gone(pgid)
    finally:
        kill_group(pgid)


def exited_local_job(name: str) -> None:
    transport = LocalTransport(str(Path(os.environ["DSTACK_HOME"]) / "jobs"))
    start_job(transport, JobSpec(run_name=name, commands=["echo done"]))
    exit_code = Path(os.environ["DSTACK_HOME"]) / "jobs" / name / "exit_code"
    deadline = time.monotonic() + 60  # generous: a loaded machine starts a job slowly
    while not exit_code.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert exit_code.exists(), f"the job {name} did not end within 60 s"


def test_an_owner_whose_pid_was_reused_is_no_owner():
    me, started = os.getpid(), process_start_time(os.getpid())
    assert owner_alive(me, started) and not owner_alive(me, started + 1)
    exited_local_job("reused")
    StateStore().create_run(RunRecord(name="reused", status="running", submitted_at=time.time(), backend="local",
                                      host=HostAccess(kind="local").to_json(), started_at=time.time(),
                                      owner_pid=me, owner_started=started + 1))  # attached, but not to this process
    record = {r.name: r for r in reconcile(local_session())}["reused"]
    assert (record.status, record.exit_code) == ("done", 0)


def test_a_job_that_has_just_ended_is_not_judged_gone(dstack_home):
    """Between the end of a job's process group and its exit code being written, the job looks gone for a
    moment; reconcile asks again rather than recording a failure."""
    folder = dstack_home / "jobs" / "just-ended"
    folder.mkdir(parents=True)
    ended = subprocess.Popen(["true"], start_new_session=True)
    ended.wait()
    (folder / "pid").write_text(f"{ended.pid}\n")
    StateStore().create_run(RunRecord(name="just-ended", status="running", submitted_at=time.time(),
                                      backend="local", host=HostAccess(kind="local").to_json(), detached=True))
    writer = threading.Timer(run_jobs.JOB_SETTLE_S / 3, lambda: (folder / "exit_code").write_text("0\n"))
    writer.start()
    record = {r.name: r for r in reconcile(local_session())}["just-ended"]
    writer.join()
    assert (record.status, record.exit_code, record.reason) == ("done", 0, None)


FLEET_HOST = HostAccess(kind="ssh", hostname="10.251.250.2", user="root")  # never connected to here
FLEET_OFFER = Offer("ssh", InstanceType(FLEET_HOST.hostname, 2, 4.0, "", "", 0, 0.0, "x86", False), "lab", (),
                    False, 0.0, 50.0, 0.0)


def provisioning_run(store: StateStore, name: str) -> None:
    store.create_run(RunRecord(name=name, status="provisioning", submitted_at=time.time(), backend="ssh"))


@pytest.mark.usefixtures("store_engine")  # both engines: SQLite, the team database
def test_a_fleet_host_is_taken_by_one_run_only():
    store = StateStore()
    backend = FleetBackend(store, {("lab", FLEET_HOST.hostname): FLEET_HOST})
    provisioning_run(store, "first")
    provisioning_run(store, "second")
    assert backend.provision("first", FLEET_OFFER, None, None) == [FLEET_HOST]
    with pytest.raises(StackFailure, match="busy with run first"):  # before `first` has even connected
        backend.provision("second", FLEET_OFFER, None, None)
    store.update_run("first", status="done")
    assert backend.provision("second", FLEET_OFFER, None, None) == [FLEET_HOST]


def test_simultaneous_claims_of_a_fleet_host_never_double_book(store_engine):
    """Both engines; the team database's connections are slower to make: fewer trials there."""
    hosts = {("lab", FLEET_HOST.hostname): FLEET_HOST}
    store = StateStore()
    for trial in range(100 if store_engine == "sqlite" else 40):
        names = [f"t{trial}-a", f"t{trial}-b"]
        for name in names:
            provisioning_run(store, name)
        barrier = threading.Barrier(2)
        won = []

        def take(name):
            backend = FleetBackend(StateStore(), hosts)  # its own connection, as another process has
            barrier.wait()
            try:
                backend.provision(name, FLEET_OFFER, None, None)
                won.append(name)
            except StackFailure:
                pass

        threads = [threading.Thread(target=take, args=(name,)) for name in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"trial {trial}: {won} both took the host"
        store.update_run(won[0], status="done")


def test_two_detached_applies_on_a_one_host_fleet(tmp_path, dstack_home, make_host, client_key):
    host = make_host()
    env = {"DSTACK_HOME": str(dstack_home)}
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: one\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{host.address}]\n")
    assert run_cli("apply", "-f", fleet, "-y", env=env).returncode == 0
    confs = [write(tmp_path, f"{n}.dstack.yml", f"type: task\nname: {n}\nbackends: [ssh]\ncommands: [sleep 300]\n")
             for n in ("left", "right")]
    full_env = dict(os.environ, **env)
    applies = [subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", c, "-y", "-d"], cwd=ROOT,
                                env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in confs]
    outcomes = [(p.wait(120), p.stderr.read()) for p in applies]
    runs = ps(env)
    try:
        assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
        loser = next(err for code, err in outcomes if code == 1)
        assert "is busy with run" in loser and "Traceback" not in loser
        assert sorted(r["status"] for r in runs.values()) == ["failed", "running"]
    finally:
        for name, run in runs.items():
            if run["status"] == "running":
                assert run_cli("stop", name, "--abort", env=env).returncode == 0


def test_detached_applies_and_parallel_ps_leave_every_job_running(tmp_path, dstack_home):
    """The probe that found the race: `dstack ps` in a loop while detached applies start their jobs."""
    env = dict(os.environ, DSTACK_HOME=str(dstack_home))
    names = [f"par-{i}" for i in range(3)]
    applies = [subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-y", "-d", "-f",
                                 write(tmp_path, f"{n}.dstack.yml", f"type: task\nname: {n}\ncommands: [sleep 300]\n")],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for n in names]
    while any(p.poll() is None for p in applies):
        subprocess.run([sys.executable, "-m", "cli.main", "ps"], cwd=ROOT, env=env, capture_output=True,
                       timeout=60)
    pgids = []
    try:
        assert [p.wait() for p in applies] == [0, 0, 0], [p.stderr.read() for p in applies]
        pgids = [job_pgid(dstack_home, n) for n in names]
        runs = ps({"DSTACK_HOME": str(dstack_home)})
        assert {n: runs[n]["status"] for n in names} == {n: "running" for n in names}
        for name, pgid in zip(names, pgids):
            assert group_alive(pgid)
            assert run_cli("stop", name, "--abort", env={"DSTACK_HOME": str(dstack_home)}).returncode == 0
            assert group_gone(pgid)
    finally:
        for pgid in pgids:
            kill_group(pgid)



def test_an_owner_id_being_made_by_another_process_is_read_whole(dstack_home, monkeypatch):
    """The first command in a new $DSTACK_HOME makes its owner id; another starting at that moment (here a thread,
    while the first is held between making the file and writing it) reads an id, the same, never an empty file."""
    import secrets

    from configuration.owner import owner_id

    made = threading.Event()
    token_hex = secrets.token_hex

    def held_token(size):
        if not made.is_set():  # the first maker: held while the second looks
            made.set()
            time.sleep(0.5)
        return token_hex(size)

    monkeypatch.setattr(secrets, "token_hex", held_token)
    first = {}
    maker = threading.Thread(target=lambda: first.update(id=owner_id()))
    maker.start()
    assert made.wait(10)
    second = owner_id()
    maker.join()
    assert first["id"] == second and len(second) == 8
    assert [p.name for p in dstack_home.iterdir() if p.name.startswith(".owner")] == []  # no draft left behind
