"""The simulated GCP's REST side: what dstack's own GCP calls reach (google-auth's session,
pointed here by tests.cloudsim.cli), and what a VM reaches from inside (its metadata server and the Compute API, at
the addresses the VM's /etc/hosts gives `metadata.google.internal` and `compute.googleapis.com`: this machine's end of
the VM's link, where the simulator listens for that VM alone, over TLS with the simulator's own CA for the API).

The answers are the APIs' JSON (Compute API v1 and IAM API v1 references), built from the simulator's resources, so
a leftover is listed as the cloud would list it and a sweep's delete removes it here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from tests.cloudsim.gcp import TOKEN_PREFIX, GcpCloud
from tests.cloudsim.world import Refusal, Resource

API = "https://www.googleapis.com/compute/v1"
USER_TOKEN = "cloudsim-user-token"
COMPUTE = re.compile(r"/compute/v1/projects/(?P<project>[^/]+)/(?P<rest>.+)")
TPU_NODES = re.compile(r"/v2/projects/(?P<project>[^/]+)/locations/(?P<zone>[^/]+)/nodes(?:/(?P<name>[^/]+))?")
LIST_PERMISSIONS = {"instances": "compute.instances.list", "disks": "compute.disks.list",
                    "firewalls": "compute.firewalls.list", "resourcePolicies": "compute.resourcePolicies.list"}


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason

    def body(self) -> dict:
        status = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ALREADY_EXISTS"}.get(self.code, "UNKNOWN")
        return {"error": {"code": self.code, "message": self.message, "status": status,
                          "errors": [{"message": self.message, "domain": "global", "reason": self.reason}]}}


def _matches(filter_text: str, fields: dict) -> bool:
    """The Compute API's filter, as far as dstack writes it: `(key = "value")` terms joined by AND or OR."""
    if not filter_text:
        return True
    joiner = " OR " if " OR " in filter_text else " AND "
    results = []
    for term in filter_text.split(joiner):
        match = re.fullmatch(r'\(?\s*([\w.-]+)\s*=\s*"([^"]*)"\s*\)?', term.strip())
        if not match:
            raise ApiError(400, f"Invalid list filter expression '{filter_text}'.", "invalid")
        results.append(str(fields.get(match[1], "")) == match[2])
    return any(results) if joiner == " OR " else all(results)


