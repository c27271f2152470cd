"""Cloud fleets and reuse: the fleet configuration's two kinds, its plan, its stack, the instances runs reuse, idle
expiry and the idle watchdog on the VM.

The cloud is stood in for at the backend boundary: CloudBackend.create_stack returns a namespace host (sshd in a
network namespace, as a VM would serve) and records the stack it was given; destroy_stack records what it would
destroy. Everything above that boundary (the plan, the claim, the teardown, the store) is the real code."""

import json
import os
import subprocess
import time

import pytest

from configuration.errors import ConfigurationError, DstackError
from offers.catalog import InstanceType
from offers.offer import Offer
from tests.helpers import run_cli, write

T3 = InstanceType("t3.large", 2, 8.0, "", "", 0, 0.0, "x86", True)
OFFER = Offer("aws", T3, "us-east-1", ("us-east-1a",), False, 0.0832, 100.0, 0.011)


def parse_fleet(data):
    from configuration.fleets import FleetConfiguration

    return FleetConfiguration.model_validate({"type": "fleet", "name": "gpus", **data})


# --- the configuration ---

@pytest.mark.parametrize("nodes, expected", [(2, (2, 2, 2)), ("1..3", (1, 1, 3)), ("2..", (2, 2, None)),
                                             ({"min": 1, "target": 2, "max": 4}, (1, 2, 4))])
def test_nodes_is_a_number_or_a_range(nodes, expected):
    conf = parse_fleet({"nodes": nodes})
    assert (conf.nodes.min, conf.nodes.target, conf.nodes.max) == expected and conf.is_cloud


@pytest.mark.parametrize("data, message", [
    ({}, "a fleet needs `ssh_config` (hosts you own) or `nodes` (cloud instances)"),
    ({"nodes": 2, "resources": {"cpu": 2}, "ssh_config": {"hosts": ["10.0.0.1"]}},
     "`ssh_config` (hosts you own) and `nodes`, `resources` (cloud instances) are two kinds of fleet"),
    ({"nodes": "0..0"}, "`nodes` needs a maximum of at least 1"),
    ({"nodes": {"min": 3, "max": 2}}, "`nodes` needs min <= target <= max"),
])
def test_a_fleet_is_one_kind_or_the_other(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_fleet(data)


# --- the plan ---

def test_dry_run_of_a_cloud_fleet_plans_its_stack(tmp_path):
    pytest.importorskip("pulumi_aws")
    conf = write(tmp_path, "fleet.dstack.yml", "type: fleet\nname: trainers\nnodes: 2\nplacement: cluster\n"
                 "backends: [aws]\nregions: [us-east-1]\nresources: {cpu: 2.., memory: 8GB..}\nidle_duration: 1h\n")
    result = run_cli("apply", "-f", conf, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["fleet"], plan["nodes"], plan["placement"], plan["idle_duration"]) == ("trainers", 2, "cluster", 3600)
    assert plan["offer"]["backend"] == "aws" and plan["offer"]["region"] == "us-east-1"
    assert plan["price"] == pytest.approx(2 * (plan["offer"]["price"]), rel=0.2)
    types = {r["type"] for r in plan["resources"]}
    assert "aws:ec2/instance:Instance" in types  # the program ran under Pulumi's mocks
    text = run_cli("apply", "-f", conf, "--dry-run")
    assert text.returncode == 0 and "Fleet trainers: 2 x aws us-east-1" in text.stderr


@pytest.mark.parametrize("field, value", [("blocks", "4"), ("blocks", "auto"), ("env", "{A: b}"), ("retry", "true"),
                                          ("backend_options", "[{}]")])
def test_dstacks_fleet_fields_that_nothing_acts_upon_are_refused_by_name(tmp_path, field, value):
    conf = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: r1\nnodes: 1\n{field}: {value}\n")
    result = run_cli("apply", "-f", conf, "--dry-run")
    assert result.returncode == 1 and f"`{field}` is not supported: " in result.stderr, result.stderr
    assert parse_fleet({"nodes": 1, "blocks": 1, "env": {}}).blocks == 1  # dstack's defaults stay accepted


def test_run_flags_on_a_fleet_or_a_volume_are_refused_by_name(tmp_path):
    """-b, -r, --gpu, --max-price ... place a run: on a fleet (its fields do that) or a volume they would do
    nothing."""
    fleet = write(tmp_path, "fleet.dstack.yml", "type: fleet\nname: f1\nnodes: 1\nbackends: [aws]\n")
    result = run_cli("apply", "-f", fleet, "--dry-run", "-b", "gcp", "--max-price", "0.5", "-n", "other")
    assert result.returncode == 1, result.stdout
    assert "-b/--backend, --max-price, -n/--name apply to runs, not to a fleet" in result.stderr
    volume = write(tmp_path, "vol.dstack.yml", "type: volume\nname: v1\nbackend: aws\nregion: us-east-1\n"
                   "availability_zone: us-east-1a\nvolume_id: vol-0123\n")
    result = run_cli("apply", "-f", volume, "--dry-run", "--gpu", "A100")
    assert result.returncode == 1 and "--gpu applies to runs, not to a volume" in result.stderr
    ssh = write(tmp_path, "ssh.dstack.yml", "type: fleet\nname: s1\nssh_config: {hosts: [10.251.250.9]}\n")
    assert run_cli("apply", "-f", ssh, "--dry-run", "--json").returncode == 0  # the fleet's own flags still go
    named = run_cli("apply", "-f", volume, "--dry-run", "-n", "Bad/Name")  # a volume's -n is checked as a run's
    assert named.returncode == 2 and "2 to 41 lowercase letters" in named.stderr


def test_reservation_is_refused_by_name(tmp_path):
    conf = write(tmp_path, "fleet.dstack.yml", "type: fleet\nname: r1\nnodes: 1\nreservation: cr-0123\n")
    result = run_cli("apply", "-f", conf, "--dry-run")
    assert result.returncode == 1 and "`reservation` is not supported yet" in result.stderr


def test_creation_policy_reuse_with_nothing_idle_is_a_clear_error(tmp_path):
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\ncreation_policy: reuse\n")
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "aws")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {conf}: no idle instance of any fleet fits") and \
        "`creation_policy: reuse` creates none" in result.stderr


