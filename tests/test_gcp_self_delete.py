"""GCP `self_delete` on the way to `up` (issue 19, items 2 and 5): the credentials' permissions are tested once per
run before its first `up`, and a run without them falls back to `self_delete: false` with a warning that names
them; the run's service account is made once, outside the per-zone tries, and read back before the VMs name it;
IAM's eventual consistency ("does not exist", "already exists") is tried again, not the end of the run.

The real CloudBackend and failover run against recorded IAM and Resource Manager REST answers on 127.0.0.1
(tests/data/gcp) whose service accounts read back only after a while, as IAM's do; the Pulumi engine is stood in
for at stacks.automation (`up` fails or returns the nodes' addresses) and the stack program is not run: what it
would be given (the StackSpec) is recorded."""

import json
import re
import time

import pytest

from configuration.backends import DstackConfig, GCPBackend
from configuration.loader import parse_configuration
from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.runs.session import Reporter, RunSession
from provisioner.store.records import RunRecord
from provisioner.store.store import StateStore
from stacks.errors import StackFailure, classify
from stacks.gcp.program import service_account_id
from tests.helpers import DATA

OWNER = "0a1b2c3d"
ACCOUNTS = "/v1/projects/my-project/serviceAccounts"
PERMISSIONS = "/v1/projects/my-project:testIamPermissions"
G2 = InstanceType("g2-standard-8", 8, 32.0, "nvidia", "L4", 1, 24.0, "x86", True)
OFFER = Offer("gcp", G2, "us-central1", ("us-central1-a", "us-central1-b"), False, 0.85, 100.0, 0.014)
TASK = parse_configuration("type: task\nname: train-1\ncommands: [nvidia-smi]\n", "t.dstack.yml")
CAPACITY = ("googleapi: Error 503: The zone 'projects/my-project/zones/us-central1-a' does not have enough "
            "resources available to fulfill the request.  Try a different zone, or try again later., "
            "ZONE_RESOURCE_POOL_EXHAUSTED")


def recorded(name):
    return json.loads((DATA / "gcp" / name).read_text())


def email(owner=None):
    """The run's account: of this $DSTACK_HOME's owner (configuration.owner), or of `owner`."""
    from configuration.owner import owner_id

    return f"{service_account_id(owner or owner_id(), 'train-1')}@my-project.iam.gserviceaccount.com"


class Iam:
    """IAM's service accounts as eventually consistent: an account made reads back (GET) only after
    `unreadable_reads` more GETs of it; `timeline` is what happened, in order, with the engine's `up`s."""

    def __init__(self, api, unreadable_reads=0):
        self.made, self.unreadable_reads, self.timeline = False, unreadable_reads, []
        original = api.answer_for

        def answer(request):
            found = re.fullmatch(f"{ACCOUNTS}/(.+)", request.path)
            if request.method == "POST" and request.path == ACCOUNTS:
                self.timeline.append("create account")
                self.made = True
                return 200, recorded("service_account.json")
            if request.method == "GET" and found:
                if self.made and self.unreadable_reads <= 0:
                    return 200, recorded("service_account.json")
                self.unreadable_reads -= self.made
                return 404, recorded("error_404_service_account.json")
            if request.path == PERMISSIONS:
                self.timeline.append("test permissions")
            return original(request)

        api.answer_for = answer


