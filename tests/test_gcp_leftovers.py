"""The GCP leftover sweep against recorded Compute and IAM REST responses served on 127.0.0.1 (tests/data/gcp): the
filters it sends, what it removes (one run's resources, never another owner's or anything not dstack's), and
refusals as one-line errors."""

import json
import time
from pathlib import Path

import pytest

from configuration.errors import ConfigurationError
from stacks.gcp.leftovers import GcpApi, find_leftovers, remove_leftovers

DATA = Path(__file__).parent / "data" / "gcp"
COMPUTE = "/compute/v1/projects/my-project"
ACCOUNTS = "/v1/projects/my-project/serviceAccounts"
MINE, OTHERS = "0a1b2c3d", "99887766"
RUN_FILTER = (f'(labels.dstack-project = "dstack") AND (labels.dstack-owner = "{MINE}") '
              'AND (labels.dstack-run = "train-1")')
OPERATION = "operation-1747045200000-6350a1b2c3d4e-5f6a7b8c-9d0e1f2a"


def recorded(name):
    return json.loads((DATA / name).read_text())


@pytest.fixture
def gcp(recorded_api):
    api = recorded_api
    api.on("GET", f"{COMPUTE}/aggregated/instances", recorded("instances_aggregated.json"))
    api.on("GET", f"{COMPUTE}/aggregated/disks", recorded("disks_aggregated.json"))
    api.on("GET", f"{COMPUTE}/global/firewalls", recorded("firewalls.json"))
    api.on("GET", f"{COMPUTE}/aggregated/resourcePolicies", recorded("resource_policies_aggregated.json"))
    api.on("GET", ACCOUNTS, recorded("service_accounts_page1.json"))
    api.on("GET", ACCOUNTS, recorded("service_accounts_page2.json"),
           query={"pageToken": recorded("service_accounts_page1.json")["nextPageToken"]})
    api.on("DELETE", f"{COMPUTE}/zones/[^/]+/instances/[^/]+", recorded("operation_delete_instance_running.json"))
    api.on("POST", f"{COMPUTE}/zones/us-central1-a/operations/{OPERATION}/wait",
           recorded("operation_delete_instance_done.json"))
    api.on("DELETE", f"{COMPUTE}/zones/[^/]+/disks/[^/]+", recorded("operation_delete_disk.json"))
    api.on("DELETE", f"{COMPUTE}/global/firewalls/[^/]+", recorded("operation_delete_firewall.json"))
    api.on("DELETE", f"{COMPUTE}/regions/[^/]+/resourcePolicies/[^/]+",
           recorded("operation_delete_resource_policy.json"))
    api.on("DELETE", f"{ACCOUNTS}/[^/]+", {})
    return api, client(api)


def client(api, project="my-project"):
    from google.auth.credentials import AnonymousCredentials

    return GcpApi(project, AnonymousCredentials(), compute_endpoint=api.url, iam_url=api.url + "/v1")


def account_email(owner, run):
    from stacks.gcp.program import service_account_id

    return f"{service_account_id(owner, run)}@my-project.iam.gserviceaccount.com"


