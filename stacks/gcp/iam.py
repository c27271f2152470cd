"""A run's service account (the gcp backend's `self_delete`), made outside its stack, and the permissions that takes.

The account is made once per run, before the first `up`, and read back before the VMs name it: IAM is eventually
consistent, and an account inside the stack was deleted and made again by every zone a run tried ("already exists",
"does not exist"). The run's teardown sweep removes it (stacks.gcp.leftovers finds it by its display name).

Before the first `up`, the credentials' permissions are tested (Resource Manager's `testIamPermissions` on the
project), and the IAM API is asked whether it is enabled; what is missing is named, and the run falls back to
`self_delete: false` (docs/clouds.md says why) rather than failing after its GPU VM is created and billed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from stacks.errors import CONFIGURATION, CREDENTIALS, TRANSIENT, StackFailure, classify
from stacks.gcp.api import ApiRefusal, GcpApi, one_line, rest_request
from stacks.gcp.program import service_account_id

# What giving each VM its own account takes: make it, read it back, let the VM run as it, bind the VM's delete
# permission to it, and delete it with the run.
SELF_DELETE_PERMISSIONS = ("iam.serviceAccounts.create", "iam.serviceAccounts.get", "iam.serviceAccounts.delete",
                           "iam.serviceAccounts.actAs", "compute.instances.setIamPolicy")
IAM_API = "the IAM API (iam.googleapis.com)"
READBACK_TIMEOUT_S = 120.0
READBACK_POLL_S = 2.0


@dataclass(frozen=True)
class SelfDeleteCheck:
    missing: Tuple[str, ...]  # what the credentials lack; empty: nothing
    unknown: Optional[str] = None  # why it could not be told (the test itself was refused)


def check_self_delete(api: GcpApi) -> SelfDeleteCheck:
    try:
        with _reached(api, "testing the permissions"):
            granted = rest_request(api, "POST", f"{api.crm_url}/projects/{api.project}:testIamPermissions",
                                   body={"permissions": list(SELF_DELETE_PERMISSIONS)}).get("permissions") or []
    except StackFailure as e:
        return SelfDeleteCheck((), e.message)
    missing = tuple(p for p in SELF_DELETE_PERMISSIONS if p not in granted)
    return SelfDeleteCheck(((IAM_API,) if _iam_disabled(api) else ()) + missing)


def _iam_disabled(api: GcpApi) -> bool:
    """Whether the IAM API says it is not enabled in the project (another refusal, or none, says nothing here)."""
    try:
        with _reached(api, "reading the IAM API"):
            try:
                rest_request(api, "GET", f"{api.iam_url}/projects/{api.project}/serviceAccounts",
                             params={"pageSize": 1})
            except ApiRefusal as e:
                return e.detail == "SERVICE_DISABLED" or "has not been used" in e.reason or "is disabled" in e.reason
    except StackFailure:
        return False
    return False


def fallback_warning(project: str, missing: Tuple[str, ...]) -> str:
    return (f"GCP project {project}: the credentials lack {', '.join(missing)}, which `self_delete` needs (each VM "
            "runs as its own service account, allowed to delete only itself): this run falls back to "
            "`self_delete: false`, so a VM that ends itself is stopped, its disk billed until the next dstack command "
            "tears the run down. Grant roles/iam.serviceAccountAdmin, roles/iam.serviceAccountUser and "
            "roles/compute.instanceAdmin.v1, or set `self_delete: false` for the gcp backend in "
            "$DSTACK_HOME/config.yml to silence this")


def run_account(api: GcpApi, owner: str, name: str, readback_timeout_s: float = READBACK_TIMEOUT_S) -> str:
    """The email of `name`'s service account (a run's, or a fleet's stack's), made unless it exists and read back
    before the VMs name it. A refusal is a classified StackFailure; an account that does not read back in time is a
    transient one (the next try waits again)."""
    account_id = service_account_id(owner, name)
    email = f"{account_id}@{api.project}.iam.gserviceaccount.com"
    accounts = f"{api.iam_url}/projects/{api.project}/serviceAccounts"
    with _reached(api, f"making the run's service account {email}"):
        if rest_request(api, "GET", f"{accounts}/{email}", missing_ok=True):
            return email
        try:
            rest_request(api, "POST", accounts, body={"accountId": account_id, "serviceAccount": {
                "displayName": f"dstack-{owner}-{name}",
                "description": f"dstack run {name} (owner {owner}): may delete its own VMs and nothing else"}})
        except ApiRefusal as e:
            if e.code != 409:  # already exists: made by an earlier try, and maybe not readable yet
                raise
        deadline = time.monotonic() + readback_timeout_s
        while not rest_request(api, "GET", f"{accounts}/{email}", missing_ok=True):
            if time.monotonic() > deadline:
                raise StackFailure(TRANSIENT, "attempt", f"service account {email} was made but does not read back "
                                                         f"after {readback_timeout_s:g}s")
            time.sleep(READBACK_POLL_S)
    return email


@contextmanager
def _reached(api: GcpApi, action: str) -> Iterator[None]:
    """An API's refusal as a classified StackFailure; credentials that do not refresh, or an API out of reach, as
    one line that names the project and the action."""
    from google.auth.exceptions import GoogleAuthError
    from requests import RequestException

    try:
        yield
    except ApiRefusal as e:
        raise classify(e.text) from None
    except GoogleAuthError as e:
        raise StackFailure(CREDENTIALS, "cloud", f"GCP project {api.project}: {action}: the credentials were not "
                                                 f"accepted: {one_line(str(e))}") from None
    except RequestException as e:
        raise StackFailure(CONFIGURATION, "cloud", f"GCP project {api.project}: {action}: the API could not be "
                                                   f"reached: {one_line(str(e))}") from None
