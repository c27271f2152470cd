"""The simulated EC2 instance metadata service (IMDS) of each AWS VM, at 169.254.169.254 from inside the VM alone.

Network safety: the link-local address is added to the loopback of the VM's own network namespace, and the listener
is opened inside that namespace (a thread of the simulator joins it with setns(2) just to open the socket): nothing
is added to this machine's namespace, and no packet for 169.254.169.254 leaves the VM's namespace (this machine's
own instance metadata, where it has one, is never reached or shadowed).

What it answers (EC2 user guide, "Use the Instance Metadata Service to access instance metadata" and "Spot Instance
interruption notices"): IMDSv2's session token (PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds,
1 to 21600), required where the instance's metadata options say `httpTokens: required` (401 without it or with a
token it did not issue); `meta-data/instance-id`, `meta-data/instance-life-cycle`, and `meta-data/spot/instance-action`:
404 until EC2 sends the interruption notice, then `{"action": ..., "time": ...}`.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict

from tests.cloudsim.world import Resource

IMDS_ADDRESS = "169.254.169.254"
CLONE_NEWNET = 0x40000000
MAX_TOKEN_TTL_S = 21600


def _in_namespace(ns: str, make):
    """`make()` run in a thread that has joined the network namespace `ns` (ip netns's name): a socket it opens
    belongs to that namespace. The thread ends there; no other thread's namespace changes."""
    result: dict = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            result["value"] = make()
        except BaseException as e:  # noqa: B036 - handed to the caller's thread
            result["error"] = e
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"imds-{ns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class Imds:
    """The IMDS servers of the simulated AWS's VMs, one per instance."""

    def __init__(self):
        self.servers: Dict[str, ThreadingHTTPServer] = {}

    def serve(self, instance: Resource, vm) -> None:
        subprocess.run(["ip", "netns", "exec", vm.ns, "ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"],
                       check=True, capture_output=True)
        handler = type("InstanceImds", (ImdsHandler,), {"instance": instance, "tokens": {}})
        server = _in_namespace(vm.ns, lambda: ThreadingHTTPServer((IMDS_ADDRESS, 80), handler))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        self.servers[instance.id] = server

    def unserve(self, instance: Resource) -> None:
        server = self.servers.pop(instance.id, None)
        if server is not None:
            server.shutdown()
            server.server_close()

    def close(self) -> None:
        for instance_id in list(self.servers):
            server = self.servers.pop(instance_id)
            server.shutdown()
            server.server_close()


class ImdsHandler(BaseHTTPRequestHandler):
    instance: Resource
    tokens: Dict[str, float]  # token -> when it expires

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            return self._send(404, "Not Found")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TOKEN_TTL_S:
            return self._send(400, "Bad Request")
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + int(ttl)
        self._send(200, token)

    def do_GET(self) -> None:
        instance = self.instance
        token = self.headers.get("X-aws-ec2-metadata-token")
        required = ((instance.inputs.get("metadataOptions") or {}).get("httpTokens") == "required")
        if (token is not None and self.tokens.get(token, 0) < time.time()) or (token is None and required):
            return self._send(401, "Unauthorized")
        key = self.path.removeprefix("/latest/meta-data/")
        notice = instance.extra.get("spot_notice")
        if key == "instance-id":
            return self._send(200, instance.id)
        if key == "instance-life-cycle":
            return self._send(200, "spot" if instance.extra.get("spot") else "on-demand")
        if key == "spot/instance-action" and notice is not None:
            return self._send(200, json.dumps(notice))
        self._send(404, "Not Found")

    def _send(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass
