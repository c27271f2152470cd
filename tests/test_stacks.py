"""Stack programs under Pulumi's mock runtime (asserting on the resources' inputs), the automation wrapper's
missing-CLI and missing-credential paths, and failure classification on real cloud error texts."""

import dataclasses
import json
import os

import pytest

from stacks.aws.program import aws_program
from stacks.gcp.program import gcp_program
from stacks.render import render_program
from stacks.spec import StackSpec, cloud_init, generate_host_key

HOST_KEY = generate_host_key()
BASE = StackSpec(
    run_name="train-1", backend="aws", instance_type="g5.xlarge", region="us-east-1", zone="us-east-1b", spot=False,
    arch="x86", gpu_vendor="nvidia", gpu_name="A10G", gpu_count=1, gpu_memory_gib=24, disk_gb=250, ports=(8080, 6006),
    ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRun user@dstack", host_keys=(HOST_KEY,),
    owner="0a1b2c3d",
)


class Recorder:
    """Pulumi mocks that keep every resource and every invoke (lookup) with its arguments."""

    def __init__(self):
        import pulumi

        self.resources, self.calls = [], []
        recorder = self

        class Mocks(pulumi.runtime.Mocks):
            def new_resource(self, args):
                recorder.resources.append(args)
                return [f"{args.name}-id", {**dict(args.inputs), **computed_outputs(args)}]

            def call(self, args):
                recorder.calls.append(args)
                return {"id": "looked-up-id", "selfLink": "projects/x/global/images/y", "ids": ["subnet-found"]}

        self.mocks = Mocks()

    def run(self, program):
        import pulumi

        pulumi.runtime.set_mocks(self.mocks, project="dstack", stack="test", preview=False)
        pulumi.runtime.test(program)()
        return self

    def of_type(self, typ):
        found = [r for r in self.resources if r.typ == typ]
        assert found, f"no {typ} in {[r.typ for r in self.resources]}"
        return found

    def call(self, token):
        return next(c.args for c in self.calls if c.token == token)


def computed_outputs(args) -> dict:
    """Outputs the cloud computes that a program passes on (a service account's email and IAM member)."""
    if args.typ == "gcp:serviceaccount/account:Account":
        email = f"{args.inputs['accountId']}@my-project.iam.gserviceaccount.com"
        return {"email": email, "member": f"serviceAccount:{email}"}
    return {}


def aws(**changes):
    spec = dataclasses.replace(BASE, **changes)
    return Recorder().run(lambda: aws_program(spec))


def gcp(**changes):
    defaults = dict(backend="gcp", instance_type="n1-standard-8", region="us-central1", zone="us-central1-a",
                    gpu_name="T4", gpu_memory_gib=16, gcp_project_id="my-project")
    spec = dataclasses.replace(BASE, **{**defaults, **changes})
    return Recorder().run(lambda: gcp_program(spec))


def is_secret(value):
    from pulumi.runtime import rpc

    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


# --- AWS --------------------------------------------------------------------------------------------------------

def test_aws_ports_become_ingress_rules_and_nothing_else():
    group = aws().of_type("aws:ec2/securityGroup:SecurityGroup")[0].inputs
    rules = sorted((r["fromPort"], r["toPort"], r["protocol"], tuple(r["cidrBlocks"])) for r in group["ingress"])
    assert rules == [(22, 22, "tcp", ("0.0.0.0/0",)), (6006, 6006, "tcp", ("0.0.0.0/0",)),
                     (8080, 8080, "tcp", ("0.0.0.0/0",))]
    narrowed = aws(ports=(), ingress_cidrs=("203.0.113.0/24",)).of_type("aws:ec2/securityGroup:SecurityGroup")[0]
    assert [(r["fromPort"], r["cidrBlocks"]) for r in narrowed.inputs["ingress"]] == [(22, ["203.0.113.0/24"])]


def test_aws_instance_inputs():
    recorder = aws()
    instance = recorder.of_type("aws:ec2/instance:Instance")[0].inputs
    assert instance["instanceType"] == "g5.xlarge" and instance["availabilityZone"] == "us-east-1b"
    assert instance["rootBlockDevice"]["volumeSize"] == 250
    assert instance["rootBlockDevice"]["volumeType"] == "gp3"
    assert instance["rootBlockDevice"]["deleteOnTermination"] is True
    assert instance["metadataOptions"]["httpTokens"] == "required"
    assert instance["associatePublicIpAddress"] is True
    assert instance["instanceInitiatedShutdownBehavior"] == "terminate"
    assert "instanceMarketOptions" not in instance
    assert instance["keyName"] == "dstack-0a1b2c3d-train-1"
    key = recorder.of_type("aws:ec2/keyPair:KeyPair")[0].inputs
    assert key["publicKey"] == BASE.ssh_public_key


