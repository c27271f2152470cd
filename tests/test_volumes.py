"""Volumes: `type: volume` configurations, their stacks and the attachments in a run's stack (Pulumi mocks), the
state records, `dstack volume list|get|delete`, a task's network volumes (missing, busy, placed), the host's
format-on-first-use and mount step against a file-backed disk, and instance volumes end to end on this machine and
on an SSH fleet host."""

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from configuration.errors import ConfigurationError
from configuration.loader import parse_configuration
from provisioner.jobs.mounts import VOLUMES_ROOT, InstanceMount, Mounts, NetworkMount, docker_volume_args, mount_steps
from provisioner.store.records import RunRecord, VolumeRecord
from provisioner.store.store import StateStore
from stacks.volume_spec import VolumeAttachment, VolumeSpec, aws_device_path
from tests.docker_daemon import docker_daemon  # noqa: F401 (fixture)
from tests.helpers import run_cli, write
from tests.test_stacks import BASE, Recorder

EBS = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"


def cli(env, *args):
    return run_cli(*args, env=env)


# --- the configuration --------------------------------------------------------------------------------------------

def test_volume_configuration_as_dstack_defines_it():
    volume = parse_configuration("type: volume\nname: data\nbackend: AWS\nregion: eu-west-1\n"
                                 "availability_zone: eu-west-1b\nsize: 100GB\ntags: {team: ml}\n", "v.yml")
    assert (volume.backend, volume.region, volume.availability_zone, volume.size, volume.is_external) == \
        ("aws", "eu-west-1", "eu-west-1b", 100, False)
    registered = parse_configuration("type: volume\nbackend: gcp\nregion: us-central1\nvolume_id: my-disk\n", "v.yml")
    assert registered.is_external and registered.name is None and registered.size is None


@pytest.mark.parametrize("text, message", [
    ("backend: aws\nregion: us-east-1\n", "`size` must be set to create a volume"),
    ("backend: azure\nregion: x\nsize: 10\n", "backend: 'azure' is not allowed"),
    ("backend: aws\nregion: us-east-1\navailability_zone: eu-west-1a\nsize: 10\n", "is not in region 'us-east-1'"),
    ("backend: aws\nregion: us-east-1\nsize: 0.5GB\n", "a whole number of GB, at least 1GB"),
    ("backend: aws\nregion: us-east-1\nsize: 10\nmount: /x\n", "mount"),
])
def test_volume_configuration_errors(text, message):
    with pytest.raises(ConfigurationError, match=message.replace("`", ".").replace("(", ".").replace(")", ".")):
        parse_configuration(f"type: volume\nname: v1\n{text}", "v.yml")


# --- the programs under Pulumi's mocks ----------------------------------------------------------------------------

SPEC = VolumeSpec(name="data", backend="aws", region="us-east-1", zone="us-east-1b", size_gb=100, owner="0a1b2c3d",
                  user_tags=(("team", "ml"),))


def test_aws_volume_program_is_one_tagged_ebs_volume():
    from stacks.aws.volume import aws_volume_program

    recorder = Recorder().run(lambda: aws_volume_program(SPEC))
    assert [r.typ for r in recorder.resources if not r.typ.startswith("pulumi:providers")] == [EBS]
    volume = recorder.of_type(EBS)[0].inputs
    assert (volume["availabilityZone"], volume["size"], volume["type"], volume["encrypted"]) == \
        ("us-east-1b", 100, "gp3", True)
    assert volume["tags"] == {"dstack:volume": "data", "dstack:owner": "0a1b2c3d", "dstack:project": "dstack",
                              "Name": "dstack-0a1b2c3d-vol-data", "team": "ml"}


def test_gcp_volume_program_is_one_labelled_disk():
    from stacks.gcp.volume import gcp_volume_program

    spec = dataclasses.replace(SPEC, backend="gcp", region="us-central1", zone="us-central1-a",
                               gcp_project_id="my-project", user_tags=(("Team", "ML"),))
    disk = Recorder().run(lambda: gcp_volume_program(spec)).of_type("gcp:compute/disk:Disk")[0].inputs
    assert (disk["name"], disk["zone"], disk["size"], disk["type"]) == \
        ("dstack-0a1b2c3d-vol-data", "us-central1-a", 100, "pd-balanced")
    assert disk["labels"] == {"dstack-volume": "data", "dstack-owner": "0a1b2c3d", "dstack-project": "dstack",
                              "team": "ml"}