def test_a_runs_sweep_sends_its_filters_and_removes_that_run_only(gcp):
    server, api = gcp
    found = find_leftovers(api, MINE, run="train-1")
    assert [r.query.get("filter") for r in server.made("GET", f"{COMPUTE}/aggregated/(instances|disks)")] == \
        [RUN_FILTER, RUN_FILTER]
    assert server.made("GET", f"{COMPUTE}/global/firewalls")[0].query["filter"] == \
        f'(name = "dstack-{MINE}-train-1") OR (name = "dstack-{MINE}-train-1-nodes")'
    assert server.made("GET", f"{COMPUTE}/aggregated/resourcePolicies")[0].query["filter"] == \
        f'name = "dstack-{MINE}-train-1"'
    assert {(l.kind, l.id, l.zone) for l in found} == {
        ("instance", f"dstack-{MINE}-train-1", "us-central1-a"),  # stopped, its disk billed: found all the same
        ("disk", f"dstack-{MINE}-train-1-1", "us-central1-c"),  # the attached one goes with its instance
        ("firewall", f"dstack-{MINE}-train-1", None),
        ("firewall", f"dstack-{MINE}-train-1-nodes", None),  # between a cluster's nodes
        ("resource-policy", f"dstack-{MINE}-train-1", None),  # a cluster's compact placement
        ("service-account", account_email(MINE, "train-1"), None)}
    assert {(l.run, l.owner) for l in found} == {("train-1", MINE)}
    assert next(l for l in found if l.kind == "instance").region == "us-central1"

    remove_leftovers(api, found)
    deleted = [(r.method, r.path) for r in server.requests if r.method in ("DELETE", "POST")]
    assert deleted == [
        ("DELETE", f"{COMPUTE}/zones/us-central1-a/instances/dstack-{MINE}-train-1"),
        ("POST", f"{COMPUTE}/zones/us-central1-a/operations/{OPERATION}/wait"),  # the instance is gone first
        ("DELETE", f"{COMPUTE}/zones/us-central1-c/disks/dstack-{MINE}-train-1-1"),
        ("DELETE", f"{COMPUTE}/global/firewalls/dstack-{MINE}-train-1"),
        ("DELETE", f"{COMPUTE}/global/firewalls/dstack-{MINE}-train-1-nodes"),
        ("DELETE", f"{COMPUTE}/regions/us-central1/resourcePolicies/dstack-{MINE}-train-1"),
        ("DELETE", f"{ACCOUNTS}/{account_email(MINE, 'train-1')}"),
    ]
    assert not any(OTHERS in path or "eval-2" in path or "web-frontend" in path or "nightly" in path
                   for _, path in deleted)


def test_an_owners_resources_for_gc_span_its_runs_and_no_other_owners(gcp):
    server, api = gcp
    found = find_leftovers(api, MINE)
    assert server.made("GET", f"{COMPUTE}/aggregated/instances")[0].query["filter"] == \
        f'(labels.dstack-project = "dstack") AND (labels.dstack-owner = "{MINE}")'
    assert "filter" not in server.made("GET", f"{COMPUTE}/global/firewalls")[0].query  # no labels: names decide
    assert "filter" not in server.made("GET", f"{COMPUTE}/aggregated/resourcePolicies")[0].query
    assert len(server.made("GET", ACCOUNTS)) == 2  # both pages
    assert {(l.kind, l.id, l.run) for l in found if l.kind in ("firewall", "resource-policy")} == {
        ("firewall", f"dstack-{MINE}-train-1", "train-1"), ("firewall", f"dstack-{MINE}-train-1-nodes", "train-1"),
        ("firewall", f"dstack-{MINE}-eval-2", "eval-2"),
        ("firewall", f"dstack-{MINE}-eval-2-nodes", "eval-2-nodes"),  # its description names its run
        ("resource-policy", f"dstack-{MINE}-train-1", "train-1")}  # not the hand-made firewall, nor the snapshots
    assert {(l.kind, l.run) for l in found} == {
        ("instance", "train-1"), ("instance", "eval-2"), ("disk", "train-1"),
        ("firewall", "train-1"), ("firewall", "eval-2"), ("firewall", "eval-2-nodes"),
        ("resource-policy", "train-1"),
        ("service-account", "train-1"), ("service-account", "eval-2")}  # not the look-alike account
    assert {l.owner for l in found} == {MINE}
    assert next(l for l in found if l.run == "eval-2" and l.kind == "instance").region == "europe-west4"

    everyone = find_leftovers(api, None)
    assert server.made("GET", f"{COMPUTE}/aggregated/instances")[-1].query["filter"] == \
        '(labels.dstack-project = "dstack")'
    assert {l.owner for l in everyone} == {MINE, OTHERS}
    assert {l.id for l in everyone if l.owner == OTHERS} == {
        f"dstack-{OTHERS}-train-1", account_email(OTHERS, "train-1")}  # instance, disk, firewall share the name
    assert {l.kind for l in everyone if l.owner == OTHERS} == {"instance", "disk", "firewall", "resource-policy",
                                                               "service-account"}
    assert not any(l.id in ("web-frontend", "default-allow-ssh", "nightly-snapshots") or "compute@developer" in l.id
                   for l in everyone)


