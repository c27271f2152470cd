"""A kept instance's idle clock and its VM's state (issue 19, item 12): the instance of a detached run is idle from
when its job ended on the host (which is when the VM's idle watchdog started counting), not from when a client
learned of it; and before an idle instance is claimed, the cloud is asked whether its VM still runs (one that ended
itself is retired, and the run moves on).

The host is a namespace host standing in for a cloud VM (tests/test_fleets.py's `cloud`); the clouds' answers are
recorded Compute API responses (tests/data/gcp) and a local moto server (EC2)."""

import json
import os
import time

import pytest

from offers.catalog import InstanceType
from offers.offer import Offer
from stacks.errors import StackFailure
from tests.helpers import DATA
from tests.test_fleets import OFFER, cloud  # noqa: F401  (the fixture)

HOUR = 3600
G2 = InstanceType("g2-standard-8", 8, 32.0, "nvidia", "L4", 1, 24.0, "x86", True)
GCP_OFFER = Offer("gcp", G2, "us-central1", ("us-central1-a",), False, 0.85, 100.0, 0.014)


def requirements():
    from configuration.resources import ResourcesSpec
    from offers.requirements import Requirements

    return Requirements(resources=ResourcesSpec.model_validate({"cpu": "1.."}), spot=False)


def test_a_detached_runs_instance_is_idle_from_its_jobs_end_on_the_host(cloud, tmp_path):  # noqa: F811
    from configuration.backends import load_config
    from configuration.interpolation import resolve_run
    from configuration.loader import parse_configuration
    from provisioner.backends.cloud_fleets import expire_idle_fleets
    from provisioner.planning.reuse import idle_offers, plan_offers
    from provisioner.runs.lifecycle import submit
    from provisioner.runs.reconcile import reconcile
    from provisioner.runs.session import Reporter, RunSession
    from provisioner.store.store import StateStore

    store = StateStore()
    configuration = parse_configuration("type: task\nname: r1\nidle_duration: 1h\ncommands: [echo done]\n", "t")
    resolved = resolve_run(configuration, "t", [], os.environ)
    planned = plan_offers(configuration, [OFFER], store, requirements(), "t")
    session = RunSession(store=store, config=load_config(), reporter=Reporter(output=lambda data: None))
    assert submit(session, "r1", resolved, planned, None, detach=True).status == "running"
    exit_code = cloud["host"].jobs_dir / "r1" / "exit_code"
    deadline = time.monotonic() + 30
    while not exit_code.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = time.time() - 2 * HOUR  # the job ended two hours ago, by the host's clock; nobody looked since
    os.utime(exit_code, (ended, ended))

    reconcile(session)  # the next `dstack ps`
    assert store.get_run("r1").status == "done"
    [job] = store.list_jobs("r1")
    assert job.finished_at == pytest.approx(ended, abs=5)
    [kept] = store.list_instances()
    assert (kept.status, kept.idle_duration) == ("idle", HOUR)
    assert kept.idle_since == pytest.approx(ended, abs=5)  # not now: its VM's watchdog fired an hour ago
    assert idle_offers(store, requirements()) == []  # never offered to the next run
    assert expire_idle_fleets(store, load_config(), lambda p: None, lambda m: None) == ["r1"]
    assert cloud["destroyed"] == ["r1"]


def test_the_host_says_how_long_ago_the_job_ended(tmp_path):
    from provisioner.host.transport import LocalTransport
    from provisioner.jobs.control import job_ended_ago

    transport = LocalTransport(str(tmp_path))
    assert job_ended_ago(transport, "r1") is None  # no job folder
    (tmp_path / "r1").mkdir()
    assert job_ended_ago(transport, "r1") is None  # still running: no exit code yet
    (tmp_path / "r1" / "exit_code").write_text("0\n")
    os.utime(tmp_path / "r1" / "exit_code", (time.time() - 600, time.time() - 600))
    assert job_ended_ago(transport, "r1") == pytest.approx(600, abs=5)


# --- the VM's state before a claim ---