def test_aws_run_stack_attaches_its_volumes_and_leaves_detaching_to_termination():
    from stacks.aws.program import aws_program

    volumes = (VolumeAttachment("data", "vol-0abc", "/dev/sdf"), VolumeAttachment("ckpt", "vol-0def", "/dev/sdg"))
    recorder = Recorder().run(lambda: aws_program(dataclasses.replace(BASE, volumes=volumes)))
    attachments = sorted((a.inputs["volumeId"], a.inputs["deviceName"], a.inputs["instanceId"],
                          a.inputs["skipDestroy"]) for a in recorder.of_type(ATTACHMENT))
    instance = recorder.of_type("aws:ec2/instance:Instance")[0].name
    assert attachments == [("vol-0abc", "/dev/sdf", f"{instance}-id", True),
                           ("vol-0def", "/dev/sdg", f"{instance}-id", True)]
    assert not [r for r in Recorder().run(lambda: aws_program(BASE)).resources if r.typ == ATTACHMENT]


def test_gcp_run_stack_attaches_its_disks():
    from stacks.gcp.program import gcp_program

    spec = dataclasses.replace(BASE, backend="gcp", instance_type="n1-standard-8", region="us-central1",
                               zone="us-central1-a", gpu_name="T4", gpu_memory_gib=16, gcp_project_id="my-project",
                               volumes=(VolumeAttachment("data", "dstack-0a1b2c3d-vol-data", "dstack-data"),))
    recorder = Recorder().run(lambda: gcp_program(spec))
    disk = recorder.of_type("gcp:compute/attachedDisk:AttachedDisk")[0].inputs
    assert (disk["disk"], disk["deviceName"], disk["zone"]) == \
        ("dstack-0a1b2c3d-vol-data", "dstack-data", "us-central1-a")


# --- records, creation before `up`, deletion ----------------------------------------------------------------------

def fake_pulumi(monkeypatch, store, outputs):
    """The stack calls replaced: `up` checks the record is written before it, and returns `outputs`."""
    import stacks.automation as automation

    calls = []

    def up(stack, on_event=None):
        record = store.get_volume("data")
        assert record.status == "submitted" and record.stack["name"].startswith("volume-data-")
        calls.append(("up", stack))
        return outputs

    monkeypatch.setattr(automation, "require_pulumi", lambda: None)
    monkeypatch.setattr(automation, "open_stack", lambda name, program, settings: name)
    monkeypatch.setattr(automation, "stack_up", up)
    monkeypatch.setattr(automation, "stack_destroy", lambda stack, on_event=None: calls.append(("destroy", stack)))
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    return calls


def test_a_volume_is_recorded_before_up_and_its_stack_destroyed_on_delete(monkeypatch):
    from configuration.backends import DstackConfig
    from provisioner.backends.volume_stacks import create_volume, delete_volume

    store = StateStore()
    calls = fake_pulumi(monkeypatch, store, {"volume_id": "vol-0new", "zone": "us-east-1a"})
    configuration = parse_configuration("type: volume\nname: data\nbackend: aws\nregion: us-east-1\nsize: 50\n", "v")
    record = create_volume(store, DstackConfig(), "data", configuration, "v", lambda progress: None)
    assert (record.status, record.volume_id, record.zone, record.size_gb) == ("active", "vol-0new", "us-east-1a", 50)
    delete_volume(store, DstackConfig(), "data", lambda progress: None)
    assert [c[0] for c in calls] == ["up", "destroy"] and calls[1][1] == record.stack["name"]
    assert store.get_volume("data") is None