def test_what_is_already_gone_is_skipped(gcp):
    server, api = gcp
    found = find_leftovers(api, MINE, run="train-1")
    server.on("DELETE", f"{COMPUTE}/zones/us-central1-a/instances/dstack-{MINE}-train-1",
              recorded("error_404_instance.json"), status=404)  # the VM deleted itself meanwhile
    server.on("DELETE", f"{ACCOUNTS}/.+", {"error": {"code": 404, "message": "Unknown service account"}}, status=404)
    remove_leftovers(api, found)
    assert server.made("POST", ".*/wait") == []
    assert len(server.made("DELETE", ".*")) == 6


@pytest.mark.parametrize("path, body, status, expected", [
    (f"{COMPUTE}/aggregated/instances", "error_403_compute.json", 403,
     "GCP project my-project: listing dstack's resources was refused (403): Required 'compute.instances.list' "
     "permission for 'projects/my-project' (the credentials need"),
    (ACCOUNTS, "error_403_iam.json", 403,
     "GCP project my-project: listing dstack's resources was refused (403): Permission 'iam.serviceAccounts.list' "
     "denied on resource (or it may not exist). (the credentials need"),
    (f"{COMPUTE}/global/firewalls", "error_404_project.json", 404,
     "GCP project my-project: listing dstack's resources was refused (404): The resource 'projects/my-projekt' was "
     "not found (check that the project exists: `project_id` of the gcp backend"),
])
def test_refusals_are_one_line_errors_that_say_what_to_do(gcp, path, body, status, expected):
    server, api = gcp
    server.on("GET", path, recorded(body), status=status)
    with pytest.raises(ConfigurationError) as error:
        find_leftovers(api, MINE, run="train-1")
    message = str(error.value)
    assert message.startswith(expected)
    assert "\n" not in message and "127.0.0.1" not in message  # the client's request line is dropped


def test_a_deletion_that_fails_is_named(gcp):
    server, api = gcp
    failed = recorded("operation_delete_instance_done.json")
    failed["error"] = {"errors": [{"code": "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
                                   "message": "The instance is protected against deletion."}]}
    server.on("POST", f"{COMPUTE}/zones/us-central1-a/operations/{OPERATION}/wait", failed)
    with pytest.raises(ConfigurationError, match=f"deleting .*/instances/dstack-{MINE}-train-1 failed: The instance "
                                                 "is protected against deletion"):
        remove_leftovers(api, find_leftovers(api, MINE, run="train-1"))


def test_teardown_of_a_gcp_run_sweeps_what_its_stack_did_not_record(gcp, monkeypatch, dstack_home):
    import stacks.automation
    import stacks.gcp.leftovers
    from configuration.backends import DstackConfig, GCPBackend
    from provisioner.backends.cloud import CloudBackend
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    server, api = gcp
    destroyed, projects = [], []
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: name)
    monkeypatch.setattr(stacks.automation, "stack_destroy", lambda stack, on_event=None: destroyed.append(stack))
    monkeypatch.setattr(stacks.gcp.leftovers, "gcp_api", lambda project: projects.append(project) or api)
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)  # tests/test_faults.py's
    config = DstackConfig(backends=[GCPBackend(type="gcp", project_id="my-project")])
    record = RunRecord(name="train-1", status="terminating", submitted_at=time.time(),
                       stack={"backend": "gcp", "name": f"train-1-{MINE}", "owner": MINE, "region": "us-central1"})
    CloudBackend("gcp", config, StateStore()).teardown(record, report=lambda *a, **k: None)
    assert destroyed == [f"train-1-{MINE}"] and projects == ["my-project"]
    assert [r.path for r in server.made("DELETE", ".*/instances/.*")] == \
        [f"{COMPUTE}/zones/us-central1-a/instances/dstack-{MINE}-train-1"]
    assert len(server.made("DELETE", ".*")) == 6