def test_fleets_naming_a_fleet_that_does_not_exist_is_a_clear_error(tmp_path):
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\nfleets: [nope]\n")
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "local")
    assert result.returncode == 1 and f"{conf}: `fleets`: no fleet named nope" in result.stderr


# --- the stand-in cloud ---

@pytest.fixture
def cloud(monkeypatch, make_host, client_key):
    """CloudBackend's stack boundary over one namespace host: `made` and `destroyed` list the stacks' names."""
    from provisioner.backends.cloud import CloudBackend
    from provisioner.host.access import HostAccess
    from provisioner.host.keys import generate_key

    host = make_host()
    access = HostAccess(kind="ssh", hostname=host.address, port=22, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    calls = {"made": [], "destroyed": [], "shapes": [], "keys": []}

    def create_stack(self, name, offer, configuration, report, key_path, record_stack, note=None, **_):
        generate_key(key_path, f"dstack-run-{name}")
        calls["keys"].append(key_path)
        record_stack({"backend": self.name, "name": f"{name}-stack", "owner": "test", "region": offer.region})
        calls["made"].append(name)
        calls["shapes"].append(configuration)
        return [access] * getattr(configuration, "nodes", 1)

    def destroy_stack(self, name, stack, report):
        calls["destroyed"].append(name)

    monkeypatch.setattr(CloudBackend, "create_stack", create_stack)
    monkeypatch.setattr(CloudBackend, "destroy_stack", destroy_stack)
    monkeypatch.setattr(CloudBackend, "instance_state", lambda self, stack, zone, rank, nodes: "running")
    # The job wrapper on a cloud VM schedules its power-off; the namespace host is this machine, so never here.
    monkeypatch.setattr("provisioner.runs.job_specs.power_off_minutes", lambda configuration, offer: None)
    calls["access"], calls["host"] = access, host
    return calls


def submit_task(store, name, text, offers, tmp_path, before_submit=lambda: None):
    from configuration.backends import load_config
    from configuration.interpolation import resolve_run
    from configuration.loader import parse_configuration
    from offers.requirements import Requirements
    from provisioner.planning.reuse import plan_offers
    from provisioner.runs.lifecycle import submit
    from provisioner.runs.session import Reporter, RunSession

    output = []
    configuration = parse_configuration(f"type: task\nname: {name}\n{text}", "t.dstack.yml")
    resolved = resolve_run(configuration, "t.dstack.yml", [], os.environ)
    requirements = Requirements(resources=configuration.resources, spot=False)
    planned = plan_offers(configuration, offers, store, requirements, "t.dstack.yml")
    session = RunSession(store=store, config=load_config(), reporter=Reporter(output=output.append))
    before_submit()
    record = submit(session, name, resolved, planned, None, detach=False)
    return record, planned, b"".join(output).decode()


def test_a_run_with_idle_duration_leaves_its_instance_for_the_next_run_until_it_expires(cloud, tmp_path):
    from configuration.backends import load_config
    from configuration.home import dstack_home
    from provisioner.backends.cloud_fleets import expire_idle_fleets
    from provisioner.planning.reuse import InstanceOffer
    from provisioner.store.store import StateStore

    store = StateStore()
    first, planned, output = submit_task(store, "first", "idle_duration: 1h\nmax_duration: 10m\n"
                                         "commands: [echo one]\n", [OFFER], tmp_path)
    assert (first.status, output, planned) == ("done", "one\n", [OFFER])
    assert cloud["shapes"][0].max_duration is None  # no VM deadline: the instance outlives the run
    assert cloud["made"] == ["first"] and cloud["destroyed"] == []  # kept: not destroyed with the run
    [kept] = store.list_instances()
    assert (kept.fleet, kept.status, kept.run, kept.idle_duration) == ("first", "idle", None, 3600)
    key = dstack_home() / "fleets" / "first" / "id_ed25519"
    assert cloud["keys"] == [key] and key.stat().st_mode & 0o777 == 0o600
    assert store.get_cloud_fleet("first")["stack"]["name"] == "first-stack" and first.stack is None

    second, planned, output = submit_task(store, "second", "commands: [echo two]\n", [OFFER], tmp_path)
    assert isinstance(planned[0], InstanceOffer) and planned[1:] == [OFFER]  # the idle instance first
    assert planned[0].to_json()["reused"] == {"fleet": "first", "instance_num": 0, "zone": "us-east-1a"}
    assert (second.status, output, second.host["hostname"]) == ("done", "two\n", cloud["access"].hostname)
    assert cloud["made"] == ["first"] and cloud["destroyed"] == []  # no provisioning, nothing destroyed
    [kept] = store.list_instances()
    assert (kept.status, kept.run) == ("idle", None)

    config, log = load_config(), []
    assert expire_idle_fleets(store, config, lambda p: None, log.append) == []  # not idle long enough yet
    assert expire_idle_fleets(store, config, lambda p: None, log.append, now=time.time() + 3601) == ["first"]
    assert cloud["destroyed"] == ["first"] and store.list_instances() == [] and store.list_cloud_fleets() == []
    assert not key.exists() and "Fleet first has been idle past its idle_duration" in log[0]


def test_a_multi_node_run_kept_by_idle_duration_leaves_no_cluster_key_on_its_kept_instances(
        cloud, tmp_path, make_host, client_key, monkeypatch):
    """Its VMs outlive the run (the implicit fleet), so the run's authorized_keys line and private key must go
    from each of them as they do from an SSH fleet's hosts: the next run on one of them must not reach the other."""
    from provisioner.backends.cloud import CloudBackend
    from provisioner.host.access import HostAccess
    from provisioner.store.store import StateStore

    hosts = [make_host(), make_host()]
    accesses = [HostAccess(kind="ssh", hostname=h.address, port=22, user="root", identity_file=client_key[0],
                           host_key=h.host_public_key) for h in hosts]

    def create_stack(self, name, offer, configuration, report, key_path, record_stack, note=None, **_):
        record_stack({"backend": self.name, "name": f"{name}-stack", "owner": "test", "region": offer.region})
        cloud["made"].append(name)
        return accesses

    monkeypatch.setattr(CloudBackend, "create_stack", create_stack)
    before = [(h.dir / "authorized_keys").read_text() for h in hosts]
    store = StateStore()
    record, _, _ = submit_task(store, "pair", "nodes: 2\nidle_duration: 1h\ncommands: [echo x]\n", [OFFER],
                               tmp_path)
    assert record.status == "done" and cloud["made"] == ["pair"] and cloud["destroyed"] == []
    assert [i.status for i in store.list_instances("pair")] == ["idle", "idle"]  # kept
    assert [(h.dir / "authorized_keys").read_text() for h in hosts] == before
    assert not any((h.jobs_dir / "pair" / "cluster_key").exists() for h in hosts)


def test_a_run_without_idle_duration_destroys_its_stack_and_creation_policy_reuse_takes_only_instances(
        cloud, tmp_path):
    from provisioner.store.store import StateStore

    store = StateStore()
    record, _, _ = submit_task(store, "plain", "commands: [echo x]\n", [OFFER], tmp_path)
    assert record.status == "done" and cloud["made"] == ["plain"] and cloud["destroyed"] == ["plain"]
    assert store.list_instances() == [] and store.list_cloud_fleets() == []
    with pytest.raises(ConfigurationError, match="no idle instance of any fleet fits"):
        submit_task(store, "reuse-only", "creation_policy: reuse\ncommands: [echo x]\n", [OFFER], tmp_path)


def test_a_cloud_fleet_is_one_stack_of_n_idle_instances_that_fleets_pins_runs_to(cloud, tmp_path, monkeypatch):
    from configuration.backends import load_config
    from provisioner.backends.cloud_fleets import create_cloud_fleet, destroy_cloud_fleet
    from provisioner.store.store import StateStore

    prepared = []
    monkeypatch.setattr("provisioner.backends.cloud_fleets.prepare_instance", lambda host, idle: prepared.append(idle))
    store = StateStore()
    conf = parse_fleet({"nodes": 2, "placement": "cluster", "idle_duration": "30m", "tags": {"team": "ml"}})
    instances = create_cloud_fleet(conf, "fleet.dstack.yml", [OFFER], load_config(), store, lambda p: None,
                                   lambda m: None)
    [shape] = cloud["shapes"]
    assert (shape.nodes, shape.placement, shape.tags, shape.max_duration) == (2, "cluster", {"team": "ml"}, None)
    assert [(i.num, i.status, i.idle_duration) for i in instances] == [(0, "idle", 1800), (1, "idle", 1800)]
    assert prepared == [1800, 1800]  # each instance's watchdogs set
    assert store.get_cloud_fleet("gpus")["stack"]["name"] == "gpus-stack"
    with pytest.raises(ConfigurationError, match="a fleet named gpus exists already"):
        create_cloud_fleet(conf, "fleet.dstack.yml", [OFFER], load_config(), store, lambda p: None, lambda m: None)

    record, planned, _ = submit_task(store, "pinned", "fleets: [gpus]\ncommands: [echo pinned]\n", [OFFER], tmp_path)
    assert record.status == "done" and [o.fleet for o in planned] == ["gpus", "gpus"]  # no offer to create
    assert cloud["made"] == ["gpus"]

    store.claim_instance("gpus", 1, "holder")  # a run holds an instance: the fleet is not deleted under it
    with pytest.raises(ConfigurationError, match="fleet gpus is in use by holder"):
        destroy_cloud_fleet(store, load_config(), "gpus", lambda p: None)
    assert cloud["destroyed"] == []
    store.release_instance("holder")
    destroy_cloud_fleet(store, load_config(), "gpus", lambda p: None)
    assert cloud["destroyed"] == ["gpus"] and store.list_cloud_fleets() == []


def test_a_run_and_a_cloud_fleet_never_share_a_name_their_stacks_would_share(cloud, tmp_path, monkeypatch):
    """A stack, its resources' names and their `dstack:run` tag come from the run's or the fleet's name: a run named
    as a fleet would `up` over the fleet's stack (replacing its instances) and its teardown would destroy it."""
    from configuration.backends import load_config
    from provisioner.backends.cloud_fleets import create_cloud_fleet
    from provisioner.backends.reusing import ReusingBackend
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    monkeypatch.setattr("provisioner.backends.cloud_fleets.prepare_instance", lambda host, idle: None)
    store = StateStore()
    create_cloud_fleet(parse_fleet({"nodes": 1}), "fleet.dstack.yml", [OFFER], load_config(), store,
                       lambda p: None, lambda m: None)
    with pytest.raises(ConfigurationError, match="a cloud fleet named gpus exists"):
        submit_task(store, "gpus", "creation_policy: reuse-or-create\nresources: {cpu: 64}\ncommands: [echo x]\n",
                    [OFFER], tmp_path)
    assert cloud["made"] == ["gpus"] and cloud["destroyed"] == [] and store.get_run("gpus") is None

    store.create_run(RunRecord(name="train", status="running", submitted_at=time.time()))
    with pytest.raises(ConfigurationError, match="run train is active"):
        create_cloud_fleet(parse_fleet({"nodes": 1}).model_copy(update={"name": "train"}), "f.yml", [OFFER],
                           load_config(), store, lambda p: None, lambda m: None)
    store.create_run(RunRecord(name="gpus-2", status="running", submitted_at=time.time()))
    assert ReusingBackend(None, store)._free_fleet_name("gpus") == "gpus-3"  # an implicit fleet avoids both


def test_a_fleet_whose_stack_brings_up_fewer_instances_is_destroyed_and_forgotten(cloud, monkeypatch):
    from configuration.backends import load_config
    from provisioner.backends.cloud import CloudBackend
    from provisioner.backends.cloud_fleets import create_cloud_fleet
    from provisioner.store.store import StateStore

    made = CloudBackend.create_stack
    monkeypatch.setattr(CloudBackend, "create_stack", lambda self, *args, **kwargs: made(self, *args, **kwargs)[:1])
    monkeypatch.setattr("provisioner.backends.cloud_fleets.prepare_instance", lambda host, idle: None)
    store = StateStore()
    with pytest.raises(DstackError, match="its stack brought up 1 of the 3 instances"):
        create_cloud_fleet(parse_fleet({"nodes": 3}), "f.yml", [OFFER], load_config(), store, lambda p: None,
                           lambda m: None)
    assert cloud["destroyed"] == ["gpus"] and store.list_cloud_fleets() == [] and store.list_instances() == []


def test_an_instance_taken_after_the_plan_moves_the_run_to_the_next_offer(cloud, tmp_path):
    from provisioner.planning.reuse import InstanceOffer, offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.create_cloud_fleet("warm", "x", "aws", {}, None, [
        InstanceRecord("warm", 0, "aws", offer_record(OFFER), cloud["access"].to_json(), idle_since=time.time())])
    record, planned, output = submit_task(store, "late", "commands: [echo late]\n", [OFFER], tmp_path,
                                          before_submit=lambda: store.claim_instance("warm", 0, "other"))
    assert isinstance(planned[0], InstanceOffer) and record.status == "done" and output == "late\n"
    assert cloud["made"] == ["late"]  # the next offer, in the instance's own zone: the lost claim ruled out none
    assert [a["error"] for a in record.attempts] == ["instance 0 of fleet warm was taken by another run"]


def test_availability_zones_leave_an_instance_offer_without_zones_so_a_lost_claim_rules_out_none(cloud, tmp_path):
    from configuration.loader import parse_configuration
    from provisioner.planning.field_support import check_fields, restrict_zones
    from provisioner.planning.reuse import offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.create_cloud_fleet("warm", "x", "aws", {}, None, [
        InstanceRecord("warm", 0, "aws", offer_record(OFFER), cloud["access"].to_json(), idle_since=time.time())])
    record, planned, output = submit_task(store, "late", "availability_zones: [us-east-1a, us-east-1b]\n"
                                          "commands: [echo late]\n", [OFFER], tmp_path,
                                          before_submit=lambda: store.claim_instance("warm", 0, "other"))
    assert planned[0].zone == "us-east-1a" and planned[0].zones == ()
    task = parse_configuration("type: task\ncommands: [x]\navailability_zones: [us-east-1a, us-east-1b]\n", "t")
    assert check_fields(task, planned, "late")[0].zones == ()  # restricted: still no zones of its own
    assert restrict_zones(planned[:1], ["us-east-1b"]) == []  # an instance elsewhere is dropped
    assert (record.status, output, cloud["made"]) == ("done", "late\n", ["late"])
    assert [a["error"] for a in record.attempts] == ["instance 0 of fleet warm was taken by another run"]


def test_a_kept_runs_failed_stack_is_swept_by_its_implicit_fleets_name(monkeypatch):
    """An SSH fleet named as the run makes its implicit fleet `NAME-2`: the stack, its resources and their tags are
    `NAME-2`'s; the run's teardown (the stack is the run's until `up` succeeds) must sweep those, not `NAME`'s."""
    from configuration.backends import load_config
    from configuration.loader import parse_configuration
    from provisioner.backends.cloud import CloudBackend
    from provisioner.backends.reusing import ReusingBackend
    from provisioner.runs.session import Reporter, RunSession
    from provisioner.runs.teardown import finish_run
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore
    from stacks.errors import StackFailure

    swept = []
    monkeypatch.setattr("stacks.extras.require_extra", lambda *args: None)
    monkeypatch.setattr("stacks.automation.require_pulumi", lambda: None)
    monkeypatch.setattr("stacks.automation.open_stack", lambda *args: None)
    monkeypatch.setattr("stacks.automation.stack_destroy", lambda *args, **kwargs: None)
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    monkeypatch.setattr("stacks.aws.leftovers.sweep_run", lambda region, owner, name: swept.append(name))

    def up_fails(stack, on_event, **_):
        raise StackFailure("error", "offer", "the up was cut short")

    monkeypatch.setattr("stacks.automation.stack_up", up_fails)
    store = StateStore()
    store.save_fleet("train", "ssh.yml", [])
    store.create_run(RunRecord(name="train", status="provisioning", submitted_at=time.time(), backend="aws"))
    configuration = parse_configuration("type: task\nidle_duration: 1h\ncommands: [x]\n", "t")
    backend = ReusingBackend(CloudBackend("aws", load_config(), store), store)
    with pytest.raises(StackFailure):
        backend.provision("train", OFFER, configuration, lambda p: None)
    assert store.get_run("train").stack["name"].startswith("train-2-")
    session = RunSession(store=store, config=load_config(), reporter=Reporter(output=lambda b: None))
    monkeypatch.setattr("provisioner.runs.session.backend_for", lambda *args: backend)
    finish_run(session, "train", "failed")
    assert swept == ["train-2"]


def test_a_kept_run_whose_fleet_name_is_taken_meanwhile_destroys_its_stack(cloud, tmp_path, monkeypatch):
    from provisioner.store.store import StateStore

    store = StateStore()
    monkeypatch.setattr(StateStore, "create_cloud_fleet", lambda self, *args, **kwargs: False)  # lost the name
    with pytest.raises(DstackError, match="a fleet named late was created"):
        submit_task(store, "late", "idle_duration: 1h\ncommands: [echo x]\n", [OFFER], tmp_path)
    assert store.get_run("late").status == "failed"
    assert cloud["made"] == ["late"] and cloud["destroyed"] == ["late"]  # not left with no record of it


@pytest.mark.usefixtures("store_engine")  # both engines: SQLite, the team database
def test_two_runs_never_claim_one_instance():
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.create_cloud_fleet("f1", "x", "aws", {}, None, [InstanceRecord("f1", 0, "aws", {}, {}, idle_since=1.0)])
    assert store.claim_instance("f1", 0, "a") and not store.claim_instance("f1", 0, "b")
    assert store.list_instances()[0].run == "a"


def test_the_next_command_expires_an_idle_fleet_and_fleet_list_shows_both_kinds(dstack_home):
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    offer = {"backend": "aws", "instance": T3._asdict(), "region": "us-east-1", "zones": [], "spot": False,
             "price": 0.08, "disk_gb": 100, "disk_price": 0.01}
    host = {"kind": "ssh", "hostname": "10.251.250.2"}  # never contacted
    store.create_cloud_fleet("stale", "run stale", "aws", {}, None,
                             [InstanceRecord("stale", 0, "aws", offer, host, idle_since=time.time() - 120,
                                             idle_duration=60)])
    store.create_cloud_fleet("kept", "fleet.dstack.yml", "aws", {}, None,
                             [InstanceRecord("kept", 0, "aws", offer, host, status="busy", run="r1")])
    store.save_fleet("lab", "lab.dstack.yml", [])
    env = {"DSTACK_HOME": str(dstack_home)}
    result = run_cli("fleet", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    fleets = {f["name"]: f for f in json.loads(result.stdout)["fleets"]}
    assert set(fleets) == {"kept", "lab"}  # `stale` had no stack left to destroy: it is gone
    assert fleets["lab"]["kind"] == "ssh" and fleets["lab"]["hosts"] == []
    assert fleets["kept"]["kind"] == "cloud" and fleets["kept"]["instances"][0]["status"] == "busy"
    assert "busy (r1)" in run_cli("fleet", "list", env=env).stdout
    deleted = run_cli("fleet", "delete", "kept", "-y", env=env)
    assert deleted.returncode == 1 and "fleet kept is in use by r1" in deleted.stderr

    store.create_cloud_fleet("stale2", "run stale2", "aws", {}, None,
                             [InstanceRecord("stale2", 0, "aws", offer, host, idle_since=time.time() - 120,
                                             idle_duration=60)])
    assert run_cli("ps", "--json", env=env).returncode == 0  # `dstack ps` expires idle fleets too
    assert [f["name"] for f in store.list_cloud_fleets()] == ["kept"]
    store.release_instance("r1")
    deleted = run_cli("fleet", "delete", "kept", "-y", env=env)
    assert deleted.returncode == 0 and "Fleet kept destroyed" in deleted.stderr and store.list_cloud_fleets() == []


# --- the watchdog on the VM ---

def test_power_off_minutes_follow_the_idle_duration():
    from configuration.models import TaskConfiguration
    from provisioner.planning.reuse import POWER_OFF_AFTER_EXIT_MIN, InstanceOffer, power_off_minutes

    def task(**fields):
        return TaskConfiguration.model_validate({"commands": ["x"], **fields})

    assert power_off_minutes(task(), OFFER) == POWER_OFF_AFTER_EXIT_MIN
    assert power_off_minutes(task(idle_duration="90s"), OFFER) == 2
    assert power_off_minutes(task(idle_duration="off"), OFFER) is None  # kept until deleted
    reused = InstanceOffer(*[getattr(OFFER, f) for f in ("backend", "instance", "region", "zones", "spot", "price",
                                                         "disk_gb", "disk_price")], fleet="f", idle_duration=600)
    assert power_off_minutes(task(), reused) == 10  # the instance's own idle_duration, not the run's
    local = Offer("local", T3, "local", (), False, 0.0, 10.0, 0.0)
    assert power_off_minutes(task(idle_duration="1h"), local) is None


def run_script(tmp_path, *args):
    """The VM's power-off script here, with systemctl and systemd-run logging their arguments."""
    from stacks.power_off import power_off_script

    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    for name in ("systemctl", "systemd-run"):
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/calls\n')
        (shims / name).chmod(0o755)
    script = tmp_path / "dstack-power-off"
    script.write_text(power_off_script(False))
    env = {"PATH": f"{shims}:/usr/bin:/bin", "DSTACK_SHUTDOWN": f"touch {tmp_path}/off"}
    subprocess.run(["sh", str(script), *args], env=env, timeout=30, check=True)
    calls = tmp_path / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines, (tmp_path / "off").exists()


def test_the_idle_watchdog_is_one_timer_that_the_next_job_cancels(tmp_path):
    calls, off = run_script(tmp_path, "--idle", "7")
    assert calls == ["systemctl stop dstack-idle-power-off.timer",
                     f"systemd-run --quiet --collect --on-active=7min --unit=dstack-idle-power-off "
                     f"{tmp_path}/dstack-power-off"] and not off
    calls, off = run_script(tmp_path, "--cancel-idle")
    assert calls == ["systemctl stop dstack-idle-power-off.timer"] and not off


def test_a_fleet_instance_stops_its_start_watchdog_and_arms_its_idle_one():
    from provisioner.backends.cloud_fleets import prepare_instance
    from provisioner.host.transport import CommandResult

    commands = []

    class Host:
        description = "ubuntu@vm"

        def connect(self, total_wait, booting):
            return self

        def run(self, command, timeout):
            commands.append(command)
            return CommandResult(0, b"", b"")

        def close(self):
            pass

    prepare_instance(Host(), 90)
    prepare_instance(Host(), None)
    assert commands[0].startswith("sudo -n systemctl stop dstack-start-watchdog.timer") and \
        "dstack-power-off --idle 2" in commands[0]
    assert "--idle" not in commands[1] and "dstack-start-watchdog" in commands[1]


def test_gc_leaves_a_recorded_fleets_resources_alone(monkeypatch, moto_endpoint, dstack_home):
    import boto3

    from provisioner.store.store import StateStore
    from tests.test_gc import make_run_resources

    env = {"AWS_ENDPOINT_URL_EC2": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "eu-west-3", "DSTACK_HOME": str(dstack_home)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    orphan = make_run_resources(ec2, "gone-fleet")
    make_run_resources(ec2, "idle-fleet")
    StateStore().create_cloud_fleet("idle-fleet", "fleet.dstack.yml", "aws", {}, None)
    listed = run_cli("gc", "-r", "eu-west-3", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {(l["kind"], l["id"]) for l in json.loads(listed.stdout)["leftovers"]} == orphan


def test_the_plan_puts_an_idle_instance_first_marked_reused_with_no_resources_to_create(tmp_path, dstack_home):
    from provisioner.planning.reuse import offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    host = {"kind": "ssh", "hostname": "10.251.250.2"}  # never contacted: a dry run
    StateStore().create_cloud_fleet("warm", "fleet.dstack.yml", "aws", {}, None, [
        InstanceRecord("warm", 0, "aws", offer_record(OFFER), host, idle_since=time.time())])
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\nresources: {cpu: 2}\n")
    env = {"DSTACK_HOME": str(dstack_home)}
    result = run_cli("apply", "-f", conf, "--dry-run", "--json", "-b", "aws", env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["offer"]["reused"] == {"fleet": "warm", "instance_num": 0, "zone": "us-east-1a"}
    assert plan["resources"] == []
    text = run_cli("apply", "-f", conf, "--dry-run", "-b", "aws", env=env)
    assert text.returncode == 0 and "aws (reused warm/0)" in text.stdout
    for name, text in (("bigger", "resources: {cpu: 4..}"),
                       ("elsewhere", "regions: [us-east-1]\navailability_zones: [us-east-1b]")):
        other = write(tmp_path, f"{name}.dstack.yml", f"type: task\ncommands: [x]\n{text}\n")
        plan = json.loads(run_cli("apply", "-f", other, "--dry-run", "--json", "-b", "aws", env=env).stdout)
        assert "reused" not in plan["offer"], name  # an instance that does not fit is not offered


def test_the_plan_of_a_kept_run_shows_its_vms_without_a_max_duration_deadline(tmp_path, dstack_home):
    """The stack a kept run makes gives its VMs no deadline (they outlive the run): the dry run renders that one
    (on GCP the deadline is the instance's max run duration; AWS's is in its user data, which the plan masks)."""
    pytest.importorskip("pulumi_gcp")

    def scheduling(extra):
        conf = write(tmp_path, "t.dstack.yml", f"type: task\ncommands: [x]\nmax_duration: 10m\n{extra}")
        result = run_cli("apply", "-f", conf, "--dry-run", "--json", "-b", "gcp", env={"DSTACK_HOME": str(dstack_home)})
        assert result.returncode == 0, result.stderr
        [instance] = [r for r in json.loads(result.stdout)["resources"] if r["type"] == "gcp:compute/instance:Instance"]
        return instance["inputs"].get("scheduling") or {}

    assert "maxRunDuration" in scheduling("")  # the deadline of a run's VM
    assert "maxRunDuration" not in scheduling("idle_duration: 1h\n")


def test_a_multi_node_run_is_not_offered_an_idle_instance(tmp_path, dstack_home):
    from provisioner.planning.reuse import offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    host = {"kind": "ssh", "hostname": "10.251.250.2"}  # never contacted: a dry run
    StateStore().create_cloud_fleet("warm", "fleet.dstack.yml", "aws", {}, None, [
        InstanceRecord("warm", 0, "aws", offer_record(OFFER), host, idle_since=time.time())])
    env = {"DSTACK_HOME": str(dstack_home)}
    one = write(tmp_path, "one.dstack.yml", "type: task\ncommands: [x]\nresources: {cpu: 2}\n")
    two = write(tmp_path, "two.dstack.yml", "type: task\nnodes: 2\ncommands: [x]\nresources: {cpu: 2}\n")
    single = run_cli("apply", "-f", one, "--dry-run", "--json", "-b", "aws", env=env)
    assert "reused" in json.loads(single.stdout)["offer"]
    result = run_cli("apply", "-f", two, "--dry-run", "--json", "-b", "aws", env=env)
    assert result.returncode == 0, result.stderr
    assert "reused" not in json.loads(result.stdout)["offer"]  # one idle instance is one node, not a cluster
    pinned = write(tmp_path, "pinned.dstack.yml", "type: task\nnodes: 2\nfleets: [warm]\ncommands: [x]\n")
    result = run_cli("apply", "-f", pinned, "--dry-run", "-b", "aws", env=env)
    assert result.returncode == 1 and "a multi-node run takes no cloud fleet's idle instances" in result.stderr


def test_a_run_holding_every_instance_of_its_cluster_releases_them_all():
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.create_cloud_fleet("train", "run train", "aws", {}, None, [
        InstanceRecord("train", num, "aws", {}, {}, status="busy", run="train") for num in range(3)])
    assert store.release_instance("train")
    assert [(i.status, i.run) for i in store.list_instances("train")] == [("idle", None)] * 3
    assert not store.release_instance("train")  # it holds none any more


def test_a_spot_instance_serves_runs_that_allow_spot_and_an_on_demand_one_runs_that_allow_on_demand():
    import dataclasses

    from configuration.resources import ResourcesSpec
    from offers.requirements import Requirements
    from provisioner.planning.reuse import idle_offers, offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    spot = dataclasses.replace(OFFER, spot=True, price=0.03)
    store.create_cloud_fleet("f1", "x", "aws", {}, None, [
        InstanceRecord("f1", 0, "aws", offer_record(OFFER), {}, idle_since=1.0),
        InstanceRecord("f1", 1, "aws", offer_record(spot), {}, idle_since=1.0)])

    def nums(policy):
        return [o.num for o in idle_offers(store, Requirements(resources=ResourcesSpec(), spot=policy))]

    assert (nums(None), nums(True), nums(False)) == ([1, 0], [1], [0])  # cheapest first


def test_an_instance_about_to_power_itself_off_is_not_offered():
    from configuration.resources import ResourcesSpec
    from offers.requirements import Requirements
    from provisioner.planning.reuse import POWER_OFF_MARGIN_S, idle_offers, offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    now = time.time()
    store.create_cloud_fleet("f1", "x", "aws", {}, None, [
        InstanceRecord("f1", num, "aws", offer_record(OFFER), {}, idle_since=now - idle, idle_duration=600)
        for num, idle in enumerate((0, 600 - POWER_OFF_MARGIN_S - 30, 600 - POWER_OFF_MARGIN_S + 30))])
    assert [o.num for o in idle_offers(store, Requirements(resources=ResourcesSpec()))] == [0, 1]