def test_volume_dry_run_renders_its_stack(tmp_path, home_env):
    conf = write(tmp_path, "v.dstack.yml", "type: volume\nname: data\nbackend: aws\nregion: us-east-1\nsize: 100GB\n")
    result = cli(home_env, "apply", "-f", conf, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["volume"]["availability_zone"] == "us-east-1a"  # the region's first regular zone
    assert [(r["type"], r["inputs"]["size"], r["inputs"]["availabilityZone"]) for r in plan["resources"]] == \
        [(EBS, 100, "us-east-1a")]
    assert cli(home_env, "volume", "list", "--json").stdout.strip() == '{\n  "volumes": []\n}'


def test_offers_of_a_volume_file_is_a_usage_error(tmp_path, home_env):
    conf = write(tmp_path, "v.dstack.yml", "type: volume\nname: data\nbackend: aws\nregion: us-east-1\nsize: 10\n")
    result = cli(home_env, "offers", "-f", conf)
    assert result.returncode == 2 and "a volume configuration has no resources to match" in result.stderr


def test_auto_cleanup_duration_is_refused_by_name(tmp_path, home_env):
    conf = write(tmp_path, "v.dstack.yml", "type: volume\nname: data\nbackend: aws\nregion: us-east-1\nsize: 10\n"
                 "auto_cleanup_duration: 1h\n")
    result = cli(home_env, "apply", "-f", conf, "-y")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {conf}: `auto_cleanup_duration` is not supported yet")


# --- registered volumes through the CLI, and the task's volumes ---------------------------------------------------

def register(tmp_path, env, name="ext", zone="us-west-2b", backend="aws"):
    region = zone[:-1] if backend == "aws" else zone[:-2]
    conf = write(tmp_path, f"{name}.dstack.yml", f"type: volume\nname: {name}\nbackend: {backend}\nregion: {region}\n"
                 f"availability_zone: {zone}\nvolume_id: vol-0123456789abcdef0\n")
    result = cli(env, "apply", "-f", conf, "-y")
    assert result.returncode == 0, result.stderr


def test_registered_volume_list_get_delete(tmp_path, home_env):
    register(tmp_path, home_env)
    volumes = json.loads(cli(home_env, "volume", "list", "--json").stdout)["volumes"]
    assert [(v["name"], v["status"], v["zone"], v["volume_id"], v["external"]) for v in volumes] == \
        [("ext", "active", "us-west-2b", "vol-0123456789abcdef0", True)]
    assert "vol-0123456789abcdef0" in cli(home_env, "volume", "list").stdout
    assert json.loads(cli(home_env, "volume", "get", "ext", "--json").stdout)["volume"]["name"] == "ext"
    missing = cli(home_env, "volume", "delete", "nope", "-y")
    assert (missing.returncode, missing.stderr) == (1, "error: no volume named nope (see `dstack volume list`)\n")
    deleted = cli(home_env, "volume", "delete", "ext", "-y")
    assert deleted.returncode == 0 and "Volume ext forgotten" in deleted.stderr
    assert json.loads(cli(home_env, "volume", "list", "--json").stdout)["volumes"] == []
    register(tmp_path, home_env)  # `dstack delete -f` with the volume's file, as dstack has it
    by_file = cli(home_env, "delete", "-f", str(tmp_path / "ext.dstack.yml"), "-y")
    assert by_file.returncode == 0 and "Volume ext forgotten" in by_file.stderr
    assert json.loads(cli(home_env, "volume", "list", "--json").stdout)["volumes"] == []


def test_registering_with_size_or_tags_is_refused_by_name(tmp_path, home_env):
    conf = write(tmp_path, "v.dstack.yml", "type: volume\nname: ext\nbackend: aws\nregion: us-west-2\n"
                 "availability_zone: us-west-2b\nvolume_id: vol-0123456789abcdef0\nsize: 100GB\ntags: {a: b}\n")
    for args in (("--dry-run",), ("-y",)):
        result = cli(home_env, "apply", "-f", conf, *args)
        assert result.returncode == 1 and "`size` and `tags` would do nothing to an existing volume" in result.stderr
    assert json.loads(cli(home_env, "volume", "list", "--json").stdout)["volumes"] == []


def test_registering_needs_the_zone(tmp_path, home_env):
    conf = write(tmp_path, "v.dstack.yml", "type: volume\nname: ext\nbackend: aws\nregion: us-west-2\n"
                 "volume_id: vol-1\n")
    result = cli(home_env, "apply", "-f", conf, "-y")
    assert result.returncode == 1 and "needs its `availability_zone`" in result.stderr


def task(tmp_path, volumes, extra=""):
    return write(tmp_path, "t.dstack.yml", f"type: task\nname: t1\ncommands: [ls /data]\nvolumes: {volumes}\n{extra}")


def test_task_offers_are_where_its_volume_is_and_the_stack_attaches_it(tmp_path, home_env):
    register(tmp_path, home_env)
    result = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]"), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["offer"]["backend"], plan["offer"]["region"], plan["offer"]["availability_zones"]) == \
        ("aws", "us-west-2", ["us-west-2b"])
    attachments = [r["inputs"] for r in plan["resources"] if r["type"] == ATTACHMENT]
    assert [(a["volumeId"], a["deviceName"]) for a in attachments] == [("vol-0123456789abcdef0", "/dev/sdf")]
    # the long form, and a list of names (any one of them): the one that exists where the offer is
    register(tmp_path, home_env, name="other", zone="eu-west-1a")
    listed = cli(home_env, "apply", "-f", task(tmp_path, "[{name: [ext, other], path: /data}]"), "-b", "aws",
                 "-r", "eu-west-1", "--dry-run", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["offer"]["availability_zones"] == ["eu-west-1a"]


def offer(backend, region, zones):
    from offers.catalog import InstanceType
    from offers.offer import Offer

    return Offer(backend, InstanceType("m5.large", 2, 8, "", "", 0, 0, "x86", True), region, tuple(zones), False,
                 0.1, 100, 0.01)


def test_the_host_looks_for_each_attached_disk_where_its_cloud_puts_it():
    from configuration.loader import parse_configuration as parse
    from provisioner.planning.task_volumes import job_mounts, place_offers, volume_attachments

    store = StateStore()
    for name, backend, region, zone, cloud_id in (("ext", "aws", "us-west-2", "us-west-2b", "vol-0abc"),
                                                  ("ckpt", "aws", "us-west-2", "us-west-2b", "vol-0def"),
                                                  ("far", "gcp", "europe-west1", "europe-west1-b", "my-disk")):
        store.create_volume(VolumeRecord(name=name, status="active", backend=backend, region=region, zone=zone,
                                         volume_id=cloud_id, created_at=time.time()))
    task = parse("type: task\ncommands: [x]\nvolumes: [ext:/data, {name: ckpt, path: /ckpt}, /srv:/srv]\n", "t")
    here = offer("aws", "us-west-2", ["us-west-2a", "us-west-2b"])
    assert place_offers(store, task, [here, offer("aws", "us-east-1", ["us-east-1a"])], "t") == \
        [dataclasses.replace(here, zones=("us-west-2b",))]
    assert [(a.volume_id, a.device_name) for a in volume_attachments(task, here, store)] == \
        [("vol-0abc", "/dev/sdf"), ("vol-0def", "/dev/sdg")]
    mounts = job_mounts(store, task, here)
    assert mounts.network == (
        NetworkMount("ext", ("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc", "/dev/xvdf", "/dev/sdf"),
                     "/data"),
        NetworkMount("ckpt", ("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0def", "/dev/xvdg", "/dev/sdg"),
                     "/ckpt"))
    assert mounts.instance == (InstanceMount("/srv", "/srv"),)
    gcp_task = parse("type: task\ncommands: [x]\nvolumes: [far:/data]\n", "t")
    gcp_offer = offer("gcp", "europe-west1", ["europe-west1-b"])
    assert [a.device_name for a in volume_attachments(gcp_task, gcp_offer, store)] == ["dstack-far"]
    assert job_mounts(store, gcp_task, gcp_offer).network[0].devices == ("/dev/disk/by-id/google-dstack-far",)


def test_missing_and_misplaced_volumes_are_named(tmp_path, home_env):
    missing = cli(home_env, "apply", "-f", task(tmp_path, "[gone:/data]"), "--dry-run")
    assert missing.returncode == 1
    assert "volume gone does not exist: create it with `dstack apply -f VOLUME.dstack.yml`" in missing.stderr
    register(tmp_path, home_env)
    register(tmp_path, home_env, name="far", zone="europe-west1-b", backend="gcp")
    apart = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data, far:/far]"), "--dry-run")
    assert apart.returncode == 1 and "the task's volumes are in different places (ext: aws us-west-2b; far: gcp " \
                                     "europe-west1-b)" in apart.stderr
    register(tmp_path, home_env, name="near", zone="us-west-2c")  # the same region, another zone
    zones = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data, near:/near]"), "--dry-run")
    assert zones.returncode == 1 and "(ext: aws us-west-2b; near: aws us-west-2c)" in zones.stderr
    elsewhere = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]"), "-b", "gcp", "--dry-run")
    assert elsewhere.returncode == 1 and "outside the backends and regions the run allows" in elsewhere.stderr
    multi = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]", "nodes: 2\n"), "--dry-run")
    assert multi.returncode == 1 and "`volumes` with a network volume (`NAME:/path`) needs one instance" in multi.stderr


