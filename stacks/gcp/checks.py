"""The GCP answers of `dstack config check` (stacks.checks): credentials and project, regions, the VPC network a run
will use, GPU quotas (per region, and the project's GPUS_ALL_REGIONS), through the Compute REST API, and whether the
credentials may give each VM its own service account (`self_delete`: stacks.gcp.iam)."""

from __future__ import annotations

from typing import List, Optional, Sequence

from stacks.checks import FAIL, OK, WARN, Check, regions_check
from stacks.gcp.api import SCOPES


def check_gcp(regions: Sequence[str], project_id: Optional[str] = None, vpc_name: Optional[str] = None,
              credentials=None, endpoint: Optional[str] = None, self_delete: bool = True) -> List[Check]:
    """`credentials` and `endpoint` are for tests (anonymous credentials, a local server that answers every API);
    by default the application default credentials and Google's endpoints."""
    from configuration.errors import ConfigurationError

    if credentials is None:
        from stacks.gcp.credentials import gcp_credentials_source

        try:
            source = gcp_credentials_source()
            import google.auth
            import google.auth.exceptions

            credentials, adc_project = google.auth.default(scopes=list(SCOPES))
        except ConfigurationError as e:
            return [Check("gcp", "credentials", FAIL, str(e))]
        except google.auth.exceptions.GoogleAuthError as e:
            return [Check("gcp", "credentials", FAIL, f"the credentials from {source} do not load: {e}")]
        project_id = project_id or adc_project
        checks = [Check("gcp", "credentials", OK, source)]
    else:
        checks = [Check("gcp", "credentials", OK, "given")]
    if not project_id:
        return checks + [Check("gcp", "project", FAIL, "no project: set `project_id` for the gcp backend in "
                                                       "$DSTACK_HOME/config.yml")]
    from requests import RequestException

    from stacks.gcp.api import ApiRefusal, GcpApi, list_items, one_line, rest_request

    api = GcpApi(project_id, credentials, compute_endpoint=endpoint)
    try:
        project = rest_request(api, "GET", api.compute_url)
        found = {r["name"]: r for r in list_items(api, f"{api.compute_url}/regions")}
    except ApiRefusal as e:
        return checks + [Check("gcp", "project", FAIL, f"project {project_id}: {e.reason}")]
    except RequestException as e:
        return checks + [Check("gcp", "project", FAIL, f"project {project_id}: the Compute API could not be reached: "
                                                       f"{one_line(str(e))}")]
    checks.append(Check("gcp", "project", OK, project_id))
    usable = [r for r in regions if r in found and found[r].get("status") == "UP"]
    checks.append(regions_check("gcp", regions, usable, "usable", {
        "unknown to this project": [r for r in regions if r not in found],
        "not UP": [r for r in regions if r in found and found[r].get("status") != "UP"]}))
    network = vpc_name or "default"
    try:
        if rest_request(api, "GET", f"{api.compute_url}/global/networks/{network}", missing_ok=True):
            checks.append(Check("gcp", "network", OK, f"VPC network {network!r}"))
        else:
            fix = "create it" if vpc_name else "set `vpc_name` (and `subnetwork`) for the gcp backend in " \
                                               "$DSTACK_HOME/config.yml"
            checks.append(Check("gcp", "network", FAIL, f"no VPC network {network!r} in {project_id}: {fix}"))
    except ApiRefusal as e:
        checks.append(Check("gcp", "network", WARN, f"could not read network {network!r}: {e.reason}"))
    checks.append(_quota_check(project, [found[r] for r in usable]))
    checks.append(_self_delete_check(project_id, credentials, endpoint, self_delete))
    return checks


def _self_delete_check(project_id: str, credentials, endpoint: Optional[str], self_delete: bool) -> Check:
    from stacks.gcp.api import CRM_URL, IAM_URL, GcpApi
    from stacks.gcp.iam import check_self_delete

    if not self_delete:
        return Check("gcp", "self-delete", OK, "off (`self_delete: false`): a VM that ends itself is stopped, its "
                                               "disk billed until the next dstack command")
    api = GcpApi(project_id, credentials, compute_endpoint=endpoint, iam_url=f"{endpoint}/v1" if endpoint else IAM_URL,
                 crm_url=f"{endpoint}/v1" if endpoint else CRM_URL)
    check = check_self_delete(api)
    if check.unknown:
        return Check("gcp", "self-delete", WARN, f"could not tell whether runs may give each VM its own service "
                                                 f"account: {check.unknown}")
    if check.missing:
        return Check("gcp", "self-delete", WARN, f"missing {', '.join(check.missing)}: runs fall back to "
                                                 "`self_delete: false` (a VM that ends itself is stopped, its disk "
                                                 "billed until the next dstack command); docs/clouds.md")
    return Check("gcp", "self-delete", OK, "each VM gets its own service account, allowed to delete only itself")


def _quota_check(project: dict, regions: List[dict]) -> Check:
    everywhere = next((q.get("limit", 0) for q in project.get("quotas") or [] if q.get("metric") == "GPUS_ALL_REGIONS"),
                      None)
    parts = []
    for region in regions:
        gpus = [f"{q['metric']} {int(q.get('limit', 0))}" for q in region.get("quotas") or []
                if "GPUS" in q.get("metric", "") and q.get("limit", 0) > 0]
        if gpus:
            parts.append(f"{region['name']} " + ", ".join(gpus))
    if everywhere is not None and everywhere <= 0:
        return Check("gcp", "gpu quota", WARN, "GPUS_ALL_REGIONS is 0: request an increase (IAM & Admin, Quotas) "
                                               "before a GPU run")
    if not parts:
        return Check("gcp", "gpu quota", WARN, "no GPU quota in any usable region: request an increase before a "
                                               "GPU run")
    head = f"GPUS_ALL_REGIONS {int(everywhere)}; " if everywhere is not None else ""
    return Check("gcp", "gpu quota", OK, head + "; ".join(parts))

