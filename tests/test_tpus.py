"""GCP TPU slices (issue 20): offers under dstack's names and every form dstack's parser accepts, through the CLI;
the run's stack (`gcp.tpu.V2Vm`) in `apply --dry-run --json` and under Pulumi's mocks; a multi-host slice as
`nodes: N`, one job per host; what a TPU offer does not take (network volumes, reservations, cloud fleets)."""

import dataclasses
import json
import subprocess
import sys

import pytest

from offers.tpus import tpu_slice
from stacks.gcp.tpu import runtime_version, scheduling_config, startup_script, tpu_program
from stacks.spec import StackSpec, generate_host_key
from tests.helpers import ROOT, run_cli, write

KEYS = tuple(generate_host_key() for _ in range(4))
SPEC = StackSpec(
    run_name="tpu-1", backend="gcp", instance_type="v5litepod-16", region="us-central1", zone="us-central1-a",
    spot=False, arch="x86", gpu_vendor="google", gpu_name="v5litepod-16", gpu_count=1, gpu_memory_gib=256,
    disk_gb=100, ports=(), ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRun user@dstack", host_keys=KEYS,
    owner="0a1b2c3d", gcp_project_id="my-project", self_delete=False, cluster=True,
)


def offers_json(*args, env=None):
    result = run_cli("offers", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["offers"]


# --- offers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form, name", [
    ("v5litepod-8", "v5litepod-8"), ("tpu-v3-2048", "v3-2048"), ("google:v3-64", "v3-64"),
    ("tpu:v5p-1024", "v5p-1024"), ("v5litepod-64:TPU", "v5litepod-64"), ("tpu:v6e-8:1", "v6e-8"),
])
def test_every_form_dstack_parses_finds_that_slice(form, name, dstack_home):
    found = offers_json("--gpu", form)
    assert found, form
    assert {(o["backend"], o["instance"]["name"]) for o in found} == {("gcp", name)}
    gpus = found[0]["instance"]["resources"]["gpus"]
    assert gpus == [{"name": name, "memory_mib": round(tpu_slice(name).hbm_gib * 1024), "vendor": "google"}]
    assert found[0]["instance"]["resources"]["disk"] == {"size_mib": 100 * 1024}  # a TPU VM's fixed boot disk