@pytest.mark.parametrize("volumes, paths", [
    ("[ext:/a, ext:/b]", "/a, /b"),
    ("[{name: ext, path: /a}, {name: [other, ext], path: /b}]", "/a, /b"),  # any of a list may be taken
    ("[{name: [ext, ext], path: /a}]", "/a"),
])
def test_one_volume_named_twice_is_refused_by_name_before_anything_is_made(tmp_path, home_env, volumes, paths):
    """It would be attached twice (/dev/sdf and /dev/sdg); dstack refuses it too ("the same volume at different
    mount points"). Refused while the file is read: in a dry run, and in a run before it is recorded."""
    register(tmp_path, home_env)
    register(tmp_path, home_env, name="other", zone="us-west-2b")
    conf = task(tmp_path, volumes)
    for args in (("--dry-run",), ("--dry-run", "--json"), ("-y", "-d")):
        result = cli(home_env, "apply", "-f", conf, *args)
        assert (result.returncode, result.stderr) == (1, f"error: {conf}:4: volumes: volume ext is named more than "
                                                         f"once (at {paths}): a volume is attached at one mount point "
                                                         "only\n"), args
    assert json.loads(cli(home_env, "ps", "-a", "--json").stdout)["runs"] == []
    assert cli(home_env, "apply", "-f", task(tmp_path, "[ext:/a, other:/b]"), "--dry-run").returncode == 0