class Compute:
    """The REST API of the simulated GCP for dstack's calls (token USER_TOKEN), and the VM side's delete."""

    def __init__(self, cloud: GcpCloud):
        self.cloud = cloud
        self.operations = 0
        self.requests: List[tuple] = []  # (time, method, path) of every request

    def _require(self, permission: str, target: str) -> None:
        if permission in self.cloud.denied:
            raise ApiError(403, f"Required '{permission}' permission for '{target}'", "forbidden")

    def _operation(self, target: Resource, zone: Optional[str]) -> dict:
        self.operations += 1
        operation = {"kind": "compute#operation", "id": str(self.operations), "name": f"operation-{self.operations}",
                     "operationType": "delete", "status": "DONE", "progress": 100,
                     "targetLink": f"{API}/{target.id}", "selfLink": f"{API}/projects/{self.cloud.project}/"
                                                                   f"operations/operation-{self.operations}"}
        if zone:
            operation["zone"] = f"{API}/projects/{self.cloud.project}/zones/{zone}"
        return operation

    def _instance(self, r: Resource) -> dict:
        return {"kind": "compute#instance", "id": r.extra.get("instance_id"), "name": r.outputs.get("name"),
                "status": "TERMINATED" if r.stopped else "RUNNING", "labels": r.labels,
                "zone": f"{API}/projects/{self.cloud.project}/zones/{r.zone}", "selfLink": f"{API}/{r.id}",
                "machineType": f"{API}/projects/{self.cloud.project}/zones/{r.zone}/machineTypes/"
                               f"{r.inputs.get('machineType')}",
                "networkInterfaces": [{"networkIP": i.get("networkIp"), "name": i.get("name")}
                                      for i in r.outputs.get("networkInterfaces", [])]}

    def _disk(self, r: Resource) -> dict:
        return {"kind": "compute#disk", "name": r.id.rsplit("/", 1)[-1], "labels": r.labels,
                "zone": f"{API}/projects/{self.cloud.project}/zones/{r.zone}", "selfLink": f"{API}/{r.id}",
                "users": [f"{API}/{user}" for user in r.extra.get("users", [])], "type": r.extra.get("disk_type")}

    def handle(self, method: str, path: str, query: dict, body: dict, token: str) -> Tuple[int, dict]:
        self.requests.append((time.time(), method, path))
        try:
            if path == "/token":
                return 200, {"access_token": USER_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
            if token.startswith(TOKEN_PREFIX):
                return self._vm_request(method, path, token)
            if token != USER_TOKEN:
                raise ApiError(401, "Request had invalid authentication credentials.", "authError")
            match = COMPUTE.fullmatch(path)
            if match:
                return 200, self._compute(method, match["rest"], query)
            if re.fullmatch(r"/v1/projects/[^/]+:testIamPermissions", path):
                wanted = body.get("permissions", [])
                return 200, {"permissions": [p for p in wanted if p not in self.cloud.denied]}
            if path.startswith("/v1/projects/") and "/serviceAccounts" in path:
                return self._iam(method, path, query, body)
            nodes = TPU_NODES.fullmatch(path)
            if nodes:
                return 200, self._tpu(method, nodes)
            raise ApiError(404, f"cloudsim: {method} {path} is not simulated", "notFound")
        except ApiError as e:
            return e.code, e.body()
        except Refusal as e:
            code = int(m[1]) if (m := re.search(r"Error (\d{3})", str(e))) else 400
            return code, ApiError(code, str(e), "forbidden" if code == 403 else "invalid").body()

    def _compute(self, method: str, rest: str, query: dict) -> dict:
        cloud, world = self.cloud, self.cloud.world
        aggregated = re.fullmatch(r"aggregated/(instances|disks|resourcePolicies)", rest)
        if method == "GET" and aggregated:
            kind = aggregated[1]
            self._require(LIST_PERMISSIONS[kind], f"projects/{cloud.project}")
            items: dict = {}
            for r in world.live(backend="gcp"):
                if kind == "instances" and r.kind == "Instance":
                    entry, scope = self._instance(r), f"zones/{r.zone}"
                elif kind == "disks" and r.kind == "Disk":
                    entry, scope = self._disk(r), f"zones/{r.zone}"
                elif kind == "resourcePolicies" and r.kind == "ResourcePolicy":
                    entry = {"name": r.outputs["name"], "description": r.inputs.get("description", ""),
                             "selfLink": f"{API}/{r.id}", "region": f"{API}/projects/{cloud.project}/regions/"
                                                                    f"{r.region}"}
                    scope = f"regions/{r.region}"
                else:
                    continue
                fields = {"name": entry["name"], **{f"labels.{k}": v for k, v in (entry.get("labels") or {}).items()}}
                if _matches(query.get("filter", ""), fields):
                    items.setdefault(scope, {kind: []})[kind].append(entry)
            return {"kind": f"compute#{kind}AggregatedList", "items": items}
        if method == "GET" and rest == "global/firewalls":
            self._require("compute.firewalls.list", f"projects/{cloud.project}")
            found = [{"kind": "compute#firewall", "name": r.outputs["name"], "selfLink": f"{API}/{r.id}",
                      "description": r.inputs.get("description", "")} for r in world.live("Firewall", "gcp")]
            return {"kind": "compute#firewallList",
                    "items": [f for f in found if _matches(query.get("filter", ""), {"name": f["name"]})]}
        listed = re.fullmatch(r"zones/([^/]+)/operations", rest)
        if method == "GET" and listed:  # a zone's operations: the preemptions (Compute Engine, "Detect if a VM was
            # preempted": operationType compute.instances.preempted, its targetId the instance's id)
            self._require("compute.zoneOperations.list", f"projects/{cloud.project}/zones/{listed[1]}")
            items = [{"kind": "compute#operation", "id": f"{index}", "name": f"systemevent-{index}",
                      "operationType": "compute.instances.preempted", "targetId": target, "status": "DONE",
                      "insertTime": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime(at)),
                      "zone": f"{API}/projects/{cloud.project}/zones/{zone}"}
                     for index, (zone, target, at) in enumerate(cloud.preemptions) if zone == listed[1]]
            return {"kind": "compute#operationList",
                    "items": [i for i in items if _matches(query.get("filter", ""),
                                                           {"operationType": i["operationType"]})]}
        wait = re.fullmatch(r"zones/([^/]+)/operations/([^/]+)(/wait)?", rest)
        if wait:
            return {"kind": "compute#operation", "name": wait[2], "status": "DONE", "progress": 100,
                    "zone": f"{API}/projects/{cloud.project}/zones/{wait[1]}"}
        target = world.find(f"projects/{cloud.project}/{rest}")
        if target is None:
            raise ApiError(404, f"The resource 'projects/{cloud.project}/{rest}' was not found", "notFound")
        if method == "GET" and target.kind == "Instance":
            self._require("compute.instances.get", target.id)
            return self._instance(target)
        if method == "DELETE":
            cloud.delete(target, by="sweep")
            return self._operation(target, target.zone)
        raise ApiError(404, f"cloudsim: {method} compute/v1/.../{rest} is not simulated", "notFound")

    def _tpu(self, method: str, match) -> dict:
        """Cloud TPU API v2: `nodes.list` in a zone or every zone (`-`), and `nodes.delete` (its operation, done)."""
        cloud, project = self.cloud, match["project"]
        if method == "GET" and not match["name"]:
            self._require("tpu.nodes.list", f"projects/{project}/locations/{match['zone']}")
            return {"nodes": [{"name": r.id, "acceleratorType": r.inputs.get("acceleratorType"), "state": "READY",
                               "labels": r.labels} for r in cloud.world.live("V2Vm", "gcp")
                              if match["zone"] in ("-", r.zone)]}
        path = f"projects/{project}/locations/{match['zone']}/nodes/{match['name']}"
        target = cloud.world.find(path)
        if target is None:
            raise ApiError(404, f"Resource '{path}' was not found", "notFound")
        if method == "DELETE":
            cloud.delete(target, by="sweep")
            return {"name": f"projects/{project}/locations/{target.zone}/operations/operation-{target.name}",
                    "done": True}
        raise ApiError(404, f"cloudsim: {method} {path} is not simulated", "notFound")

    def _iam(self, method: str, path: str, query: dict, body: dict) -> Tuple[int, dict]:
        cloud = self.cloud
        project = path.split("/")[3].split(":")[0]
        one = re.fullmatch(r"/v1/projects/[^/]+/serviceAccounts/([^/:]+)", path)
        if method == "GET" and not one:
            self._require("iam.serviceAccounts.list", f"projects/{project}")
            accounts = [a.outputs for a in cloud.world.live("Account", "gcp")
                        if cloud.account(a.outputs["email"]) is not None]
            return 200, {"accounts": [{"name": a["name"], "email": a["email"], "displayName": a["displayName"],
                                       "description": a["description"], "uniqueId": a["uniqueId"],
                                       "projectId": project} for a in accounts]}
        if method == "POST" and not one:
            made = cloud.create_account(project, body.get("accountId", ""),
                                        (body.get("serviceAccount") or {}).get("displayName", ""),
                                        (body.get("serviceAccount") or {}).get("description", ""))
            out = made.outputs
            return 200, {"name": out["name"], "email": out["email"], "displayName": out["displayName"],
                         "uniqueId": out["uniqueId"], "projectId": project}
        if one:
            email = unquote(one[1])
            account = cloud.account(email)
            if account is None:
                raise ApiError(404, "Unknown service account", "notFound")
            if method == "GET":
                self._require("iam.serviceAccounts.get", email)
                out = account.outputs
                return 200, {"name": out["name"], "email": email, "displayName": out["displayName"],
                             "uniqueId": out["uniqueId"], "projectId": project}
            if method == "DELETE":
                self._require("iam.serviceAccounts.delete", email)
                cloud.world.delete(account, "sweep")
                return 200, {}
        raise ApiError(404, f"cloudsim: {method} {path} is not simulated", "notFound")

    def _vm_request(self, method: str, path: str, token: str) -> Tuple[int, dict]:
        """A VM deleting itself (stacks.power_off): allowed where its account holds a deleting role there."""
        match = COMPUTE.fullmatch(path)
        target = self.cloud.world.find(f"projects/{match['project']}/{match['rest']}") if match else None
        if method != "DELETE" or target is None or target.kind != "Instance":
            raise ApiError(404, f"The resource '{path}' was not found", "notFound")
        if not self.cloud.may_delete(token, target):
            raise ApiError(403, f"Required 'compute.instances.delete' permission for '{target.id}'", "forbidden")
        operation = self._operation(target, target.zone)
        threading.Thread(target=self.cloud.delete_instance, args=(target, "guest"), daemon=True).start()
        return 200, operation


