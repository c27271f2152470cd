"""The simulator a scenario holds: the simulated AWS and GCP (tests.cloudsim.aws, .gcp) behind one HTTP server on
127.0.0.1, which answers the engine stand-in of the dstack child processes (`/engine/...`: register, look up,
exist, delete) and GCP's REST API (tests.cloudsim.gcp_rest). Its state lives in this process: the test asserts on
it directly (resources metered from creation to deletion, refusals, the VMs' events, their timers).

Layout: world.py (the books, the VMs' events and timers), aws.py and gcp.py (each provider's rules, with their
sources), aws_imds.py (an AWS VM's instance metadata service, inside its namespace), gcp_rest.py (GCP's REST APIs, a
VM's metadata server), guest.py (a VM: a namespace host in a sandbox),
cloud_init.py (user data applied to it), engine.py (the engine stand-in in the dstack process), cli.py (the entry
that installs it: `CLOUDSIM_URL=... python -m tests.cloudsim.cli ARGS` runs dstack against a simulator),
zygote.py (the warm interpreter the scenarios' dstack processes are forked from), fixtures.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Set

from tests.cloudsim.aws import AwsCloud
from tests.cloudsim.gcp import GcpCloud
from tests.cloudsim.gcp_rest import USER_TOKEN, Compute, Handler, VmSide
from tests.cloudsim.world import Refusal, Resource, World
from tests.cloudsim.zygote import Forked
from tests.helpers import ROOT

GCP_PROJECT = "my-project"

# the AWS regions the scenarios use: il-central-1 is an opt-in region the simulated account has not enabled
AWS_REGIONS = ("us-east-1", "us-west-2", "eu-central-1", "il-central-1")


class CloudSim:
    def __init__(self, folder: Path, moto_endpoint: str, zygote: str):
        self.folder = folder
        self.zygote = zygote  # the socket of tests.cloudsim.zygote, which forks the `dstack` processes
        self.processes = 0
        self.cpu = 0.0  # CPU seconds the `dstack` processes run to their end used
        self.moto_endpoint = moto_endpoint
        self.world = World(folder)
        self.aws = AwsCloud(self.world, moto_endpoint)
        self.gcp = GcpCloud(self.world, GCP_PROJECT)
        self.compute = Compute(self.gcp)
        self.vm_side = VmSide(self.compute, folder / "tls")
        self.kill_after: Set[str] = set()  # resource kinds after whose creation the dstack process is killed
        self.calls: List[dict] = []  # every engine request, in order
        simulator = self

        class Server(Handler):
            compute = self.compute

            def _answer(self) -> None:
                if not self.path.startswith("/engine/"):
                    return super()._answer()
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                answer = simulator.engine(self.path[len("/engine/"):], request)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    # --- the engine API ------------------------------------------------------------------------------------------

    def engine(self, op: str, request: dict) -> dict:
        self.calls.append({"op": op, **{k: v for k, v in request.items() if k != "inputs"}})
        try:
            if op == "register":
                cloud = self.aws if request["type"].startswith("aws:") else self.gcp
                resource = cloud.create(request)
                if resource.kind in self.kill_after:  # the dstack process dies before it records the answer
                    os.kill(int(request["pid"]), signal.SIGKILL)
                return {"id": resource.id, "outputs": resource.outputs}
            if op == "call":
                cloud = self.aws if request["token"].startswith("aws:") else self.gcp
                return {"result": cloud.call(request["token"], request["args"], request["provider"])}
            if op == "exists":
                self.aws.sync()
                return {"gone": [i for i in request["ids"] if self.world.find(i) is None]}
            if op == "delete":
                resource = self.world.find(request["id"])
                if resource is not None:
                    (self.aws if resource.backend == "aws" else self.gcp).delete(resource)
                return {}
        except Refusal as refusal:
            return {"error": str(refusal)}
        return {"error": f"cloudsim: no engine operation {op}"}

    # --- running dstack --------------------------------------------------------------------------------------------

    def env(self, home: Path, patches: Optional[Dict[str, object]] = None,
            extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The environment of a `dstack` child process: its $DSTACK_HOME, the simulator, moto, GCP credentials."""
        # an access token good for long: google-auth's authorized_user credentials refresh only at Google's address
        credentials = {"type": "authorized_user", "client_id": "cloudsim", "client_secret": "cloudsim",
                       "refresh_token": "cloudsim", "token": USER_TOKEN, "expiry": "2099-01-01T00:00:00Z"}
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_"))}
        environment.update({
            "DSTACK_HOME": str(home), "CLOUDSIM_URL": self.url, "CLOUDSIM_PATCHES": json.dumps(patches or {}),
            "AWS_ENDPOINT_URL": self.moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.folder / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.folder / "no-aws-credentials"),
            "GOOGLE_CREDENTIALS": json.dumps(credentials), "CLOUDSDK_CONFIG": str(self.folder / "no-gcloud"),
            "COLUMNS": "200", "NO_COLOR": "1", **(extra or {})})
        return environment

    def dstack(self, *args: str, home: Path, timeout: float = 120, patches: Optional[dict] = None,
               env: Optional[Dict[str, str]] = None, entry: Optional[str] = None) -> subprocess.CompletedProcess:
        """`dstack ARGS` in a child process (tests.cloudsim.zygote), to its end, killed after `timeout` seconds
        (subprocess.TimeoutExpired); `env`: variables a user would set (DSTACK_HOST_TIMEOUT); `entry`: another
        module than tests.cloudsim.cli whose `main` runs it (tests.cloudsim.legacy_fleet)."""
        out, err = self._outputs()
        process = Forked(self.zygote, args, self.env(home, patches, env), str(ROOT), str(out), str(err),
                         entry=entry)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
            raise
        self.cpu += process.cpu
        return subprocess.CompletedProcess(list(args), code, out.read_text(), err.read_text())

    def start(self, *args: str, home: Path, patches: Optional[dict] = None,
              env: Optional[Dict[str, str]] = None) -> Forked:
        """`dstack ARGS` in a child process of its own session (a test may send it Ctrl-C); its output (stdout and
        stderr together) is the file `stdout`."""
        out, _ = self._outputs()
        out.touch()
        process = Forked(self.zygote, args, self.env(home, patches, env), str(ROOT), str(out), str(out))
        process.stdout = open(out)
        return process

    def _outputs(self):
        self.processes += 1
        return (self.folder / f"dstack-{self.processes}.out"), (self.folder / f"dstack-{self.processes}.err")

    @staticmethod
    def write_config(home: Path, aws_regions=AWS_REGIONS, gcp_regions=("us-central1",), gcp: bool = True,
                     aws: bool = True, **backend_options) -> None:
        """$DSTACK_HOME/config.yml with the simulated clouds (`gcp_self_delete=False` and the like go to a backend
        by their prefix). The regions limit offers (as the user's would): those the scenarios run in."""
        lines = ["backends:"]
        if aws:
            lines += ["  - type: aws", f"    regions: [{', '.join(aws_regions)}]"]
            lines += [f"    {k[4:]}: {json.dumps(v)}" for k, v in backend_options.items() if k.startswith("aws_")]
        if gcp:
            lines += ["  - type: gcp", f"    project_id: {GCP_PROJECT}", f"    regions: [{', '.join(gcp_regions)}]"]
            lines += [f"    {k[4:]}: {json.dumps(v)}" for k, v in backend_options.items() if k.startswith("gcp_")]
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.yml").write_text("\n".join(lines) + "\n")

    # --- what a test asserts on ------------------------------------------------------------------------------------

    def live(self, kind: Optional[str] = None, backend: Optional[str] = None) -> List[Resource]:
        """What the clouds hold now (billed: a stopped VM too); AWS as moto has it after a sweep."""
        self.aws.sync()
        return self.world.live(kind, backend)

    def ever(self, kind: Optional[str] = None, backend: Optional[str] = None) -> List[Resource]:
        """Everything ever created (live or not)."""
        return self.world.select(kind, backend)

    def refusals(self) -> List[str]:
        return [text for _, _, _, text in self.world.refusals]

    def close(self) -> None:
        self.world.close()
        self.aws.imds.close()
        self.vm_side.close()
        self.server.shutdown()
        self.server.server_close()