def test_an_idle_fleet_instance_is_not_offered_to_a_run_with_network_volumes(tmp_path, home_env, dstack_home):
    """A reused instance's stack is its fleet's: nothing would attach the run's volume to it (in the volume's zone
    or not: its offer's empty `zones` let any zone of the region pass)."""
    from provisioner.planning.reuse import offer_record
    from provisioner.store.records import InstanceRecord

    register(tmp_path, home_env)
    store = StateStore(dstack_home / "state.db")
    host = {"kind": "ssh", "hostname": "10.251.250.2"}  # never contacted: a dry run
    instances = [InstanceRecord("warm", num, "aws", offer_record(offer("aws", "us-west-2", [zone])), host,
                                idle_since=time.time()) for num, zone in enumerate(("us-west-2b", "us-west-2c"))]
    store.create_cloud_fleet("warm", "fleet.dstack.yml", "aws", {}, None, instances)
    plain = cli(home_env, "apply", "-f", write(tmp_path, "p.dstack.yml", "type: task\ncommands: [x]\n"
                                              "resources: {cpu: 2}\n"), "-b", "aws", "--dry-run", "--json")
    assert "reused" in json.loads(plain.stdout)["offer"]  # the instances are offered to a run without volumes
    result = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]", "resources: {cpu: 2}\n"), "--dry-run",
                 "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert "reused" not in plan["offer"] and plan["offer"]["availability_zones"] == ["us-west-2b"]
    assert [r for r in plan["resources"] if r["type"] == ATTACHMENT]
    reuse = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]", "creation_policy: reuse\n"), "--dry-run")
    assert reuse.returncode == 1 and "an idle fleet instance cannot attach the task's network volumes" in reuse.stderr