class Handler(BaseHTTPRequestHandler):
    """Routes to Compute (the server's `compute`); a VM's listener also answers its metadata."""

    compute: Compute
    instance: Optional[Resource] = None

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        headers = {}
        if self.instance is not None and url.path.startswith("/computeMetadata/v1/"):
            status, body = self._metadata(url.path[len("/computeMetadata/v1/"):], query, headers)
        else:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            try:
                payload = json.loads(raw) if raw and raw.lstrip()[:1] in (b"{", b"[") else {}
            except ValueError:
                payload = {}
            status, body = self.compute.handle(self.command, url.path, query, payload, token)
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = _answer

    def _metadata(self, key: str, query: dict, headers: dict):
        """GCP's metadata server for this VM (Compute Engine, "About VM metadata"); `instance/preempted` ("Detect if
        a VM was preempted") also as a wait for its change (`wait_for_change=true`, from `last_etag` when given, up
        to `timeout_sec`), its ETag in `headers`."""
        if self.headers.get("Metadata-Flavor") != "Google":
            return 403, "Missing Metadata-Flavor:Google header."
        instance = self.instance
        if key == "instance/preempted":
            def value() -> str:
                return "TRUE" if instance.extra.get("preempted") else "FALSE"

            first = value()
            if query.get("wait_for_change") == "true":
                deadline = time.monotonic() + min(float(query.get("timeout_sec") or 300), 300)
                known = query.get("last_etag") or _etag(first)
                while _etag(value()) == known and time.monotonic() < deadline and instance.live:
                    time.sleep(0.05)
            headers["ETag"] = _etag(value())
            return 200, value()
        email = (instance.inputs.get("serviceAccount") or {}).get("email")
        values = {"project/project-id": instance.extra.get("project"), "instance/name": instance.outputs.get("name"),
                  "instance/zone": f"projects/123456789012/zones/{instance.zone}"}
        if key == "instance/service-accounts/default/token":
            if not email:
                return 404, "No service account on this instance."
            return 200, {"access_token": f"{TOKEN_PREFIX}{instance.id}", "expires_in": 3599, "token_type": "Bearer"}
        if key in values:
            return 200, str(values[key])
        return 404, f"{key} not found"

    def log_message(self, *args) -> None:
        pass


