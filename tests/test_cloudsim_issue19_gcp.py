"""Issue 19's GCP defects as scenarios against the simulated cloud (tests.cloudsim): each failed before its fix."""

import pytest

from tests.cloudsim.fixtures import wait_until
from tests.cloudsim.gcp import instance_of
from tests.cloudsim.tasks import gcp_task as task
from tests.helpers import write

pytestmark = pytest.mark.cloudsim



def test_missing_self_delete_permissions_are_found_before_any_gpu_vm_exists(cloudsim, tmp_path, dstack_home):
    """The credentials may not set an instance's IAM policy: that is known from the project's permissions before
    `up`, and the run goes without self-delete (a warning says what is missing) rather than failing once its GPU
    VM is created and billed. The L4 VM's NIC is gVNIC, which its machine series wants."""
    cloudsim.gcp.deny("compute.instances.setIamPolicy")
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "perm-1", types="g2-standard-4"), "-b", "gcp", "-y",
                             home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compute.instances.setIamPolicy" in result.stdout + result.stderr  # the warning names what is missing
    assert cloudsim.refusals() == []  # nothing was refused: nothing was tried that could not be done
    [instance] = cloudsim.ever("Instance")
    checked = [at for at, method, path in cloudsim.compute.requests if path.endswith(":testIamPermissions")]
    assert checked and checked[0] < instance.created_at  # asked before the VM existed
    assert "serviceAccount" not in instance.inputs and cloudsim.ever("InstanceIAMMember") == []
    assert instance.inputs["networkInterfaces"][0].get("nicType") == "GVNIC"
    assert cloudsim.live() == []


def test_a_type_sold_only_through_reservations_is_not_offered_on_demand(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "ultra-1", types="a3-ultragpu-8g")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 1
    assert "reservation" in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert cloudsim.calls == []  # nothing was tried in the cloud
    spot = task(tmp_path, "ultra-2", types="a3-ultragpu-8g", extra="spot_policy: spot\n")
    result = cloudsim.dstack("apply", "-f", spot, "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert cloudsim.ever("Instance")[0].inputs["scheduling"]["provisioningModel"] == "SPOT"
    assert cloudsim.live() == []


def test_a_service_account_iam_does_not_show_yet_is_waited_for_and_made_once(cloudsim, tmp_path, dstack_home):
    cloudsim.gcp.iam_delay_s = 3  # IAM's eventual consistency: a new account is not usable for 3 s
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "iam-1"), "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(cloudsim.ever("Account")) == 1
    assert cloudsim.live() == []


def test_a_sweep_refused_after_the_stack_is_destroyed_warns_and_ends_the_run(cloudsim, tmp_path, dstack_home):
    cloudsim.gcp.deny("compute.firewalls.list")  # the sweep lists firewalls by name; the stack deletes its own
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "sweep-1"), "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compute.firewalls.list" in result.stdout + result.stderr
    # the stack's resources are gone all the same; what only the sweep removes may remain, and `dstack gc` finds it
    assert {r.kind for r in cloudsim.live()} <= {"Account"}
    cloudsim.gcp.denied.clear()
    collected = cloudsim.dstack("gc", "-y", home=dstack_home)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert cloudsim.live() == []


GCP_FLEET = """type: fleet
name: pool
nodes: 1
backends: [gcp]
regions: [us-central1]
instance_types: [e2-standard-2]
idle_duration: 1h
"""


def test_a_fleet_instance_that_deleted_itself_is_not_claimed(cloudsim, tmp_path, dstack_home):
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "fleet.dstack.yml", GCP_FLEET), "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    kept = instance_of(cloudsim.world)
    cloudsim.world.fire(kept, "dstack-idle-power-off")  # its VM's own watchdog, before the store's idle clock
    wait_until(lambda: not kept.live, timeout=30)
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "after-1"), "-b", "gcp", "-y", home=dstack_home,
                             timeout=25)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(cloudsim.ever("Instance")) == 2 and "hello from after-1" in result.stdout


GCP_VOLUME = "type: volume\nname: gdata\nbackend: gcp\nregion: us-central1\nsize: 10\n"


def test_a_gcp_volume_never_goes_to_a_hyperdisk_only_machine_and_stays_attached(cloudsim, tmp_path, dstack_home):
    """A GCP volume is a pd-balanced disk, which N4 (cheaper here than N2) cannot attach: the run takes the N2.
    The instance ignores its attachedDisks, as the provider's AttachedDisk asks, so an update never detaches it."""
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "v.dstack.yml", GCP_VOLUME), "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    conf = task(tmp_path, "disk-1", types="n4-standard-2, n2-standard-2", command="ls /data",
                extra="volumes: [gdata:/data]\n")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert cloudsim.refusals() == []
    [instance] = cloudsim.ever("Instance")
    assert instance.inputs["machineType"] == "n2-standard-2"
    assert "attachedDisks" in instance.extra["options"].get("ignoreChanges", [])
    assert [r.kind for r in cloudsim.live()] == ["Disk"]


def test_the_guest_agent_setting_is_written_once_however_often_the_vm_boots(cloudsim, tmp_path, dstack_home):
    """A compact-placement cluster's VMs stop for host maintenance and start again (onHostMaintenance TERMINATE,
    automatic restart): bootcmd runs at every boot, and the guest agent's setting must not pile up."""
    conf = task(tmp_path, "reboot-1", types="n2-standard-2", command="sleep 300", extra="nodes: 2\n")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "gcp", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    node = sorted(cloudsim.live("Instance"), key=lambda r: r.id)[0]
    cloudsim.gcp.maintenance(node)
    cloudsim.gcp.maintenance(node)
    assert len(node.boots) == 3 and cloudsim.world.boot_errors() == []
    setting = node.vm.file("/etc/default/instance_configs.cfg")
    assert setting.count("set_host_keys = false") == 1, setting
    stopped = cloudsim.dstack("stop", "reboot-1", "-y", home=dstack_home)
    assert stopped.returncode == 0 and cloudsim.live() == []