def kept_gcp_instance(store, owner):
    from provisioner.planning.reuse import offer_record
    from provisioner.store.records import InstanceRecord

    host = {"kind": "ssh", "hostname": "203.0.113.9", "user": "ubuntu"}  # never contacted
    store.create_cloud_fleet("warm", "run warm", "gcp", {}, {
        "backend": "gcp", "name": f"warm-{owner}", "owner": owner, "region": "us-central1", "tagged": "warm"},
        [InstanceRecord("warm", 0, "gcp", offer_record(GCP_OFFER), host, idle_since=time.time(),
                        idle_duration=HOUR)])


@pytest.fixture
def gcp_backend(recorded_api, monkeypatch):
    import stacks.gcp.api
    from google.auth.credentials import AnonymousCredentials

    from configuration.backends import DstackConfig, GCPBackend
    from provisioner.backends.cloud import CloudBackend
    from provisioner.backends.reusing import ReusingBackend
    from provisioner.store.store import StateStore

    monkeypatch.setattr(stacks.gcp.api, "gcp_api", lambda project: stacks.gcp.api.GcpApi(
        project, AnonymousCredentials(), compute_endpoint=recorded_api.url))
    store = StateStore()
    config = DstackConfig(backends=[GCPBackend(type="gcp", project_id="my-project")])
    return ReusingBackend(CloudBackend("gcp", config, store), store), store


@pytest.mark.parametrize("answer", ["instance_terminated.json", "error_404_instance.json"])
def test_an_idle_instance_whose_vm_ended_itself_is_retired_not_claimed(recorded_api, gcp_backend, answer):
    from configuration.loader import parse_configuration
    from configuration.owner import owner_id
    from provisioner.planning.reuse import idle_offers

    backend, store = gcp_backend
    kept_gcp_instance(store, owner_id())
    path = f"/compute/v1/projects/my-project/zones/us-central1-a/instances/dstack-{owner_id()}-warm"
    recorded_api.on("GET", path, json.loads((DATA / "gcp" / answer).read_text()),
                    status=404 if "404" in answer else 200)
    [offer] = idle_offers(store, requirements())
    task = parse_configuration("type: task\ncommands: [x]\n", "t")
    with pytest.raises(StackFailure) as failure:
        backend.provision("next", offer, task, lambda progress: None)
    assert failure.value.retryable and "ended itself" in failure.value.message  # the next offer is tried
    assert [r.path for r in recorded_api.requests] == [path]
    [retired] = store.list_instances()
    assert (retired.status, retired.run) == ("terminating", None)  # never claimed, never offered again
    assert idle_offers(store, requirements()) == []


def test_an_idle_instance_whose_vm_runs_is_claimed(recorded_api, gcp_backend):
    from configuration.loader import parse_configuration
    from configuration.owner import owner_id
    from provisioner.planning.reuse import idle_offers

    backend, store = gcp_backend
    kept_gcp_instance(store, owner_id())
    recorded_api.on("GET", f"/compute/v1/projects/my-project/zones/us-central1-a/instances/dstack-{owner_id()}-warm",
                    json.loads((DATA / "gcp" / "instance_running.json").read_text()))
    [offer] = idle_offers(store, requirements())
    [host] = backend.provision("next", offer, parse_configuration("type: task\ncommands: [x]\n", "t"),
                               lambda progress: None)
    assert host.hostname == "203.0.113.9"
    assert [(i.status, i.run) for i in store.list_instances()] == [("busy", "next")]


def test_an_ec2_instances_state_is_read_by_its_tags(aws_on_moto):
    import boto3

    from stacks.clouds import instance_state

    ec2 = boto3.client("ec2", region_name="us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": "Name", "Value": "dstack-0a1b2c3d-warm"}, {"Key": "dstack:owner", "Value": "0a1b2c3d"},
            {"Key": "dstack:project", "Value": "dstack"}, {"Key": "dstack:run", "Value": "warm"}]
    [instance] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.large",
                                   TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"]
    assert instance_state("aws", "us-east-1", "", None, "0a1b2c3d", "dstack-0a1b2c3d-warm") == "running"
    assert instance_state("aws", "us-east-1", "", None, "99887766", "dstack-0a1b2c3d-warm") == "gone"  # not ours
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])  # what its power-off does on AWS
    assert instance_state("aws", "us-east-1", "", None, "0a1b2c3d", "dstack-0a1b2c3d-warm") == "gone"