def _etag(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def make_ca(folder: Path) -> Tuple[str, Path, Path]:
    """A CA of the simulator's own and a certificate it signs for the names a VM reaches: (CA PEM, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudsim CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    names = ["compute.googleapis.com", "metadata.google.internal"]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_path, key_path


class VmSide:
    """Per GCP VM: a metadata server (port 80) and the Compute API (443, TLS) on the VM's link."""

    def __init__(self, compute: Compute, folder: Path):
        self.compute = compute
        self.ca_pem, self.cert, self.key = make_ca(folder)
        self.servers: dict = {}
        compute.cloud.vm_side = self

    def hosts_lines_for(self, instance: Resource):
        return ["{host_side} metadata.google.internal compute.googleapis.com"], self.ca_pem

    def serve(self, instance: Resource, vm) -> None:
        handler = type("VmHandler", (Handler,), {"compute": self.compute, "instance": instance})
        servers = []
        for port, tls in ((80, False), (443, True)):
            server = ThreadingHTTPServer((vm.host_side, port), handler)
            if tls:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(self.cert, self.key)
                server.socket = context.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
            servers.append(server)
        self.servers[instance.id] = servers

    def unserve(self, instance: Resource) -> None:
        for server in self.servers.pop(instance.id, []):
            threading.Thread(target=lambda s=server: (s.shutdown(), s.server_close()), daemon=True).start()

    def close(self) -> None:
        for servers in list(self.servers.values()):
            for server in servers:
                server.shutdown()
                server.server_close()
        self.servers.clear()