def test_a_sweep_refused_after_the_stack_is_destroyed_ends_the_run_with_a_warning(gcp, monkeypatch, dstack_home):
    """Issue 19 item 11: the stack is gone, only the sweep for what an interrupted `up` may have left is refused
    (403 on listing): the run ends `terminated` (not `terminating` forever), the warning in its events; `dstack gc`
    keeps the hard failure (test_refusals_are_one_line_errors_that_say_what_to_do)."""
    import stacks.automation
    import stacks.gcp.leftovers
    from configuration.backends import DstackConfig, GCPBackend
    from provisioner.runs.session import Reporter, RunSession
    from provisioner.runs.teardown import finish_run
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    server, api = gcp
    server.on("GET", f"{COMPUTE}/aggregated/instances", recorded("error_403_compute.json"), status=403)
    destroyed, said = [], []
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: name)
    monkeypatch.setattr(stacks.automation, "stack_destroy", lambda stack, on_event=None: destroyed.append(stack))
    monkeypatch.setattr(stacks.gcp.leftovers, "gcp_api", lambda project: api)
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    store = StateStore()
    store.create_run(RunRecord(name="train-1", status="running", submitted_at=time.time(), backend="gcp",
                               stack={"backend": "gcp", "name": f"train-1-{MINE}", "owner": MINE,
                                      "region": "us-central1"}))
    session = RunSession(store=store, config=DstackConfig(backends=[GCPBackend(type="gcp", project_id="my-project")]),
                         reporter=Reporter(info=said.append))
    record = finish_run(session, "train-1", "terminated", "stopped by user")
    assert destroyed == [f"train-1-{MINE}"]
    assert record.status == "terminated" and store.get_run("train-1").status == "terminated"
    [warning] = [e["message"] for e in store.list_events("train-1") if e["kind"] == "teardown-warning"]
    assert "stack was destroyed, but the sweep" in warning and "refused (403)" in warning and "dstack gc" in warning
    assert not [e for e in store.list_events("train-1") if e["kind"] == "teardown-failed"]
    assert any(line.startswith("warning: train-1's stack was destroyed") for line in said)


def test_the_sweep_uses_the_providers_credentials_and_project(monkeypatch, tmp_path):
    from stacks.gcp.leftovers import gcp_api

    for name in ("GOOGLE_CREDENTIALS", "GOOGLE_CLOUD_KEYFILE_JSON", "GCLOUD_KEYFILE_JSON",
                 "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT",
                 "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    with pytest.raises(ConfigurationError, match="gcloud auth application-default login"):
        gcp_api("my-project")  # named before google.auth could go looking for a metadata server
    user = {"type": "authorized_user", "client_id": "id.apps.googleusercontent.com", "client_secret": "not-a-secret",
            "refresh_token": "1//not-a-token"}
    monkeypatch.setenv("GOOGLE_CREDENTIALS", json.dumps(user))
    with pytest.raises(ConfigurationError, match="set `project_id` for the gcp backend"):
        gcp_api(None)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    assert gcp_api(None).project == "from-env"
    assert gcp_api("from-config").project == "from-config"
    monkeypatch.setenv("GOOGLE_CREDENTIALS", "{not json")
    with pytest.raises(ConfigurationError, match="GCP credentials could not be read"):
        gcp_api("my-project")