def test_vendor_tpu_in_a_file_offers_tpus_only_and_gpu_requests_never_get_one(tmp_path, dstack_home):
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [python train.py]\n"
                                           "resources:\n  gpu:\n    vendor: tpu\n    memory: 128GB..\n")
    result = run_cli("offers", "-f", conf, "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["offers"]
    assert found and {g["vendor"] for o in found for g in o["instance"]["resources"]["gpus"]} == {"google"}
    assert "v5litepod-8" in {o["instance"]["name"] for o in found}
    for spec in ("1", "16GB..", "1..8"):  # a GPU count or size alone names no vendor: CUDA code needs a GPU
        assert all(g["vendor"] != "google" for o in offers_json("--gpu", spec) for g in
                   o["instance"]["resources"]["gpus"]), spec


def test_a_disk_a_tpu_vm_cannot_have_leaves_no_tpu_offer(dstack_home):
    assert offers_json("--gpu", "v5litepod-8", "--disk", "200GB") == []
    assert {o["instance"]["resources"]["disk"]["size_mib"] for o in
            offers_json("--gpu", "v5litepod-8", "--disk", "50GB..150GB")} == {100 * 1024}


def test_the_table_says_what_a_slice_is(dstack_home):
    result = run_cli("offers", "--gpu", "v5litepod-16", "--on-demand", "-r", "us-central1")
    assert result.returncode == 0, result.stderr
    assert "TPU v5litepod-16 (256GB, 4 hosts), 112 CPU, 192GB per host, 100GB disk" in result.stdout


def test_offers_of_a_tpu_load_no_cloud_sdk():
    code = ("import sys; sys.argv=['dstack','offers','--gpu','v5litepod-8','--json']\n"
            "import cli.main\ntry:\n    cli.main.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('pulumi','boto3','botocore','paramiko','google') if m in sys.modules), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert '"v5litepod-8"' in out.stdout and out.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name, hosts, chips, cpus", [
    ("v2-8", 1, 4, 96), ("v2-32", 4, 16, 96), ("v3-2048", 256, 1024, 96), ("v4-8", 1, 4, 240), ("v4-16", 2, 8, 240),
    ("v5p-8", 1, 4, 208), ("v5p-1024", 128, 512, 208), ("v5litepod-1", 1, 1, 24), ("v5litepod-8", 1, 8, 224),
    ("tpu-v5litepod-16", 4, 16, 112), ("v6e-8", 1, 8, 180), ("v6e-256", 64, 256, 180),
])
def test_slice_shapes(name, hosts, chips, cpus):
    found = tpu_slice(name)
    assert (found.hosts, found.chips, found.host_cpus) == (hosts, chips, cpus)


@pytest.mark.parametrize("name", ["v5litepod-2", "v3-12", "v9-8", "n1-standard-8", "v5p", "A100"])
def test_what_is_no_slice(name):
    assert tpu_slice(name) is None


# --- the plan -----------------------------------------------------------------------------------------------------

TASK = """type: task
name: {name}
python: "3.11"
commands: [python -c "import jax; print(jax.device_count())"]
resources:
  gpu: {gpu}
{extra}"""


def plan(tmp_path, dstack_home, name="tpu-1", gpu="v5litepod-8", extra="", args=()):
    conf = write(tmp_path, f"{name}.dstack.yml", TASK.format(name=name, gpu=gpu, extra=extra))
    return run_cli("apply", "-f", conf, "-b", "gcp", "--dry-run", "--json", *args,
                   env={"DSTACK_HOME": str(dstack_home)})


@pytest.mark.parametrize("gpu, spot, runtime, scheduling", [
    ("v5litepod-8", "spot", "v2-alpha-tpuv5-lite", {"spot": True}),
    ("v6e-4", "spot", "v2-alpha-tpuv6e", {"spot": True}),
    ("v3-8", "spot", "tpu-ubuntu2204-base", {"preemptible": True}),
    ("v2-8", "on-demand", "tpu-ubuntu2204-base", None),
])
def test_a_single_host_slice_is_one_tpu_vm_in_the_runs_stack(tmp_path, dstack_home, gpu, spot, runtime, scheduling):
    result = plan(tmp_path, dstack_home, gpu=gpu, extra=f"spot_policy: {spot}\nmax_duration: 2h\n")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["offer"]["instance"]["name"] == gpu and document["offer"]["instance"]["resources"]["spot"] == (
        spot == "spot")
    assert "nodes" not in document
    types = [r["type"] for r in document["resources"]]
    assert types == ["gcp:compute/firewall:Firewall", "gcp:tpu/v2Vm:V2Vm"]  # no VM, no service account
    firewall, node = (r["inputs"] for r in document["resources"])
    assert node["acceleratorType"] == gpu and node["runtimeVersion"] == runtime
    assert node.get("schedulingConfig") == scheduling
    assert node["zone"] == document["offer"]["availability_zones"][0]
    assert node["labels"] == {"dstack-owner": node["labels"]["dstack-owner"], "dstack-project": "dstack",
                              "dstack-run": "tpu-1"}
    assert node["tags"] == firewall["targetTags"] and node["networkConfig"] == {"enableExternalIps": True,
                                                                                "network": "default"}
    assert node["metadata"] == "[secret]"  # the workers' host keys are in the startup script
    assert "PRIVATE KEY" not in result.stdout


def test_a_multi_host_slice_is_nodes_one_per_host(tmp_path, dstack_home):
    refused = plan(tmp_path, dstack_home, gpu="v5litepod-16")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "`nodes: 1` does not fit the TPU slices that match, which run one job per host: v5litepod-16 is 4 TPU hosts "
        "(`nodes: 4`)")
    assert "Traceback" not in refused.stderr
    result = plan(tmp_path, dstack_home, gpu="v5litepod-16", extra="nodes: 4\nspot_policy: on-demand\n",
                  args=("-r", "us-central1"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    price = document["offer"]["price"]
    assert document["nodes"] == {"count": 4, "price_per_node": round(price / 4, 6), "total_price": price}
    assert [r["type"] for r in document["resources"]] == [
        "gcp:compute/firewall:Firewall", "gcp:compute/firewall:Firewall", "gcp:tpu/v2Vm:V2Vm"]  # one node: 4 hosts
    assert "notes" not in document  # a slice is its own interconnect: no placement policy to miss
    human = run_cli("apply", "-f", str(tmp_path / "tpu-1.dstack.yml"), "-b", "gcp", "--dry-run",
                    env={"DSTACK_HOME": str(dstack_home)}).stdout
    assert "4 nodes: one TPU slice, a node per host" in human
    wrong = plan(tmp_path, dstack_home, gpu="v5litepod-16", extra="nodes: 2\n")
    assert wrong.returncode != 0 and "(`nodes: 4`)" in wrong.stderr


def test_what_a_tpu_offer_does_not_take_is_refused_by_name(tmp_path, dstack_home):
    import time

    from provisioner.store.records import VolumeRecord
    from provisioner.store.store import StateStore

    StateStore().create_volume(VolumeRecord(name="data", status="active", backend="gcp", region="us-central1",
                                            zone="us-central1-a", volume_id="my-disk", created_at=time.time()))
    volume = plan(tmp_path, dstack_home, extra="volumes: [data:/data]\n")
    assert volume.returncode != 0
    assert "`volumes` with a network volume (`NAME:/path`) is not attached to a TPU VM here" in volume.stderr
    kept = plan(tmp_path, dstack_home, extra="idle_duration: 1h\n")
    assert kept.returncode != 0 and "`idle_duration` is not supported on a TPU slice here" in kept.stderr
    reserved = plan(tmp_path, dstack_home, extra="reservation: my-reservation\n")
    assert reserved.returncode != 0 and "`reservation` is not consumed by a TPU slice here" in reserved.stderr
    fleet = write(tmp_path, "f.dstack.yml", "type: fleet\nname: tpus\nnodes: 1\nbackends: [gcp]\n"
                                            "resources:\n  gpu: v5litepod-8\n")
    refused = run_cli("apply", "-f", fleet, "--dry-run", env={"DSTACK_HOME": str(dstack_home)})
    assert refused.returncode != 0 and "a TPU slice (v5litepod-8) is not a fleet instance here" in refused.stderr


# --- the program ------------------------------------------------------------------------------------------------

def test_runtime_versions_and_scheduling_per_generation():
    assert [runtime_version(t) for t in ("v2-8", "v3-32", "v4-8", "v5p-8", "v5litepod-4", "v6e-16")] == [
        "tpu-ubuntu2204-base", "tpu-ubuntu2204-base", "tpu-ubuntu2204-base", "tpu-ubuntu2204-base",
        "v2-alpha-tpuv5-lite", "v2-alpha-tpuv6e"]
    assert scheduling_config(SPEC) == {}
    assert scheduling_config(dataclasses.replace(SPEC, spot=True)) == {"spot": True}
    assert scheduling_config(dataclasses.replace(SPEC, spot=True, instance_type="v4-32")) == {"preemptible": True}


def test_each_worker_installs_its_own_host_key_and_the_deadlines():
    script = startup_script(dataclasses.replace(SPEC, max_duration_s=3600))
    assert script.startswith("#!/bin/bash\n")
    assert "instance/attributes/agent-worker-number" in script
    for rank, key in enumerate(KEYS):
        case = script.split(f"\n  {rank})\n", 1)[1].split(";;", 1)[0]
        assert key.private_openssh.strip() in case and key.public_openssh in case
        assert all(other.public_openssh not in case for other in KEYS if other is not key)
    assert "set_host_keys = false" in script and "systemctl restart ssh" in script
    assert "--on-active=20min --unit=dstack-start-watchdog" in script
    assert script.rstrip().endswith("/usr/local/sbin/dstack-power-off 80")  # 60 minutes + 20 after boot
    assert "compute.googleapis.com" not in script  # no self-delete: a TPU node takes no IAM binding of its own
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_the_program_exports_each_worker_as_a_node_in_rank_order():
    import pulumi

    resources, exports = [], {}

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            resources.append(args)
            outputs = dict(args.inputs)
            if args.typ == "gcp:tpu/v2Vm:V2Vm":
                outputs["networkEndpoints"] = [{"ipAddress": f"10.128.0.{i}", "port": 8470,
                                                "accessConfigs": [{"externalIp": f"34.0.0.{i}"}]} for i in range(4)]
            return [f"{args.name}-id", outputs]

        def call(self, args):
            raise AssertionError(f"a TPU stack looks nothing up: {args.token}")

    original = pulumi.export
    pulumi.export = lambda name, value: exports.__setitem__(name, value)
    try:
        pulumi.runtime.set_mocks(Mocks(), project="dstack", stack="t", preview=False)

        @pulumi.runtime.test
        def check():
            tpu_program(SPEC)
            return pulumi.Output.all(exports["public_ips"], exports["private_ips"], exports["ssh_user"]).apply(
                lambda values: seen.extend(values))

        seen: list = []
        check()
    finally:
        pulumi.export = original
    assert seen == [[f"34.0.0.{i}" for i in range(4)], [f"10.128.0.{i}" for i in range(4)], "ubuntu"]
    node = next(r for r in resources if r.typ == "gcp:tpu/v2Vm:V2Vm").inputs
    metadata = node["metadata"]["value"]  # one secret value makes the whole map a secret on the wire
    assert metadata["ssh-keys"] == f"ubuntu:{SPEC.ssh_public_key}"
    assert "serviceAccount" not in node and node["name"] == "dstack-0a1b2c3d-tpu-1"
    assert sorted(r.inputs["name"] for r in resources if r.typ.endswith("Firewall")) == [
        "dstack-0a1b2c3d-tpu-1", "dstack-0a1b2c3d-tpu-1-nodes"]
