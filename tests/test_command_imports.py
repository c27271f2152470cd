"""What a command imports (issue 23: start-up is most of `ps` and much of `apply`). `dstack ps` with no run to
reconcile and no cloud fleet to keep reads the store alone (no pydantic, no cloud backend, no
teardown, no cloud SDK or SSH library); a run that no live process looks after, or an expired idle fleet, still gets
its modules, and is finished. No command loads a pydantic plugin unless PYDANTIC_DISABLE_PLUGINS is set."""

import os
import subprocess
import sys
import textwrap
import time

from provisioner.store.records import InstanceRecord, RunRecord
from provisioner.store.statuses import RunStatus
from provisioner.store.store import StateStore
from tests.helpers import ROOT

HEAVY = ("pydantic", "pulumi", "boto3", "botocore", "paramiko", "google", "configuration.backends",
         "provisioner.backends", "provisioner.runs.reconcile", "provisioner.runs.teardown",
         "provisioner.runs.session", "provisioner.jobs.control")
OFFER = {"backend": "aws", "region": "us-east-1", "price": 0.08}
HOST = {"kind": "ssh", "hostname": "10.251.250.2"}  # never contacted


def ps_in_its_own_interpreter(dstack_home, *args) -> tuple:
    """(stdout, the HEAVY modules that `dstack ps ARGS` imported) from a fresh interpreter, as a user runs it."""
    code = (f"import sys; sys.argv = ['dstack', 'ps', *{list(args)!r}]\nimport cli.main\ncli.main.main()\n"
            f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "DSTACK_HOME": str(dstack_home)})
    assert done.returncode == 0, done.stderr
    return done.stdout, eval(done.stderr.strip().splitlines()[-1])


def quiet_store() -> StateStore:
    """Finished runs and an active run whose owner (this test's process) is alive: nothing for `dstack ps` to do
    but list."""
    from provisioner.host.owner import current_owner

    store = StateStore()
    for i in range(3):
        store.create_run(RunRecord(name=f"old-{i}", status=RunStatus.DONE, submitted_at=1e9 + i, backend="aws",
                                   finished_at=1e9 + i + 60, exit_code=0))
    pid, started = current_owner()
    store.create_run(RunRecord(name="live", status=RunStatus.RUNNING, submitted_at=time.time(), backend="local",
                               host={"kind": "local"}, owner_pid=pid, owner_started=started))
    return store


def test_ps_with_nothing_to_finish_imports_no_reconciliation_nor_cloud_module(dstack_home):
    quiet_store()
    for args in ((), ("-a",), ("--json",), ("-a", "-v")):
        out, heavy = ps_in_its_own_interpreter(dstack_home, *args)
        assert "live" in out and heavy == [], (args, heavy)


def test_ps_still_reconciles_a_run_that_no_process_looks_after(dstack_home):
    store = quiet_store()
    store.create_run(RunRecord(name="orphan", status=RunStatus.PROVISIONING, submitted_at=time.time(), backend="aws",
                               owner_pid=999999999))  # its owner is gone: the next `ps` finishes it
    out, heavy = ps_in_its_own_interpreter(dstack_home, "-a")
    assert "provisioner.runs.reconcile" in heavy and "orphan" in out
    record = store.get_run("orphan")
    assert (record.status, record.reason) == (RunStatus.FAILED, "interrupted while provisioning")
    assert store.get_run("live").status == RunStatus.RUNNING


def test_ps_still_expires_an_idle_fleet_past_its_idle_duration(dstack_home):
    store = quiet_store()
    store.create_cloud_fleet("stale", "run stale", "aws", {}, None, [
        InstanceRecord("stale", 0, "aws", OFFER, HOST, idle_since=time.time() - 120, idle_duration=60)])
    _, heavy = ps_in_its_own_interpreter(dstack_home)
    assert "provisioner.backends.cloud_fleets" in heavy
    assert store.list_cloud_fleets() == []  # no stack left to destroy: gone


PLUGIN = textwrap.dedent("""
    import os
    open(os.environ["PLUGIN_MARK"], "a").write("loaded\\n")

    class Plugin:
        def new_schema_validator(self, *args, **kwargs):
            return None, None, None

    plugin = Plugin()
""")


def test_no_pydantic_plugin_is_looked_for_unless_the_user_sets_pydantic_disable_plugins(tmp_path, dstack_home):
    """An installed pydantic plugin (a distribution with a `pydantic` entry point) is not loaded by `dstack apply`:
    pydantic's search of every distribution is skipped. PYDANTIC_DISABLE_PLUGINS set (even empty) is pydantic's
    own switch: then it looks, and loads it. The job's environment is not touched either way."""
    (tmp_path / "fake_pydantic_plugin.py").write_text(PLUGIN)
    info = tmp_path / "fake_pydantic_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pydantic-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nfake = fake_pydantic_plugin:plugin\n")
    mark = tmp_path / "mark"
    env = {**os.environ, "DSTACK_HOME": str(dstack_home), "PLUGIN_MARK": str(mark), "PYTHONPATH": str(tmp_path)}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\ncommands: ['echo ${PYDANTIC_DISABLE_PLUGINS-unset}']\n")
    applied = subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", str(conf), "-y"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr
    assert "unset" in applied.stdout and not mark.exists()
    dry = subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", str(conf), "--dry-run"], cwd=ROOT,
                         env={**env, "PYDANTIC_DISABLE_PLUGINS": ""}, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert mark.read_text().startswith("loaded")