@pytest.fixture
def gcp_run(recorded_api, monkeypatch, dstack_home):
    """A GCP run's provisioning with the engine stood in for: `ups` are the outcomes of each `up` in turn (an error
    text, or None for success); `specs` what each `up` would have run."""
    import stacks.automation
    import stacks.gcp.api
    from google.auth.credentials import AnonymousCredentials

    api = recorded_api
    api.on("POST", PERMISSIONS, recorded("crm_test_iam_permissions_all.json"))
    api.on("GET", ACCOUNTS, {"accounts": []})
    iam = Iam(api)
    run = {"api": api, "iam": iam, "ups": [], "specs": [], "said": []}
    monkeypatch.setattr(stacks.gcp.api, "gcp_api", lambda project: stacks.gcp.api.GcpApi(
        "my-project", AnonymousCredentials(), compute_endpoint=api.url, iam_url=api.url + "/v1",
        crm_url=api.url + "/v1"))
    monkeypatch.setattr("stacks.gcp.iam.READBACK_POLL_S", 0.05)
    monkeypatch.setattr("stacks.extras.require_extra", lambda *args: None)
    monkeypatch.setattr(stacks.automation, "require_pulumi", lambda: None)
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    monkeypatch.setattr("stacks.clouds.program_for", lambda spec: run["specs"].append(spec) or (lambda: None))
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: name)

    def up(stack, on_event=None, **_):
        iam.timeline.append(f"up in {run['specs'][-1].zone}")
        outcome = run["ups"].pop(0) if run["ups"] else None
        if outcome is not None:
            raise classify(outcome)
        return {"public_ips": ["203.0.113.5"], "private_ips": ["10.0.0.5"], "ssh_user": "ubuntu"}

    monkeypatch.setattr(stacks.automation, "stack_up", up)
    # the stood-in VM's address is TEST-NET-3 (203.0.113.0/24): nothing may try to reach it
    monkeypatch.setattr("provisioner.backends.cloud.await_boot", lambda *args, **kwargs: None)
    store = StateStore()
    store.create_run(RunRecord(name="train-1", status="submitted", submitted_at=time.time()))
    config = DstackConfig(backends=[GCPBackend(type="gcp", project_id="my-project")])
    run["session"] = RunSession(store=store, config=config, reporter=Reporter(info=run["said"].append))
    run["store"] = store
    return run


def provision(run):
    from provisioner.runs.failover import provision_with_retry

    return provision_with_retry(run["session"], "train-1", [OFFER], TASK)


def test_missing_permissions_are_tested_once_and_the_run_falls_back_with_a_warning(gcp_run):
    api = gcp_run["api"]
    api.on("POST", PERMISSIONS, recorded("crm_test_iam_permissions_editor.json"))
    gcp_run["ups"] = [CAPACITY, None]  # the first zone has no capacity: the second zone's `up` works
    offer, hosts = provision(gcp_run)
    assert offer.zones == ("us-central1-b",) and hosts[0].hostname == "203.0.113.5"
    assert gcp_run["iam"].timeline == ["test permissions", "up in us-central1-a", "up in us-central1-b"]
    assert [spec.self_delete for spec in gcp_run["specs"]] == [False, False]
    assert api.made("POST", ACCOUNTS) == [] and api.made("GET", f"{ACCOUNTS}/.+") == []  # no account to make
    [warning] = [e["message"] for e in gcp_run["store"].list_events("train-1") if e["kind"] == "warning"]
    assert "the credentials lack compute.instances.setIamPolicy" in warning
    assert "falls back to `self_delete: false`" in warning
    assert sum(line.startswith("warning: GCP project my-project: the credentials lack") for line in
               gcp_run["said"]) == 1


def test_a_disabled_iam_api_is_named_and_the_run_falls_back(gcp_run):
    gcp_run["api"].on("GET", ACCOUNTS, recorded("error_403_iam_disabled.json"), status=403)
    provision(gcp_run)
    assert gcp_run["specs"][0].self_delete is False
    [warning] = [e["message"] for e in gcp_run["store"].list_events("train-1") if e["kind"] == "warning"]
    assert "the credentials lack the IAM API (iam.googleapis.com), which `self_delete` needs" in warning