def test_idle_duration_with_a_network_volume_is_refused_by_name(tmp_path, home_env):
    register(tmp_path, home_env)
    for value in ("1h", "'off'"):
        kept = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]", f"idle_duration: {value}\n"), "--dry-run")
        assert kept.returncode == 1 and "`idle_duration` with a network volume (`NAME:/path`) is not supported" \
            in kept.stderr, value
    assert cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]", "idle_duration: 0\n"), "--dry-run",
               "--json").returncode == 0


def test_a_volume_in_use_is_busy_and_cannot_be_deleted(tmp_path, home_env, dstack_home):
    register(tmp_path, home_env)
    store = StateStore(dstack_home / "state.db")
    store.create_run(RunRecord(name="holder", status="running", submitted_at=time.time(),
                               configuration={"volumes": [{"name": ["ext", "x"], "path": "/data"}]}))
    deleted = cli(home_env, "volume", "delete", "ext", "-y")
    assert (deleted.returncode, deleted.stderr) == \
        (1, "error: volume ext is in use by run holder: stop it first (`dstack stop holder`)\n")
    busy = cli(home_env, "apply", "-f", task(tmp_path, "[ext:/data]"), "--dry-run")
    assert busy.returncode == 1 and "volume ext is in use by run holder" in busy.stderr
    store.update_run("holder", status="done")
    assert cli(home_env, "volume", "delete", "ext", "-y").returncode == 0


@pytest.mark.usefixtures("store_engine")  # both engines: SQLite, the team database
def test_two_runs_submitted_at_once_never_share_a_volume():
    from configuration.loader import parse_configuration as parse
    from provisioner.planning.task_volumes import claim_volumes

    store = StateStore()
    task = parse("type: task\ncommands: [x]\nvolumes: [ext:/data]\n", "t")
    for name in ("first", "second"):  # both passed the plan's check, then both were recorded
        store.create_run(RunRecord(name=name, status="submitted", submitted_at=time.time(),
                                   configuration={"volumes": [{"name": "ext", "path": "/data"}]}))
    for name, other in (("first", "second"), ("second", "first")):
        with pytest.raises(ConfigurationError, match=f"volume ext is in use by run {other}"):
            claim_volumes(store, task, name)
    store.update_run("second", status="failed")
    claim_volumes(store, task, "first")  # alone now


# --- the host's steps ---------------------------------------------------------------------------------------------

def test_docker_binds_each_volume():
    mounts = Mounts((NetworkMount("data", ("/dev/x",), "/data"),), (InstanceMount("/srv/cache", "/cache"),))
    assert docker_volume_args(mounts) == ["-v", f"{VOLUMES_ROOT}/data:/data", "-v", "/srv/cache:/cache"]
    assert "dstack_link" not in mount_steps(mounts, in_container=True).split("}\n")[-1]
    assert mount_steps(Mounts(), in_container=False) == ""
    assert aws_device_path("vol-0abc") == "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc"


def can_mount() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("mkfs.ext4", "blkid", "mount", "mountpoint"))


def unmount(mount: NetworkMount) -> None:
    """The test's mount undone and its mount point removed."""
    subprocess.run(["umount", mount.host_path], capture_output=True)
    if os.path.isdir(mount.host_path):
        os.rmdir(mount.host_path)


@pytest.mark.skipif(not can_mount(), reason="needs root, mkfs.ext4, blkid and mount")
def test_a_disk_is_formatted_on_first_use_only_and_mounted(tmp_path):
    """The generated steps against a file-backed disk (`mount` sets up the loop device): formatted when blank,
    mounted, reached through the job's path; on the next use mounted again with its data, never formatted."""
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(disk)], check=True)
    name = f"t{os.getpid()}"
    mount = NetworkMount(name, (str(tmp_path / "not-there"), str(disk)), str(tmp_path / "job" / "data"))
    script = "set -e\n" + mount_steps(Mounts((mount,)), in_container=False)
    try:
        first = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert f"volume {name}: formatting {disk}" in first.stdout
        (tmp_path / "job" / "data" / "kept.txt").write_text("written by run 1")
        subprocess.run(["umount", mount.host_path], check=True)
        assert not (tmp_path / "job" / "data" / "kept.txt").exists()
        again = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "formatting" not in again.stdout
        assert (tmp_path / "job" / "data" / "kept.txt").read_text() == "written by run 1"
    finally:
        unmount(mount)


@pytest.mark.skipif(not can_mount(), reason="needs root, mkfs.ext4 and blkid")
def test_a_disk_with_another_filesystem_is_never_formatted(tmp_path):
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(disk)], check=True)
    subprocess.run(["mkfs.ext2", "-q", str(disk)], check=True)
    name = f"u{os.getpid()}"
    mount = NetworkMount(name, (str(disk),), str(tmp_path / "data"))
    try:
        result = subprocess.run(["sh", "-c", "set -e\n" + mount_steps(Mounts((mount,)), in_container=False)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "formatting" not in result.stdout
        fs = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(disk)], capture_output=True, text=True)
        assert fs.stdout.strip() == "ext2"
    finally:
        unmount(mount)


def test_a_device_that_never_appears_is_named(tmp_path, monkeypatch):
    import provisioner.jobs.mounts as mounts

    steps = mount_steps(Mounts((NetworkMount("data", (str(tmp_path / "nvme-x"),), "/data"),)), in_container=False)
    steps = steps.replace(f"-lt {mounts.DEVICE_WAIT_S} ]", "-lt 1 ]")
    result = subprocess.run(["sh", "-c", "set -e\n" + steps], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"volume data: its disk did not appear on this host (looked for {tmp_path}/nvme-x)" in result.stderr


# --- instance volumes end to end ----------------------------------------------------------------------------------

def test_instance_volume_on_this_machine_keeps_what_the_job_wrote(tmp_path, home_env):
    host, job = tmp_path / "host-cache", tmp_path / "in-job" / "cache"
    conf = write(tmp_path, "t.dstack.yml", f"type: task\nname: keep\ncommands: ['echo run-$N > {job}/out', "
                 f"'cat {job}/out']\nenv: [N=1]\nvolumes: ['{host}:{job}']\n")
    result = cli(home_env, "apply", "-f", conf, "-y", "-b", "local")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "run-1\n" and (host / "out").read_text() == "run-1\n"
    assert os.readlink(job) == str(host)
    again = cli(home_env, "apply", "-f", conf, "-y", "-b", "local", "-n", "keep-2")  # the link is ours: reused
    assert again.returncode == 0, again.stderr

    taken = tmp_path / "taken"
    taken.mkdir()
    conf = write(tmp_path, "t2.dstack.yml", f"type: task\nname: taken\ncommands: [echo no]\n"
                 f"volumes: [{{instance_path: {host}, path: {taken}}}]\n")
    refused = cli(home_env, "apply", "-f", conf, "-y", "-b", "local")
    assert refused.returncode == 1
    assert f"dstack: volumes: {taken} exists on this host and is not a link to {host}" in \
        cli(home_env, "logs", "taken").stdout + refused.stdout + refused.stderr
    optional = write(tmp_path, "t3.dstack.yml", f"type: task\nname: opt\ncommands: [echo ran]\n"
                     f"volumes: [{{instance_path: {host}, path: {taken}, optional: true}}]\n")
    assert cli(home_env, "apply", "-f", optional, "-y", "-b", "local").stdout.endswith("ran\n")


def test_instance_volume_on_an_ssh_fleet_host(tmp_path, home_env, make_host, client_key):
    host = make_host()
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: lab\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{host.address}]\n")
    assert cli(home_env, "apply", "-f", fleet, "-y").returncode == 0
    folder, job = tmp_path / "on-host", tmp_path / "job-sees"
    conf = write(tmp_path, "t.dstack.yml", f"type: task\nname: remote\nbackends: [ssh]\n"
                 f"commands: ['hostname -I > {job}/where']\nvolumes: ['{folder}:{job}']\n")
    result = cli(home_env, "apply", "-f", conf, "-y")
    assert result.returncode == 0, result.stderr
    assert host.address in (folder / "where").read_text()  # written on the fleet host, kept in its folder