def test_aws_spot_uses_market_options():
    instance = aws(spot=True).of_type("aws:ec2/instance:Instance")[0].inputs
    assert instance["instanceMarketOptions"] == {
        "marketType": "spot",
        "spotOptions": {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"}}


def test_aws_every_resource_is_tagged_with_the_run():
    recorder = aws()
    expected = {"dstack:run": "train-1", "dstack:owner": "0a1b2c3d", "dstack:project": "dstack",
                "Name": "dstack-0a1b2c3d-train-1"}
    for resource in recorder.resources:
        if resource.typ.startswith("pulumi:providers:"):
            assert resource.inputs["defaultTags"] == json.dumps({"tags": expected}) or \
                resource.inputs["defaultTags"] == {"tags": expected}
        else:
            assert resource.inputs["tags"] == expected, resource.typ
    instance = recorder.of_type("aws:ec2/instance:Instance")[0].inputs
    assert instance["rootBlockDevice"]["tags"] == expected


@pytest.mark.parametrize("changes, owner, name, arch", [
    ({}, "amazon", "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *", "x86_64"),
    ({"arch": "arm", "gpu_name": "T4g", "instance_type": "g5g.xlarge"}, "amazon",
     "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *", "arm64"),
    ({"gpu_vendor": "", "gpu_name": "", "gpu_count": 0, "instance_type": "m7i.large"}, "099720109477",
     "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*", "x86_64"),
    ({"gpu_vendor": "", "gpu_name": "", "gpu_count": 0, "arch": "arm", "instance_type": "m7g.large"}, "099720109477",
     "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-*", "arm64"),
    ({"gpu_name": "V100", "instance_type": "p3dn.24xlarge", "nvidia_open_driver": False}, "amazon",
     "Deep Learning Base Proprietary Nvidia Driver GPU AMI (Ubuntu 22.04) *", "x86_64"),
    ({"gpu_vendor": "aws", "gpu_name": "Inferentia2", "instance_type": "inf2.xlarge"}, "amazon",
     "Deep Learning AMI Neuron (Ubuntu 22.04) *", "x86_64"),
])
def test_aws_image_by_gpu_vendor_and_architecture(changes, owner, name, arch):
    lookup = aws(**changes).call("aws:ec2/getAmi:getAmi")
    assert lookup["owners"] == [owner] and lookup["mostRecent"] is True
    filters = {f["name"]: f["values"] for f in lookup["filters"]}
    assert filters["name"] == [name] and filters["architecture"] == [arch]


def test_aws_host_key_travels_only_as_a_secret():
    recorder = aws(max_duration_s=7200)
    instance = recorder.of_type("aws:ec2/instance:Instance")[0].inputs
    assert is_secret(instance["userData"])
    user_data = instance["userData"]["value"]
    assert HOST_KEY.private_openssh.strip().splitlines()[1] in user_data
    assert "[/usr/local/sbin/dstack-power-off, '140']" in user_data  # max_duration (120 min) + START_ALLOWANCE_MIN
    for resource in recorder.resources:
        plain = json.dumps({k: v for k, v in resource.inputs.items() if not is_secret(v)})
        assert "OPENSSH PRIVATE KEY" not in plain


# --- GCP --------------------------------------------------------------------------------------------------------

def test_gcp_n1_attaches_gpus_and_firewall_opens_the_ports():
    recorder = gcp()
    instance = recorder.of_type("gcp:compute/instance:Instance")[0].inputs
    assert instance["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert instance["machineType"] == "n1-standard-8" and instance["zone"] == "us-central1-a"
    assert instance["bootDisk"]["initializeParams"]["size"] == 250
    assert instance["bootDisk"]["initializeParams"]["type"] == "pd-balanced"
    assert instance["bootDisk"]["autoDelete"] is True
    assert instance["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert instance["labels"] == {"dstack-run": "train-1", "dstack-owner": "0a1b2c3d", "dstack-project": "dstack"}
    assert instance["tags"] == ["dstack-0a1b2c3d-train-1"]
    firewall = recorder.of_type("gcp:compute/firewall:Firewall")[0].inputs
    assert firewall["allows"] == [{"protocol": "tcp", "ports": ["22", "6006", "8080"]}]
    assert firewall["targetTags"] == ["dstack-0a1b2c3d-train-1"] and firewall["sourceRanges"] == ["0.0.0.0/0"]
    assert recorder.call("gcp:compute/getImage:getImage") == {
        "family": "common-cu128-ubuntu-2204-nvidia-570", "project": "deeplearning-platform-release"}


@pytest.mark.parametrize("name, memory, expected", [("A100", 40, "nvidia-tesla-a100"), ("A100", 80, "nvidia-a100-80gb"),
                                                    ("V100", 16, "nvidia-tesla-v100"), ("P4", 8, "nvidia-tesla-p4")])
def test_gcp_accelerator_type_names(name, memory, expected):
    from stacks.gcp.program import accelerator_type

    assert accelerator_type(name, memory) == expected


def test_gcp_built_in_gpus_and_spot():
    instance = gcp(instance_type="a2-highgpu-1g", gpu_name="A100", gpu_memory_gib=40, spot=True) \
        .of_type("gcp:compute/instance:Instance")[0].inputs
    assert "guestAccelerators" not in instance or not instance["guestAccelerators"]
    assert instance["scheduling"] == {"automaticRestart": False, "onHostMaintenance": "TERMINATE",
                                      "provisioningModel": "SPOT", "preemptible": True,
                                      "instanceTerminationAction": "DELETE"}


@pytest.mark.parametrize("machine, disk", [("a3-ultragpu-8g", "hyperdisk-balanced"), ("a4-highgpu-8g", "hyperdisk-balanced"),
                                           ("c4-standard-8", "hyperdisk-balanced"), ("n4-standard-4", "hyperdisk-balanced"),
                                           ("a3-highgpu-8g", "pd-balanced"), ("n2-standard-8", "pd-balanced")])
def test_gcp_boot_disk_type_by_machine_series(machine, disk):
    instance = gcp(instance_type=machine, gpu_count=0, gpu_vendor="").of_type("gcp:compute/instance:Instance")[0]
    assert instance.inputs["bootDisk"]["initializeParams"]["type"] == disk


def test_gcp_vm_with_max_duration_is_deleted_not_stopped():
    scheduling = gcp(max_duration_s=3600).of_type("gcp:compute/instance:Instance")[0].inputs["scheduling"]
    assert scheduling["maxRunDuration"] == {"seconds": 80 * 60}
    assert scheduling["instanceTerminationAction"] == "DELETE"


def test_gcp_cpu_vm_uses_ubuntu_and_keeps_secrets_secret():
    recorder = gcp(instance_type="e2-standard-4", gpu_vendor="", gpu_name="", gpu_count=0, arch="x86")
    instance = recorder.of_type("gcp:compute/instance:Instance")[0].inputs
    assert instance["scheduling"]["onHostMaintenance"] == "MIGRATE"
    assert recorder.call("gcp:compute/getImage:getImage") == {"family": "ubuntu-2404-lts-amd64",
                                                              "project": "ubuntu-os-cloud"}
    assert is_secret(instance["metadata"])  # user-data holds the host key
    assert "OPENSSH PRIVATE KEY" not in json.dumps(recorder.of_type("gcp:compute/firewall:Firewall")[0].inputs)


# --- rendering and the plan -------------------------------------------------------------------------------------

def test_render_masks_secrets_and_names_lookups():
    resources = render_program(lambda: aws_program(BASE), "train-1", secrets=(HOST_KEY.private_openssh,))
    text = json.dumps(resources)
    assert "PRIVATE KEY" not in text and HOST_KEY.private_openssh[60:90] not in text
    instance = [r for r in resources if r["type"] == "aws:ec2/instance:Instance"][0]
    assert instance["inputs"]["userData"] == "[secret]"
    assert instance["inputs"]["ami"] == "(looked up at apply: aws:ec2/getAmi:getAmi)"
    assert instance["inputs"]["rootBlockDevice"]["volumeSize"] == 250  # an int, not 250.0


@pytest.mark.parametrize("backend, types", [
    ("aws", ["aws:ec2/instance:Instance", "aws:ec2/keyPair:KeyPair", "aws:ec2/securityGroup:SecurityGroup"]),
    ("gcp", ["gcp:compute/firewall:Firewall", "gcp:compute/instance:Instance",
             "gcp:compute/instanceIAMMember:InstanceIAMMember"]),  # the account is made before `up`: stacks.gcp.iam
])
def test_apply_dry_run_renders_the_stack(tmp_path, dstack_home, backend, types):
    from tests.helpers import run_cli

    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\nname: train-2\npython: '3.11'\ncommands: [python train.py]\nports: [6006]\n"
                    "resources: {gpu: 'T4:1', disk: 300GB}\n")
    result = run_cli("apply", "-f", str(conf), "-b", backend, "--dry-run", "--json",
                     env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert list(plan)[:3] == ["configuration", "offer", "resources"]  # then what a run would fail on (no Pulumi CLI)
    assert set(plan) <= {"configuration", "offer", "resources", "problems"}
    assert plan["offer"]["backend"] == backend
    assert plan["offer"]["instance"]["resources"]["gpus"][0]["name"] == "T4"
    assert [r["type"] for r in plan["resources"]] == types
    instance = [r for r in plan["resources"] if r["type"].endswith("/instance:Instance")][0]["inputs"]
    disk = instance["rootBlockDevice"]["volumeSize"] if backend == "aws" else \
        instance["bootDisk"]["initializeParams"]["size"]
    assert disk == 300
    assert "PRIVATE KEY" not in result.stdout
    if backend == "aws":
        group = [r for r in plan["resources"] if r["type"].endswith("SecurityGroup")][0]["inputs"]
        assert [rule["fromPort"] for rule in group["ingress"]] == [22]  # 6006 travels through the SSH tunnel
    else:
        firewall = [r for r in plan["resources"] if r["type"].endswith("Firewall")][0]["inputs"]
        assert firewall["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    human = run_cli("apply", "-f", str(conf), "-b", backend, "--dry-run", env={"DSTACK_HOME": str(dstack_home)})
    assert human.returncode == 0 and types[0] in human.stdout and "train-2" in human.stdout


def test_cloud_init_installs_only_the_runs_host_key_and_login_key():
    import yaml

    text = cloud_init(BASE)
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["ssh_deletekeys"] is True and data["ssh_genkeytypes"] == []
    assert data["ssh_keys"] == {"ed25519_private": HOST_KEY.private_openssh.strip() + "\n",
                                "ed25519_public": HOST_KEY.public_openssh}
    assert data["ssh_authorized_keys"] == [BASE.ssh_public_key]
    assert "bootcmd" not in data  # AWS has no guest agent remaking host keys
    assert [f["path"] for f in data["write_files"]] == ["/usr/local/sbin/dstack-power-off"]


def test_every_vm_powers_off_when_no_job_starts_and_at_its_deadline():
    import yaml

    runcmd = yaml.safe_load(cloud_init(BASE))["runcmd"]
    assert len(runcmd) == 1  # no max_duration: only the start watchdog
    watchdog = runcmd[0]
    assert watchdog[:3] == ["systemd-run", "--on-active=20min", "--unit=dstack-start-watchdog"]
    assert watchdog[-1] == "ls /home/*/.dstack-jobs/*/pid >/dev/null 2>&1 || /usr/local/sbin/dstack-power-off"
    timed = yaml.safe_load(cloud_init(dataclasses.replace(BASE, max_duration_s=3601)))["runcmd"]
    assert timed[-1] == ["/usr/local/sbin/dstack-power-off", "81"]  # 61 minutes (rounded up) + 20 after boot


def test_gcp_cloud_init_keeps_the_runs_host_key_against_the_guest_agent():
    import yaml

    data = yaml.safe_load(cloud_init(dataclasses.replace(BASE, backend="gcp")))
    assert any("set_host_keys = false" in " ".join(c) for c in data["bootcmd"])
    files = {f["path"]: f for f in data["write_files"]}
    private = files["/etc/ssh/ssh_host_ed25519_key"]
    assert private["defer"] is True and private["permissions"] == "0600"
    assert private["content"].strip() == HOST_KEY.private_openssh.strip()
    assert files["/etc/ssh/ssh_host_ed25519_key.pub"]["content"].strip() == HOST_KEY.public_openssh
    assert "systemctl restart ssh" in data["runcmd"][-1][-1]


# --- automation wrapper -----------------------------------------------------------------------------------------

def test_missing_pulumi_cli_says_how_to_install(monkeypatch, tmp_path):
    from stacks.automation import PulumiMissing, require_pulumi

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(PulumiMissing) as e:
        require_pulumi()
    assert "Pulumi CLI is not installed" in str(e.value) and "dstack setup pulumi" in str(e.value)


def test_state_settings_make_a_private_passphrase(dstack_home):
    from stacks.automation import state_settings

    settings = state_settings()
    assert settings.backend_url == f"file://{dstack_home / 'pulumi' / 'state'}"
    assert (dstack_home / "pulumi" / "state").is_dir()
    assert oct(settings.passphrase_file.stat().st_mode & 0o777) == "0o600"
    first = settings.passphrase_file.read_text()
    assert len(first) >= 32 and state_settings().passphrase_file.read_text() == first
    assert state_settings("s3://bucket/dstack").backend_url == "s3://bucket/dstack"


def test_missing_aws_credentials_are_named(no_aws_credentials):
    from configuration.errors import ConfigurationError
    from stacks.aws.credentials import check_aws_credentials

    with pytest.raises(ConfigurationError, match="AWS credentials are missing"):
        check_aws_credentials("us-east-1")


def test_aws_credentials_checked_against_sts(monkeypatch):
    from moto import mock_aws

    from stacks.aws.credentials import check_aws_credentials

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        assert check_aws_credentials("us-east-1").startswith("arn:aws:")


def test_gcp_credentials_lookup(monkeypatch, tmp_path):
    from configuration.errors import ConfigurationError
    from stacks.gcp.credentials import gcp_credentials_source

    for name in ("GOOGLE_CREDENTIALS", "GOOGLE_CLOUD_KEYFILE_JSON", "GCLOUD_KEYFILE_JSON",
                 "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    with pytest.raises(ConfigurationError, match="gcloud auth application-default login"):
        gcp_credentials_source()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        gcp_credentials_source()
    (tmp_path / "application_default_credentials.json").write_text("{}")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert gcp_credentials_source().endswith("application_default_credentials.json")


@pytest.mark.skipif(not os.environ.get("DSTACK_TEST_REAL_CLOUD"),
                    reason="needs the pulumi CLI and real AWS credentials (set DSTACK_TEST_REAL_CLOUD=1); "
                           "neither exists on the CI machine, which has no internet")
def test_real_aws_stack_up_and_destroy():
    from stacks.automation import open_stack, stack_destroy, stack_up, state_settings

    spec = dataclasses.replace(BASE, run_name="dstack-real-test", instance_type="t3.micro", gpu_vendor="",
                               gpu_name="", gpu_count=0, disk_gb=8, ports=())
    stack = open_stack(spec.run_name, lambda: aws_program(spec), state_settings())
    try:
        outputs = stack_up(stack)
        assert outputs["public_ip"]
    finally:
        stack_destroy(stack)


def test_engine_events_become_step_progress():
    from pulumi.automation import events

    from stacks.progress import EngineEventTracker

    def meta(op, typ, name):
        return events.StepEventMetadata(op=events.OpType(op), urn=f"urn:pulumi:run::dstack::{typ}::{name}", type=typ,
                                        provider="")

    seen, now = [], iter([10.0, 42.5, 50.0, 57.5])
    tracker = EngineEventTracker(seen.append, clock=lambda: next(now))
    instance = meta("create", "aws:ec2/instance:Instance", "dstack-x")
    tracker(events.EngineEvent(sequence=1, timestamp=0, resource_pre_event=events.ResourcePreEvent(instance)))
    tracker(events.EngineEvent(sequence=2, timestamp=0, resource_pre_event=events.ResourcePreEvent(
        meta("same", "pulumi:pulumi:Stack", "dstack-x"))))
    tracker(events.EngineEvent(sequence=3, timestamp=0, res_outputs_event=events.ResOutputsEvent(instance)))
    group = meta("delete", "aws:ec2/securityGroup:SecurityGroup", "dstack-x-sg")
    tracker(events.EngineEvent(sequence=4, timestamp=0, resource_pre_event=events.ResourcePreEvent(group)))
    tracker(events.EngineEvent(sequence=5, timestamp=0, res_op_failed_event=events.ResOpFailedEvent(group, 1, 1)))
    assert [(s.op, s.name, s.state, s.seconds) for s in seen] == [
        ("create", "dstack-x", "started", None), ("create", "dstack-x", "done", 32.5),
        ("delete", "dstack-x-sg", "started", None), ("delete", "dstack-x-sg", "failed", 7.5)]


def test_stacks_command_needs_the_pulumi_cli(tmp_path, dstack_home):
    from tests.helpers import run_cli

    result = run_cli("stacks", env={"PATH": str(tmp_path), "HOME": str(tmp_path), "DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and "The Pulumi CLI is not installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_public_ports_in_the_backend_config_open_the_task_ports(tmp_path, dstack_home):
    from tests.helpers import run_cli

    dstack_home.mkdir(parents=True, exist_ok=True)
    (dstack_home / "config.yml").write_text("backends:\n  - type: aws\n    public_ports: true\n"
                                            "    ingress_cidrs: [203.0.113.0/24]\n")
    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\nname: web\ncommands: [python -m http.server 8000]\nports: [8000]\n")
    result = run_cli("apply", "-f", str(conf), "-b", "aws", "--dry-run", "--json", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    group = [r for r in json.loads(result.stdout)["resources"] if r["type"].endswith("SecurityGroup")][0]["inputs"]
    assert sorted((r["fromPort"], tuple(r["cidrBlocks"])) for r in group["ingress"]) == [
        (22, ("203.0.113.0/24",)), (8000, ("203.0.113.0/24",))]


def test_pre_turing_gpus_get_the_proprietary_driver():
    from configuration.backends import DstackConfig
    from configuration.loader import parse_configuration
    from offers.catalog import load_catalogs
    from offers.offer import Offer
    from provisioner.planning.stack_plan import stack_spec

    aws_types = {t.name: t for t in load_catalogs(["aws"])[0].types}
    task = parse_configuration("type: task\ncommands: ['true']\n", "t.dstack.yml")
    for name, open_driver in (("p3dn.24xlarge", False), ("g4dn.xlarge", True), ("p5.48xlarge", True)):
        offer = Offer("aws", aws_types[name], "us-east-1", ("us-east-1a",), False, 1.0, 100.0, 0.0)
        spec = stack_spec("r", task, offer, "ssh-ed25519 AAAA", HOST_KEY, DstackConfig())
        assert spec.nvidia_open_driver is open_driver, name


FAKE_ENGINE = """#!/bin/sh
if [ "$1" = version ]; then echo v3.200.0; exit 0; fi
echo "args: $*"
trap 'echo INT >> "$MARK"; sleep 1; echo exited >> "$MARK"; exit 255' INT
[ -n "$FAIL" ] && { echo "error: $FAIL" >&2; exit 1; }
while :; do sleep 0.05; done
"""


def fake_engine(tmp_path):
    from stacks.engine import engine_command_class

    (tmp_path / "bin").mkdir()
    binary = tmp_path / "bin" / "pulumi"
    binary.write_text(FAKE_ENGINE)
    binary.chmod(0o755)
    return engine_command_class()(root=str(tmp_path))


def test_ctrl_c_during_up_cancels_the_engine_once_and_waits_for_it(tmp_path):
    import signal
    import threading

    command, mark, lines = fake_engine(tmp_path), tmp_path / "mark", []
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        command.run(["up", "--yes"], str(tmp_path), {"MARK": str(mark)}, on_output=lines.append)
    assert mark.read_text().splitlines() == ["INT", "exited"]  # one SIGINT (graceful cancel), and it had finished
    assert lines == ["args: --non-interactive up --yes"]


def test_engine_failure_is_a_command_error_with_its_text(tmp_path):
    from pulumi.automation.errors import CommandError

    with pytest.raises(CommandError, match="no such zone"):
        fake_engine(tmp_path).run(["up"], str(tmp_path), {"FAIL": "no such zone"})


def test_aws_default_vpc_or_the_named_one_and_its_subnet():
    default = aws()
    assert default.call("aws:ec2/getVpc:getVpc") == {"default": True}
    assert "subnetId" not in default.of_type("aws:ec2/instance:Instance")[0].inputs
    named = aws(vpc_name="ml-vpc")
    assert named.call("aws:ec2/getVpc:getVpc") == {"tags": {"Name": "ml-vpc"}}
    filters = {f["name"]: f["values"] for f in named.call("aws:ec2/getSubnets:getSubnets")["filters"]}
    assert filters == {"vpc-id": ["looked-up-id"], "availability-zone": ["us-east-1b"],
                       "map-public-ip-on-launch": ["true"]}  # a subnet whose nodes get a public address
    assert named.of_type("aws:ec2/instance:Instance")[0].inputs["subnetId"] == "subnet-found"
    given = aws(vpc_name="ml-vpc", subnet="subnet-0abc").of_type("aws:ec2/instance:Instance")[0].inputs
    assert given["subnetId"] == "subnet-0abc"


def test_gcp_default_network_or_the_named_one():
    default = gcp()
    assert default.of_type("gcp:compute/instance:Instance")[0].inputs["networkInterfaces"][0]["network"] == "default"
    named = gcp(vpc_name="ml-net", subnet="ml-subnet")
    interface = named.of_type("gcp:compute/instance:Instance")[0].inputs["networkInterfaces"][0]
    assert (interface["network"], interface["subnetwork"]) == ("ml-net", "ml-subnet")
    assert named.of_type("gcp:compute/firewall:Firewall")[0].inputs["network"] == "ml-net"


def test_a_missing_default_network_says_what_to_set():
    from stacks.errors import classify

    aws_failure = classify("error: aws:ec2/getVpc:getVpc: no matching EC2 VPC found")
    assert aws_failure.kind == "configuration" and "`vpc_name`" in aws_failure.message
    gcp_failure = classify("googleapi: Error 404: The resource 'projects/p/global/networks/default' was not found")
    assert gcp_failure.kind == "configuration" and "`vpc_name`" in gcp_failure.message and "gcp" in gcp_failure.message


def test_owner_id_is_made_once_per_home_and_names_the_stack(dstack_home, monkeypatch, tmp_path):
    from configuration.errors import ConfigurationError
    from configuration.owner import owner_id

    first = owner_id()
    assert len(first) == 8 and int(first, 16) >= 0 and owner_id() == first
    assert (dstack_home / "owner").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "another-user"))
    assert owner_id() != first  # another $DSTACK_HOME, another owner: `name: train` no longer collides
    spec = dataclasses.replace(BASE, owner=owner_id())
    assert spec.stack_name == f"train-1-{spec.owner}" and spec.resource_name == f"dstack-{spec.owner}-train-1"
    (tmp_path / "another-user" / "owner").write_text("not-an-id\n")
    with pytest.raises(ConfigurationError, match="not an owner id"):
        owner_id()


# --- a VM that ends itself: deleted on GCP, terminated on AWS ---------------------------------------------------

def test_gcp_vm_runs_as_its_own_service_account_allowed_to_delete_only_itself():
    from stacks.gcp.program import service_account_id

    email = f"{service_account_id('0a1b2c3d', 'train-1')}@my-project.iam.gserviceaccount.com"
    recorder = gcp(service_account_email=email)  # made before `up`, once per run (tests/test_gcp_self_delete.py)
    assert "gcp:serviceaccount/account:Account" not in {r.typ for r in recorder.resources}
    instance = recorder.of_type("gcp:compute/instance:Instance")[0].inputs
    assert instance["serviceAccount"] == {"email": email, "scopes": ["https://www.googleapis.com/auth/compute"]}
    [binding] = recorder.of_type("gcp:compute/instanceIAMMember:InstanceIAMMember")
    assert binding.inputs == {"instanceName": "dstack-0a1b2c3d-train-1", "zone": "us-central1-a",
                              "role": "roles/compute.instanceAdmin.v1", "member": f"serviceAccount:{email}"}
    # No grant anywhere else: not on the project, not on the service account.
    assert [r.typ for r in recorder.resources if "iam" in r.typ.lower()] == [binding.typ]


def test_service_account_ids_fit_gcp_and_differ_per_owner_and_run():
    import re

    from stacks.gcp.program import service_account_id

    ids = {service_account_id(owner, run) for owner in ("0a1b2c3d", "99887766") for run in ("train", "x" * 40)}
    assert len(ids) == 4
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", i) for i in ids)  # GCP's rule: 6 to 30 characters


@pytest.mark.parametrize("backend", ["aws", "gcp"])
def test_cloud_init_writes_the_power_off_script_its_deadlines_call(backend):
    import yaml

    from stacks.power_off import POWER_OFF_PATH, power_off_script

    data = yaml.safe_load(cloud_init(dataclasses.replace(BASE, backend=backend, max_duration_s=600)))
    script = next(f for f in data["write_files"] if f["path"] == POWER_OFF_PATH)
    assert script["permissions"] == "0755" and "defer" not in script  # there from the start
    assert script["content"] == power_off_script(backend == "gcp")
    assert ("compute.googleapis.com" in script["content"]) == (backend == "gcp")
    assert data["runcmd"][0][-1].endswith(f"|| {POWER_OFF_PATH}") and data["runcmd"][-1] == [POWER_OFF_PATH, "30"]


TOKEN = "ya29.c.b0AXv0zTPq-recorded-token"
METADATA = {"instance/service-accounts/default/token": {"access_token": TOKEN, "expires_in": 3599,
                                                        "token_type": "Bearer"},
            "project/project-id": "my-project", "instance/zone": "projects/123456789012/zones/us-central1-a",
            "instance/name": "dstack-0a1b2c3d-train-1"}
SELF = "/compute/v1/projects/my-project/zones/us-central1-a/instances/dstack-0a1b2c3d-train-1"


def run_power_off(tmp_path, backend, server=None, args=(), **settings):
    """The VM's power-off script run here, with curl, systemd-run and logger wrapped to log their arguments, the
    cloud's addresses pointed at `server` and the power-off itself replaced by touching a file."""
    import shutil
    import subprocess

    from stacks.power_off import power_off_script

    shims = tmp_path / "shims"
    shims.mkdir()
    for name, then in (("curl", f'exec {shutil.which("curl")} "$@"'), ("systemd-run", "exit 0"), ("logger", "exit 0")):
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/calls\n{then}\n')
        (shims / name).chmod(0o755)
    script = tmp_path / "dstack-power-off"
    script.write_text(power_off_script(backend == "gcp"))
    env = {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path), "DSTACK_SHUTDOWN": f"touch {tmp_path}/off",
           "DSTACK_DELETE_GRACE_S": "0", "DSTACK_RETRY_S": "0",
           **({"DSTACK_METADATA_URL": f"{server.url}/computeMetadata/v1",
               "DSTACK_COMPUTE_URL": f"{server.url}/compute/v1"} if server else {}),
           **{f"DSTACK_{k.upper()}": str(v) for k, v in settings.items()}}
    subprocess.run(["sh", str(script), *args], env=env, timeout=60, check=True)
    calls = tmp_path / "calls"
    return (calls.read_text().splitlines() if calls.exists() else []), (tmp_path / "off").exists()


@pytest.fixture
def metadata_server(recorded_api):
    for path, body in METADATA.items():
        recorded_api.on("GET", f"/computeMetadata/v1/{path}", body)
    recorded_api.on("DELETE", SELF, {"kind": "compute#operation", "name": "operation-1747045200000",
                                     "status": "RUNNING", "operationType": "delete",
                                     "targetLink": f"https://www.googleapis.com{SELF}"})
    return recorded_api


def test_gcp_power_off_deletes_its_own_instance_with_its_token(tmp_path, metadata_server):
    calls, powered_off = run_power_off(tmp_path, "gcp", metadata_server)
    [delete] = metadata_server.made("DELETE", ".*")
    assert delete.path == SELF and delete.headers["authorization"] == f"Bearer {TOKEN}"
    metadata = metadata_server.made("GET", "/computeMetadata/v1/.*")
    assert len(metadata) == 4 and all(r.headers["metadata-flavor"] == "Google" for r in metadata)
    assert calls and not any(TOKEN in call for call in calls)  # never on a command line, where `ps` shows it
    assert powered_off  # after the grace time, should the Compute API not have shut the VM down yet


def test_gcp_power_off_still_powers_off_when_the_delete_is_refused(tmp_path, metadata_server):
    metadata_server.on("DELETE", SELF, {"error": {"code": 403, "message": "Required 'compute.instances.delete' "
                                                  "permission for 'projects/my-project/zones/us-central1-a/instances/"
                                                  "dstack-0a1b2c3d-train-1'"}}, status=403)
    _, powered_off = run_power_off(tmp_path, "gcp", metadata_server, delete_tries=2)
    assert len(metadata_server.made("DELETE", SELF)) == 2 and powered_off


def test_power_off_later_is_a_systemd_timer_and_aws_just_powers_off(tmp_path):
    import re

    for folder in ("later", "aws"):
        (tmp_path / folder).mkdir()
    calls, powered_off = run_power_off(tmp_path / "later", "gcp", args=("5",))
    assert len(calls) == 1 and not powered_off
    assert re.fullmatch(rf"systemd-run --quiet --collect --on-active=5min --unit=dstack-power-off-\d+ "
                        rf"{tmp_path}/later/dstack-power-off", calls[0])
    calls, powered_off = run_power_off(tmp_path / "aws", "aws")
    assert calls == [] and powered_off  # no API call: an AWS instance terminates on shutdown


@pytest.mark.parametrize("sudo_works, expected", [
    (True, ["sudo -n /usr/local/sbin/dstack-power-off --cancel-idle",
            "sudo -n /usr/local/sbin/dstack-power-off --idle 5"]),
    (False, ["sudo -n /usr/local/sbin/dstack-power-off --cancel-idle", "sudo -n shutdown -c", "shutdown -c",
             "sudo -n /usr/local/sbin/dstack-power-off --idle 5", "sudo -n shutdown -h +5", "shutdown -h +5"]),
])
def test_the_job_wrapper_ends_the_vm_through_its_power_off_script(tmp_path, sudo_works, expected):
    import subprocess
    import time

    from provisioner.jobs.launch import start_command
    from provisioner.jobs.script import JobSpec
    from provisioner.jobs.archive import archive_stream
    from provisioner.jobs.uploads import UploadPlan
    from stacks.power_off import POWER_OFF_PATH

    if os.path.exists(POWER_OFF_PATH):
        pytest.skip(f"{POWER_OFF_PATH} exists on this machine; the wrapper would end it")
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, code in (("sudo", 0 if sudo_works else 1), ("shutdown", 0)):  # never the real ones
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/calls\nexit {code}\n')
        (shims / name).chmod(0o755)
    job = JobSpec(run_name="train-1", commands=[], power_off_after_exit_min=5)
    archive = b"".join(archive_stream(UploadPlan(), {"job.sh": (b"#!/bin/sh\nexit 3\n", 0o700)}))
    env = {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path), "DSTACK_JOBS_DIR": str(tmp_path / "jobs")}
    subprocess.run(["sh", "-c", start_command(job)], input=archive, env=env, timeout=30, check=True,
                   capture_output=True)
    calls = tmp_path / "calls"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(calls.read_text().splitlines() if calls.exists() else []) < len(expected):
        time.sleep(0.05)
    time.sleep(0.2)  # nothing more comes
    assert (tmp_path / "jobs" / "train-1" / "exit_code").read_text().strip() == "3"
    assert calls.read_text().splitlines() == expected


@pytest.mark.parametrize("text", [
    "error: 1 error occurred:\n\t* Error creating service account: googleapi: Error 403: Permission "
    "iam.serviceAccounts.create is required to perform this operation on project projects/my-project., forbidden",
    "error: 1 error occurred:\n\t* Error creating instance: googleapi: Error 403: Permission "
    "'iam.serviceaccounts.actAs' denied on service account dstack-0a1b2c3d-3d3c7e2c57a4c@my-project.iam."
    "gserviceaccount.com (or it may not exist)., forbidden",
    "error: 1 error occurred:\n\t* Error applying IAM policy for compute instance \"projects/my-project/zones/"
    "us-central1-a/instances/dstack-0a1b2c3d-train-1\": Error setting IAM policy for compute instance: googleapi: "
    "Error 403: Required 'compute.instances.setIamPolicy' permission for 'projects/my-project/zones/us-central1-a/"
    "instances/dstack-0a1b2c3d-train-1', forbidden",
])
def test_missing_rights_for_the_vms_service_account_say_what_to_grant(text):
    from stacks.errors import classify

    failure = classify(text)
    assert not failure.retryable
    assert "roles/iam.serviceAccountAdmin" in failure.message and "compute.instances.setIamPolicy" in failure.message
    assert "\n" not in failure.message


def test_a_project_out_of_service_accounts_tries_another_cloud():
    from stacks.errors import classify

    failure = classify("error: 1 error occurred:\n\t* Error creating service account: googleapi: Error 429: "
                       "Maximum number of service accounts on project reached., rateLimitExceeded")
    assert (failure.kind, failure.scope) == ("quota", "cloud") and "`dstack gc`" in failure.message


def test_gcp_without_self_delete_makes_no_service_account_and_powers_off():
    import yaml

    recorder = gcp(self_delete=False)
    types = {r.typ for r in recorder.resources}
    assert "gcp:serviceaccount/account:Account" not in types
    assert "gcp:compute/instanceIAMMember:InstanceIAMMember" not in types
    assert "serviceAccount" not in recorder.of_type("gcp:compute/instance:Instance")[0].inputs
    files = {f["path"]: f for f in yaml.safe_load(cloud_init(dataclasses.replace(
        BASE, backend="gcp", self_delete=False)))["write_files"]}
    assert "DELETE" not in files["/usr/local/sbin/dstack-power-off"]["content"]
