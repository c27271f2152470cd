"""What GCP's machine series ask of an offer and of a stack (issue 19, items 3 and 14): the machine types Google sells
on demand only through reservations are offered as spot (or on demand to a run with `reservation`, which its VMs
then consume), through `dstack offer --json` and the plan; a network volume (a pd-balanced disk) is never planned on
a Hyperdisk-only series; the series that need or prefer gVNIC get it; an instance beside its AttachedDisk ignores
its `attachedDisks`; and the guest agent's setting is written once however often the VM boots."""

import json
import subprocess
import time

import pytest

from offers.consumption import RESERVATION_BOUND
from tests.helpers import run_cli, write
from tests.test_stacks import gcp

BOUND = RESERVATION_BOUND["gcp"]


def offers(*args, env=None):
    result = run_cli("offer", "-b", "gcp", "--json", "--max-offers", "500", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("gpu, bound", [("H100:8", {"a3-highgpu-8g", "a3-megagpu-8g"}),
                                        ("H200:8", {"a3-ultragpu-8g", "a3-ultragpu-8g-nolssd"}),
                                        ("B200:8", {"a4-highgpu-8g"})])
def test_machine_types_sold_only_through_reservations_are_offered_as_spot_only(gpu, bound):
    document = offers("--gpu", gpu)
    on_demand = {o["instance"]["name"] for o in document["offers"] if not o["instance"]["resources"]["spot"]}
    spot = {o["instance"]["name"] for o in document["offers"] if o["instance"]["resources"]["spot"]}
    assert not {name for name in on_demand if name.startswith(BOUND)}, on_demand
    assert bound <= spot  # still offered, as spot
    [note] = document["notes"]
    assert note.startswith(f"gcp {', '.join(sorted(bound))}: offered as spot only")
    only_on_demand = offers("--gpu", gpu, "--on-demand")
    assert not any(o["instance"]["name"].startswith(BOUND) for o in only_on_demand["offers"])
    assert only_on_demand["notes"] == [note]
    assert "notes" not in offers("--gpu", "L4:1")  # nothing left out: the document keeps its shape


def test_a_reservation_opens_them_on_demand_and_its_vms_consume_it(tmp_path, dstack_home):
    pytest.importorskip("pulumi_gcp")
    conf = write(tmp_path, "r.dstack.yml", "type: task\nname: big\ncommands: [nvidia-smi]\n"
                 "resources: {gpu: H100:8}\nreservation: my-a3-block\n")
    document = offers("-f", conf)
    assert document["requirements"]["reservation"] == "my-a3-block" and "notes" not in document
    assert not any(o["instance"]["resources"]["spot"] for o in document["offers"])  # a spot VM consumes none
    assert {"a3-megagpu-8g", "a3-highgpu-8g"} <= {o["instance"]["name"] for o in document["offers"]}

    env = {"DSTACK_HOME": str(dstack_home)}
    result = run_cli("apply", "-f", conf, "-b", "gcp", "--instance-type", "a3-megagpu-8g", "--dry-run", "--json",
                     env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["offer"]["instance"]["name"] == "a3-megagpu-8g" and not plan["offer"]["instance"]["resources"]["spot"]
    [instance] = [r["inputs"] for r in plan["resources"] if r["type"] == "gcp:compute/instance:Instance"]
    assert instance["reservationAffinity"] == {
        "type": "SPECIFIC_RESERVATION",
        "specificReservation": {"key": "compute.googleapis.com/reservation-name", "values": ["my-a3-block"]}}
    assert instance["scheduling"]["provisioningModel"] == "RESERVATION_BOUND"
    assert instance["scheduling"]["instanceTerminationAction"] == "DELETE"

    refused = run_cli("apply", "-f", conf, "-b", "aws", "--dry-run", env=env)
    assert refused.returncode == 1
    assert "`reservation` is not supported on the aws backend: only a GCP VM consumes a named reservation" in \
        refused.stderr


def test_the_plan_says_which_types_went_spot_only(tmp_path, dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    h100 = write(tmp_path, "h100.dstack.yml", "type: task\ncommands: [nvidia-smi]\nresources: {gpu: H100:8}\n")
    result = run_cli("apply", "-f", h100, "-b", "gcp", "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert not plan["offer"]["instance"]["name"].startswith(BOUND)  # on demand (a run's default): A3 Edge
    [note] = plan["notes"]
    assert note.startswith("gcp a3-highgpu-8g") and "offered as spot only" in note
    human = run_cli("apply", "-f", h100, "-b", "gcp", "--dry-run", env=env)
    assert f"Note: {note[:40]}" in human.stdout

    b200 = write(tmp_path, "b200.dstack.yml", "type: task\ncommands: [nvidia-smi]\nresources: {gpu: B200:8}\n")
    result = run_cli("apply", "-f", b200, "-b", "gcp", "--dry-run", "--json", env=env)
    assert result.returncode == 1 and json.loads(result.stdout)["offer"] is None
    assert "no offers match" in result.stderr and "gcp a4-highgpu-8g: offered as spot only" in result.stderr
    spot = run_cli("apply", "-f", b200, "-b", "gcp", "--spot-auto", "--dry-run", "--json", env=env)
    assert json.loads(spot.stdout)["offer"]["instance"]["resources"]["spot"]  # the way to a B200 without one


# --- item 14: disks, NICs, attached disks, the guest agent ---

def test_a_network_volume_is_never_planned_on_a_hyperdisk_only_series(tmp_path, dstack_home):
    from provisioner.store.records import VolumeRecord
    from provisioner.store.store import StateStore

    StateStore().create_volume(VolumeRecord(name="ckpt", status="active", backend="gcp", region="us-central1",
                                            zone="us-central1-a", volume_id="dstack-x-vol-ckpt",
                                            created_at=time.time()))
    env = {"DSTACK_HOME": str(dstack_home)}
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\nvolumes: [ckpt:/ckpt]\n"
                 "instance_types: [c4-standard-4, c3-standard-4]\n")
    result = run_cli("apply", "-f", conf, "-b", "gcp", "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["offer"]["instance"]["name"] == "c3-standard-4"  # c4 is cheaper, and cannot attach pd-balanced
    assert plan["offer"]["availability_zones"] == ["us-central1-a"]
    only_c4 = write(tmp_path, "c4.dstack.yml", "type: task\ncommands: [x]\nvolumes: [ckpt:/ckpt]\n"
                    "instance_types: [c4-standard-4]\n")
    result = run_cli("apply", "-f", only_c4, "-b", "gcp", "--dry-run", env=env)
    assert result.returncode == 1
    assert "c4-standard-4 take Hyperdisk only, and a GCP network volume is a pd-balanced disk" in result.stderr


@pytest.mark.parametrize("machine, nic", [("a3-highgpu-8g", "GVNIC"), ("a2-highgpu-1g", "GVNIC"),
                                          ("g2-standard-8", "GVNIC"), ("c3-standard-4", "GVNIC"),
                                          ("n4-standard-4", "GVNIC"), ("n1-standard-8", None),
                                          ("e2-standard-4", None)])
def test_the_series_that_need_or_prefer_gvnic_get_it(machine, nic):
    instance = gcp(instance_type=machine).of_type("gcp:compute/instance:Instance")[0].inputs
    assert instance["networkInterfaces"][0].get("nicType") == nic


def test_an_instance_beside_its_attached_disk_ignores_its_attached_disks(monkeypatch):
    import pulumi_gcp

    from stacks.volume_spec import VolumeAttachment

    options = {}
    original = pulumi_gcp.compute.Instance.__init__

    def recording(self, resource_name, *args, **kwargs):
        options[resource_name] = kwargs.get("opts")
        original(self, resource_name, *args, **kwargs)

    monkeypatch.setattr(pulumi_gcp.compute.Instance, "__init__", recording)
    recorder = gcp(volumes=(VolumeAttachment("ckpt", "dstack-x-vol-ckpt", "dstack-ckpt"),))
    [disk] = recorder.of_type("gcp:compute/attachedDisk:AttachedDisk")
    assert disk.inputs["disk"] == "dstack-x-vol-ckpt"
    assert options["dstack-0a1b2c3d-train-1"].ignore_changes == ["attachedDisks"]
    gcp()  # without a volume, nothing is ignored
    assert not options["dstack-0a1b2c3d-train-1"].ignore_changes


def test_the_guest_agents_setting_is_written_once_however_often_the_vm_boots(tmp_path):
    import dataclasses

    import yaml

    from stacks.spec import cloud_init
    from tests.test_stacks import BASE

    [bootcmd] = yaml.safe_load(cloud_init(dataclasses.replace(BASE, backend="gcp")))["bootcmd"]
    assert bootcmd[:2] == ["sh", "-c"]
    config = tmp_path / "default" / "instance_configs.cfg"
    command = bootcmd[2].replace("/etc/default", str(tmp_path / "default"))
    assert str(config) in command and "/etc/default/instance_configs.cfg" not in command
    for boot in range(3):
        subprocess.run(["sh", "-c", command], check=True)
    assert config.read_text() == "[InstanceSetup]\nset_host_keys = false\n"
    config.write_text("[Accounts]\nreuse_homedir = true\n[InstanceSetup]\nset_host_keys = false\n")
    subprocess.run(["sh", "-c", command], check=True)  # set already, by whatever wrote it: left alone
    assert config.read_text().count("set_host_keys") == 1
