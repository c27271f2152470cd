"""How dstack reaches GCP's APIs outside Pulumi (the leftover sweep, the self-delete account and its permissions, an
instance's state): the credentials and project the Pulumi provider would use, and the Compute, IAM, Resource Manager
and Cloud TPU REST APIs through google-auth's session (google-cloud-compute's generated client costs seconds of CPU to
import, for a few JSON requests). Imported only when one of those runs."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

from configuration.errors import ConfigurationError

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
COMPUTE_ENDPOINT = "https://compute.googleapis.com"
IAM_URL = "https://iam.googleapis.com/v1"
CRM_URL = "https://cloudresourcemanager.googleapis.com/v1"
TPU_URL = "https://tpu.googleapis.com/v2"
# The Pulumi GCP provider's project variables, in its order; application default credentials may name one too.
PROJECT_VARIABLES = ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")


@dataclass(frozen=True)
class GcpApi:
    """Where requests go: the project, the credentials and the APIs' addresses (a test points them at a local
    server)."""

    project: str
    credentials: object
    compute_endpoint: Optional[str] = None  # None: compute.googleapis.com
    iam_url: str = IAM_URL
    crm_url: str = CRM_URL
    tpu_url: str = TPU_URL  # the Cloud TPU API: TPU VM nodes (stacks.gcp.tpu), reached over REST like IAM

    @property
    def compute_url(self) -> str:
        """The Compute API's address of the project's resources (`/zones/...`, `/global/...` follow)."""
        return f"{self.compute_endpoint or COMPUTE_ENDPOINT}/compute/v1/projects/{self.project}"

    def session(self):
        from google.auth.transport.requests import AuthorizedSession

        return AuthorizedSession(self.credentials)


def gcp_api(project_id: Optional[str]) -> GcpApi:
    """The credentials the Pulumi provider uses, and the project: the backend's `project_id`, else the provider's
    variables, else the one the credentials name."""
    from google.auth.exceptions import DefaultCredentialsError

    from stacks.gcp.credentials import gcp_credentials_source

    gcp_credentials_source()  # names what is missing, before google.auth would probe for a metadata server
    try:
        credentials, default = _load_credentials()
    except (DefaultCredentialsError, ValueError) as e:
        raise ConfigurationError(f"GCP credentials could not be read: {one_line(str(e))}") from None
    project = project_id or next((os.environ[v] for v in PROJECT_VARIABLES if os.environ.get(v)), None) or default
    if not project:
        raise ConfigurationError("no GCP project is known: set `project_id` for the gcp backend in "
                                 "$DSTACK_HOME/config.yml")
    return GcpApi(project, credentials)


def _load_credentials():
    """(credentials, the project they name), found as the Pulumi provider finds them: its variables (a key file's
    path or its JSON), then application default credentials."""
    import google.auth

    from stacks.gcp.credentials import GCP_PROVIDER_CREDENTIAL_VARIABLES

    with warnings.catch_warnings():
        # google.auth warns that its generic loaders trust their input: here that is the user's own configuration.
        warnings.simplefilter("ignore", DeprecationWarning)
        for variable in GCP_PROVIDER_CREDENTIAL_VARIABLES:
            value = os.environ.get(variable, "")
            if value.lstrip().startswith("{"):
                return google.auth.load_credentials_from_dict(json.loads(value), scopes=SCOPES)
            if value:
                return google.auth.load_credentials_from_file(value, scopes=SCOPES)
        return google.auth.default(scopes=SCOPES)


class ApiRefusal(Exception):
    """A REST API's error answer: its HTTP status, its message and (from `google.rpc.ErrorInfo`) its reason."""

    def __init__(self, code: int, reason: str, detail: str = "", status: str = ""):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = detail  # e.g. SERVICE_DISABLED, IAM_PERMISSION_DENIED
        self.status = status  # e.g. PERMISSION_DENIED, ALREADY_EXISTS

    @property
    def text(self) -> str:
        """As the Pulumi provider words an API error, for stacks.errors.classify."""
        return f"Error {self.code}: {self.reason}, {self.status or self.detail}".rstrip(", ")


def rest_request(api: GcpApi, method: str, url: str, params: Optional[dict] = None, body: Optional[dict] = None,
                 missing_ok: bool = False, timeout: float = 60) -> dict:
    """A JSON request to one of the REST APIs; `missing_ok`: a 404 answers {}."""
    response = api.session().request(method, url, params=params, json=body, timeout=timeout)
    if response.status_code == 404 and missing_ok:
        return {}
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            reason, status = error["message"], str(error.get("status") or "")
            detail = next((d.get("reason", "") for d in error.get("details") or [] if isinstance(d, dict)
                           and d.get("reason")), "")
        except (ValueError, KeyError, TypeError, AttributeError):
            reason, status, detail = response.text[:200], "", ""
        raise ApiRefusal(response.status_code, reason, detail, status)
    return response.json() if response.content else {}


def list_items(api: GcpApi, url: str, params: Optional[dict] = None) -> Iterator[dict]:
    """A Compute API list's items, page by page; an `aggregatedList`'s come as {"scope": ..., **item} where the
    scope is `zones/ZONE` or `regions/REGION` and `item` holds the scope's list under its resource's name."""
    token = None
    while True:
        page = rest_request(api, "GET", url, params={**(params or {}), **({"pageToken": token} if token else {})})
        items = page.get("items") or []
        if isinstance(items, dict):  # aggregatedList: by scope
            for scope, listed in items.items():
                yield {"scope": scope, **listed}
        else:
            yield from items
        token = page.get("nextPageToken")
        if not token:
            return


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]