def test_the_account_is_made_once_per_run_before_the_first_up_and_read_back(gcp_run):
    iam = gcp_run["iam"]
    iam.unreadable_reads = 3  # made, but reads back only on the fourth GET
    gcp_run["ups"] = [CAPACITY, None]
    provision(gcp_run)
    assert iam.timeline == ["test permissions", "create account", "up in us-central1-a", "up in us-central1-b"]
    assert len(gcp_run["api"].made("POST", ACCOUNTS)) == 1  # not once per zone
    assert len(gcp_run["api"].made("GET", f"{ACCOUNTS}/{re.escape(email())}")) == 1 + 4  # absent, then read back
    assert [(spec.self_delete, spec.service_account_email) for spec in gcp_run["specs"]] == [(True, email())] * 2
    assert gcp_run["store"].get_run("train-1").stack["tagged"] == "train-1"  # recorded first: teardown sweeps it


def test_iam_not_yet_consistent_at_up_tries_the_same_zone_again(gcp_run, monkeypatch):
    from provisioner.runs import failover

    monkeypatch.setattr(failover, "TRANSIENT_WAIT_S", 0.0)
    gcp_run["ups"] = [f"googleapi: Error 400: Service account {email()} does not exist., badRequest", None]
    offer, _ = provision(gcp_run)
    assert offer.zones == ("us-central1-a",)  # the zone is not ruled out: the same one again, and it works
    assert gcp_run["iam"].timeline == ["test permissions", "create account", "up in us-central1-a",
                                       "up in us-central1-a"]
    [attempt] = gcp_run["store"].get_run("train-1").attempts
    assert attempt["kind"] == "transient" and attempt["zone"] == "us-central1-a"


def test_an_account_that_exists_already_is_read_back_not_an_error(recorded_api):
    from google.auth.credentials import AnonymousCredentials

    from stacks.gcp.api import GcpApi
    from stacks.gcp.iam import run_account

    api = GcpApi("my-project", AnonymousCredentials(), iam_url=recorded_api.url + "/v1")
    recorded_api.on("GET", f"{ACCOUNTS}/.+", recorded("error_404_service_account.json"), status=404)
    recorded_api.on("POST", ACCOUNTS, recorded("error_409_service_account.json"), status=409)
    with pytest.raises(StackFailure) as failure:
        run_account(api, OWNER, "train-1", readback_timeout_s=0.5)
    assert (failure.value.kind, failure.value.scope, failure.value.retryable) == ("transient", "attempt", True)
    recorded_api.on("GET", f"{ACCOUNTS}/.+", recorded("service_account.json"))
    assert run_account(api, OWNER, "train-1") == email(OWNER)


def test_an_account_refused_stops_the_run_and_says_what_to_grant(recorded_api):
    from google.auth.credentials import AnonymousCredentials

    from stacks.gcp.api import GcpApi
    from stacks.gcp.iam import run_account

    api = GcpApi("my-project", AnonymousCredentials(), iam_url=recorded_api.url + "/v1")
    recorded_api.on("GET", f"{ACCOUNTS}/.+", recorded("error_404_service_account.json"), status=404)
    recorded_api.on("POST", ACCOUNTS, recorded("error_403_service_account_create.json"), status=403)
    with pytest.raises(StackFailure) as failure:
        run_account(api, OWNER, "train-1")
    assert failure.value.kind == "credentials" and not failure.value.retryable
    assert "Permission 'iam.serviceAccounts.create' denied" in failure.value.message
    assert "set `self_delete: false`" in failure.value.message


@pytest.mark.parametrize("text", [
    "googleapi: Error 400: Service account dstack-0a1b2c3d-5b1f0a6d2c8e4@my-project.iam.gserviceaccount.com does "
    "not exist., badRequest",
    "googleapi: Error 409: Service account dstack-0a1b2c3d-5b1f0a6d2c8e4 already exists within project "
    "projects/my-project., alreadyExists",
])
def test_iams_eventual_consistency_is_transient(text):
    failure = classify(text)
    assert (failure.kind, failure.scope, failure.retryable) == ("transient", "attempt", True)