# --- `dstack gc` never takes a network volume for a run's leftover ------------------------------------------------

def test_gc_leaves_network_volumes_alone_on_aws(monkeypatch, moto_endpoint):
    import boto3

    from stacks.aws.leftovers import find_leftovers

    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", moto_endpoint)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    owner = f"o{os.getpid() % 10000000:07d}"

    def disk(tags):
        tags = [{"Key": k, "Value": v} for k, v in {"dstack:project": "dstack", "dstack:owner": owner, **tags}.items()]
        return ec2.create_volume(AvailabilityZone="eu-west-3a", Size=8, TagSpecifications=[
            {"ResourceType": "volume", "Tags": tags}])["VolumeId"]

    left = disk({"dstack:run": "ghost"})
    disk({"dstack:volume": "data"})
    assert [l.id for l in find_leftovers(ec2, "eu-west-3", owner) if l.kind == "volume"] == [left]


def test_gc_leaves_network_volumes_alone_on_gcp(recorded_api):
    from google.auth.credentials import AnonymousCredentials

    from stacks.gcp.leftovers import GcpApi, find_leftovers

    compute = "/compute/v1/projects/my-project"

    def disk(name, labels):
        return {"name": name, "labels": {"dstack-project": "dstack", "dstack-owner": "0a1b2c3d", **labels}}

    recorded_api.on("GET", f"{compute}/aggregated/instances", {"items": {}})
    recorded_api.on("GET", f"{compute}/aggregated/disks", {"items": {"zones/us-central1-a": {"disks": [
        disk("dstack-0a1b2c3d-ghost", {"dstack-run": "ghost"}),
        disk("dstack-0a1b2c3d-vol-data", {"dstack-volume": "data"})]}}})
    recorded_api.on("GET", f"{compute}/global/firewalls", {"items": []})
    recorded_api.on("GET", f"{compute}/aggregated/resourcePolicies", {"items": {}})
    recorded_api.on("GET", "/v1/projects/my-project/serviceAccounts", {"accounts": []})
    recorded_api.on("GET", "/tpu/v2/projects/my-project/locations/-/nodes", {"nodes": []})
    api = GcpApi("my-project", AnonymousCredentials(), compute_endpoint=recorded_api.url,
                 iam_url=recorded_api.url + "/v1", tpu_url=recorded_api.url + "/tpu/v2")
    assert [l.id for l in find_leftovers(api, "0a1b2c3d") if l.kind == "disk"] == ["dstack-0a1b2c3d-ghost"]


# --- `image:` jobs: the volumes bound into the container ----------------------------------------------------------

@pytest.mark.skipif(not can_mount(), reason="needs root, mkfs.ext4, blkid and mount")
def test_image_job_sees_both_kinds_of_volume(docker_daemon, monkeypatch, tmp_path):  # noqa: F811
    from provisioner.host.transport import LocalTransport
    from provisioner.jobs.control import start_job
    from provisioner.jobs.script import JobSpec
    from tests.docker_daemon import IMAGE
    from tests.helpers import wait_exit

    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(disk)], check=True)
    network = NetworkMount(f"d{os.getpid()}", (str(disk),), "/data")
    mounts = Mounts((network,), (InstanceMount(str(tmp_path / "cache"), "/cache"),))
    local = LocalTransport(str(tmp_path / "jobs"))
    try:
        start_job(local, JobSpec(run_name="img-vol", image=IMAGE, mounts=mounts,
                                 commands=["echo cached > /cache/out", "echo kept > /data/out", "cat /data/out"]))
        code, log = wait_exit(local, "img-vol")
        assert (code, log.splitlines()[-1]) == (0, "kept"), log
        assert (tmp_path / "cache" / "out").read_text() == "cached\n"
        assert (Path(network.host_path) / "out").read_text() == "kept\n"
        assert not (tmp_path / "jobs" / "img-vol" / "data").exists()  # no link for a container
    finally:
        unmount(network)
