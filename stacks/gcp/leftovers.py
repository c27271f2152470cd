"""GCP resources of dstack's that no stack owns any more: what an `up` interrupted before Pulumi recorded a cloud id
leaves behind, or what a lost state file forgot. Used by teardown (one run) and `dstack gc` (an owner's runs, or
every owner's).

What the GCP program (stacks/gcp.py) creates, and how each is recognized across every zone of the project:
instances, disks and TPU VM nodes (stacks.gcp.tpu) by their labels (`dstack-project`, `dstack-owner`, `dstack-run`;
TPU nodes listed in every zone at once, `locations/-`, and their labels checked here); the firewalls and a cluster's
compact placement policy, which take no labels, by their names (`dstack-OWNER-RUN`, and `dstack-OWNER-RUN-nodes` for
a cluster's own firewall) and dstack's description, which names the run; the service account by its display name
`dstack-OWNER-RUN` and the account id derived from it. The APIs are reached as stacks.gcp.api says, only when a
sweep runs.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence

from configuration.errors import ConfigurationError
from stacks.gcp.api import ApiRefusal, GcpApi, gcp_api, list_items, one_line, rest_request
from stacks.gcp.program import CLUSTER_FIREWALL_SUFFIX, DESCRIPTION_PREFIX, service_account_id
from stacks.spec import PROJECT

OWNED_NAME = re.compile(r"^dstack-(?P<owner>[0-9a-f]{8})-(?P<run>.+)$")
WAIT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Leftover:
    kind: str  # instance, tpu-node, disk, firewall, resource-policy, service-account
    id: str  # the resource's name; a service account's email; a TPU node's full name (projects/P/locations/Z/nodes/N)
    region: str  # the zone's region, a resource policy's; "global" for firewalls and service accounts
    run: str
    owner: str
    zone: Optional[str] = None  # instances and disks


def label_filter(owner: Optional[str], run: Optional[str]) -> str:
    """A Compute API filter on dstack's labels: the owner's (None: every owner's) and the run's (None: every run's)."""
    labels = [("dstack-project", PROJECT), ("dstack-owner", owner), ("dstack-run", run)]
    return " AND ".join(f'(labels.{key} = "{value}")' for key, value in labels if value is not None)


def find_leftovers(api: GcpApi, owner: Optional[str], run: Optional[str] = None) -> List[Leftover]:
    """Everything dstack created in the project for `owner` (None: for every owner), or for one of its runs."""
    if run is not None and owner is None:
        raise ValueError("a run is named within its owner")
    with _refused(api, "listing dstack's resources"):
        return (_labelled(api, "instance", owner, run) + _tpu_nodes(api, owner, run)
                + _labelled(api, "disk", owner, run) + _firewalls(api, owner, run) + _resource_policies(api, owner, run)
                + _service_accounts(api, owner, run))


def remove_leftovers(api: GcpApi, leftovers: Iterable[Leftover], wait: bool = True) -> None:
    """Instances first, waited for (their boot disks go with them, and a placement policy cannot go while an
    instance uses it), then the rest; a TPU node's delete is not waited for (nothing else waits on it). Already gone
    is fine: a VM that ends itself may beat the sweep to it."""
    leftovers = list(leftovers)
    compute = api.compute_url
    with _refused(api, "removing dstack's resources"):
        operations = []
        for leftover in leftovers:
            if leftover.kind == "instance":
                operation = rest_request(api, "DELETE", f"{compute}/zones/{leftover.zone}/instances/{leftover.id}",
                                         missing_ok=True)
                if operation:
                    operations.append((leftover.zone, operation))
        if wait:
            _wait(api, operations)
        for leftover in leftovers:
            if leftover.kind == "disk":
                rest_request(api, "DELETE", f"{compute}/zones/{leftover.zone}/disks/{leftover.id}", missing_ok=True)
            elif leftover.kind == "firewall":
                rest_request(api, "DELETE", f"{compute}/global/firewalls/{leftover.id}", missing_ok=True)
            elif leftover.kind == "resource-policy":
                rest_request(api, "DELETE", f"{compute}/regions/{leftover.region}/resourcePolicies/{leftover.id}",
                             missing_ok=True)
            elif leftover.kind == "service-account":
                _iam_request(api, "DELETE", f"/projects/{api.project}/serviceAccounts/{leftover.id}", missing_ok=True)
            elif leftover.kind == "tpu-node":
                rest_request(api, "DELETE", f"{api.tpu_url}/{leftover.id}", missing_ok=True)


def _labelled(api: GcpApi, kind: str, owner: Optional[str], run: Optional[str]) -> List[Leftover]:
    """Instances, or disks no instance uses (a used one goes with its instance), in every zone: aggregatedList."""
    resource = "instances" if kind == "instance" else "disks"
    found = []
    for listed in list_items(api, f"{api.compute_url}/aggregated/{resource}", {"filter": label_filter(owner, run)}):
        zone = listed["scope"].rsplit("/", 1)[-1]
        items = listed.get(resource) or []
        for item in (items if kind == "instance" else [d for d in items if not d.get("users")]):
            labels = item.get("labels") or {}
            named = (labels.get("dstack-owner", ""), labels.get("dstack-run", ""))
            if labels.get("dstack-volume"):  # a network volume outlives runs: its own stack has it
                continue
            if labels.get("dstack-project") == PROJECT and _is_wanted(named, owner, run):  # the filter, checked
                found.append(Leftover(kind, item["name"], zone.rsplit("-", 1)[0], named[1], named[0], zone))
    return found


def _tpu_nodes(api: GcpApi, owner: Optional[str], run: Optional[str]) -> List[Leftover]:
    """TPU VM nodes with dstack's labels, in every zone: listed across zones at once (`locations/-`, which answers
    the zones it could not reach), else zone by zone. A project without the Cloud TPU API enabled has none: that
    refusal is no error."""
    try:
        nodes = _tpu_list(api, "-")
    except ApiRefusal as refusal:
        if refusal.detail == "SERVICE_DISABLED":
            return []
        if refusal.code not in (400, 404):
            raise
        locations = _tpu_pages(api, f"/projects/{api.project}/locations", "locations")
        nodes = [node for location in locations for node in _tpu_list(api, location["locationId"])]
    found = []
    for node in nodes:
        labels = node.get("labels") or {}
        named = (labels.get("dstack-owner", ""), labels.get("dstack-run", ""))
        zone = node.get("name", "").split("/locations/", 1)[-1].split("/", 1)[0]
        if labels.get("dstack-project") == PROJECT and _is_wanted(named, owner, run):
            found.append(Leftover("tpu-node", node["name"], zone.rsplit("-", 1)[0], named[1], named[0], zone))
    return found


def _tpu_list(api: GcpApi, location: str) -> List[dict]:
    return _tpu_pages(api, f"/projects/{api.project}/locations/{location}/nodes", "nodes")


def _tpu_pages(api: GcpApi, path: str, key: str) -> List[dict]:
    items, token = [], None
    while True:
        page = rest_request(api, "GET", api.tpu_url + path,
                            params={"pageSize": 100, **({"pageToken": token} if token else {})})
        if page.get("unreachable"):
            raise ApiRefusal(503, f"the TPU API could not list zones {', '.join(page['unreachable'])}; try again")
        items += page.get(key, [])
        token = page.get("nextPageToken")
        if not token:
            return items


def _firewalls(api: GcpApi, owner: Optional[str], run: Optional[str]) -> List[Leftover]:
    suffixes = ("", CLUSTER_FIREWALL_SUFFIX)
    params = {}
    if run is not None:
        params["filter"] = " OR ".join(f'(name = "dstack-{owner}-{run}{suffix}")' for suffix in suffixes)
    found = []
    for firewall in list_items(api, f"{api.compute_url}/global/firewalls", params):
        named = _described(firewall["name"], firewall.get("description", ""), owner, run, suffixes)
        if named:
            found.append(Leftover("firewall", firewall["name"], "global", named[1], named[0]))
    return found


def _resource_policies(api: GcpApi, owner: Optional[str], run: Optional[str]) -> List[Leftover]:
    """A cluster's compact placement policy, in every region: aggregatedList."""
    params = {"filter": f'name = "dstack-{owner}-{run}"'} if run is not None else {}
    found = []
    for listed in list_items(api, f"{api.compute_url}/aggregated/resourcePolicies", params):
        for policy in listed.get("resourcePolicies") or []:
            named = _described(policy["name"], policy.get("description", ""), owner, run)
            if named:
                region = listed["scope"].rsplit("/", 1)[-1]
                found.append(Leftover("resource-policy", policy["name"], region, named[1], named[0]))
    return found


def _described(name: str, description: str, owner: Optional[str], run: Optional[str],
               suffixes: tuple = ("",)) -> Optional[tuple]:
    """(owner, run) of a resource dstack named `dstack-OWNER-RUN` (plus one of `suffixes`) and described as
    `dstack run RUN: ...`, when it is the owner's (and the run's, if given). The description says where the run's
    name ends: `dstack-OWNER-RUN-nodes` may be run RUN's cluster firewall or run RUN-nodes's own."""
    match = OWNED_NAME.match(name)
    if not match or not description.startswith(DESCRIPTION_PREFIX):
        return None
    named = (match["owner"], description[len(DESCRIPTION_PREFIX):].split(":", 1)[0])
    if name not in {f"dstack-{named[0]}-{named[1]}{suffix}" for suffix in suffixes}:
        return None
    return named if _is_wanted(named, owner, run) else None


def _service_accounts(api: GcpApi, owner: Optional[str], run: Optional[str]) -> List[Leftover]:
    found, token = [], None
    while True:
        page = _iam_request(api, "GET", f"/projects/{api.project}/serviceAccounts",
                            params={"pageSize": 100, **({"pageToken": token} if token else {})})
        for account in page.get("accounts", []):
            named = _owned(account.get("displayName", ""), owner, run)
            email = account.get("email", "")
            if named and email.split("@", 1)[0] == service_account_id(*named):
                found.append(Leftover("service-account", email, "global", named[1], named[0]))
        token = page.get("nextPageToken")
        if not token:
            return found


def _owned(name: str, owner: Optional[str], run: Optional[str]) -> Optional[tuple]:
    """(owner, run) of a `dstack-OWNER-RUN` name, when it is the owner's (and the run's, if given)."""
    match = OWNED_NAME.match(name)
    return (match["owner"], match["run"]) if match and _is_wanted((match["owner"], match["run"]), owner, run) \
        else None


def _is_wanted(named: tuple, owner: Optional[str], run: Optional[str]) -> bool:
    return (owner is None or named[0] == owner) and (run is None or named[1] == run)


def _wait(api: GcpApi, operations: list) -> None:
    """Zone operations until done (`wait` answers when done or after about two minutes), each error named."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    for zone, operation in operations:
        what = operation.get("targetLink") or operation["name"]
        while operation.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise ConfigurationError(f"GCP project {api.project}: {what} was still being deleted after "
                                         f"{WAIT_TIMEOUT_S // 60} minutes; run the command again later")
            operation = rest_request(api, "POST", f"{api.compute_url}/zones/{zone}/operations/{operation['name']}"
                                                  "/wait", timeout=150)
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            reasons = "; ".join(e.get("message", "") for e in errors)
            raise ConfigurationError(f"GCP project {api.project}: deleting {what} failed: "
                                     f"{one_line(reasons)}")


def _iam_request(api: GcpApi, method: str, path: str, params: Optional[dict] = None,
                 missing_ok: bool = False) -> dict:
    return rest_request(api, method, api.iam_url + path, params=params, missing_ok=missing_ok)


# What to do about a refusal, by HTTP status.
_ADVICE = {
    403: "the credentials need compute.instances/disks/firewalls/resourcePolicies list and delete "
         "(roles/compute.instanceAdmin.v1 "
         "and roles/compute.securityAdmin), iam.serviceAccounts.list and delete (roles/iam.serviceAccountAdmin) "
         "and tpu.nodes.list and delete (roles/tpu.admin), and the project the Compute and IAM APIs enabled",
    404: "check that the project exists: `project_id` of the gcp backend in $DSTACK_HOME/config.yml",
}


@contextmanager
def _refused(api: GcpApi, action: str) -> Iterator[None]:
    """A refusal from either API as one line that names the project and says what to do."""
    from google.auth.exceptions import GoogleAuthError
    from requests import RequestException

    try:
        yield
    except ApiRefusal as e:
        code, reason = e.code, e.reason
    except GoogleAuthError as e:
        raise ConfigurationError(f"GCP project {api.project}: {action} failed, the credentials were not accepted: "
                                 f"{one_line(str(e))} (renew them: `gcloud auth application-default login`)") \
            from None
    except RequestException as e:
        raise ConfigurationError(f"GCP project {api.project}: {action} failed, the API could not be reached: "
                                 f"{one_line(str(e))}") from None
    else:
        return
    advice = _ADVICE.get(code)
    raise ConfigurationError(f"GCP project {api.project}: {action} was refused ({code}): {one_line(reason)}"
                             + (f" ({advice})" if advice else "")) from None


def sweep_run(project_id: Optional[str], owner: Optional[str], run_name: str) -> None:
    """What an interrupted `up` created before Pulumi recorded it: found by the run's labels and names, in every
    zone (an offer's zones are tried in turn), and removed."""
    from configuration.owner import owner_id

    api = gcp_api(project_id)  # a module global, looked up now: tests point it at a recorded API
    remove_leftovers(api, find_leftovers(api, owner or owner_id(), run=run_name))


def sweep_instances(project_id: Optional[str], owner: str, run_name: str, names: Sequence[str]) -> None:
    """The instances of `run_name`'s stack named `names` that an interrupted `up` created before Pulumi recorded
    them (a cloud fleet's instance whose grow was killed), once the stack no longer has them."""
    api = gcp_api(project_id)
    with _refused(api, "listing dstack's resources"):
        found = [leftover for leftover in _labelled(api, "instance", owner, run_name) if leftover.id in set(names)]
    remove_leftovers(api, found)
