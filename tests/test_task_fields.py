"""Every field of dstack 0.22's task: its grammar, its refusal where a backend would not act upon it, and its effect
on a job on this machine (the local backend) and on an SSH host in a network namespace."""

import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from configuration.errors import ConfigurationError
from configuration.loader import parse_configuration
from configuration.models import TaskConfiguration
from offers.offer import Offer
from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import read_log, start_job, stop_job
from provisioner.jobs.launch import MONITOR_SCRIPT, PROFILE_TIMEOUT_S
from provisioner.jobs.layout import UNDERUTILIZED
from provisioner.jobs.script import JobSpec, docker_run_argv, python_script
from provisioner.planning.field_support import check_fields, refusals, restrict_zones
from provisioner.runs.job_specs import job_spec, stop_grace
from tests.helpers import DATA, process_list_with, run_cli, wait_exit

# dstack 0.22.5's TaskConfiguration: its 46 root properties.
DSTACK_TASK_FIELDS = {"repos", "files",
    "nodes", "groups", "ports", "commands", "type", "name", "image", "user", "privileged", "entrypoint",
    "working_dir", "home_dir", "registry_auth", "python", "nvcc", "single_branch", "env", "shell", "resources",
    "priority", "volumes", "docker", "dstack", "setup", "backends", "regions", "availability_zones",
    "instance_types", "reservation", "spot_policy", "retry", "max_duration", "stop_duration", "max_price",
    "creation_policy", "idle_duration", "utilization_policy", "startup_order", "stop_criteria", "schedule", "fleets",
    "instances", "tags", "backend_options",
}


def parse(text, source="x.dstack.yml"):
    return parse_configuration(text, source)


def task(extra, commands=True):
    return parse("type: task\n" + ("commands: [x]\n" if commands else "") + extra + "\n")


def test_every_dstack_task_field_is_known():
    assert set(TaskConfiguration.model_fields) == DSTACK_TASK_FIELDS


@pytest.mark.parametrize("text, field, value", [
    ("user: ubuntu", "user", "ubuntu"),
    ("user: '1000:1000'", "user", "1000:1000"),
    ("privileged: true", "privileged", True),
    ("home_dir: /home/me", "home_dir", "/home/me"),
    ("shell: bash", "shell", "bash"),
    ("shell: /usr/bin/zsh", "shell", "/usr/bin/zsh"),
    ("nvcc: true", "nvcc", True),
    ("docker: true", "docker", True),
    ("single_branch: false", "single_branch", False),
    ("priority: 50", "priority", 50),
    ("dstack: true", "dstack", True),
    ("setup: [pip install x]", "setup", ["pip install x"]),
    ("availability_zones: us-east-1a", "availability_zones", ["us-east-1a"]),
    ("availability_zones: [us-east-1a, us-east-1b]", "availability_zones", ["us-east-1a", "us-east-1b"]),
    ("reservation: cr-123", "reservation", "cr-123"),
    ("stop_duration: 5m", "stop_duration", 300),
    ("stop_duration: 'off'", "stop_duration", "off"),
    ("stop_duration: false", "stop_duration", "off"),
    ("stop_duration: true", "stop_duration", None),
    ("creation_policy: reuse", "creation_policy", "reuse"),
    ("idle_duration: 1h", "idle_duration", 3600),
    ("idle_duration: 'off'", "idle_duration", -1),
    ("idle_duration: -1", "idle_duration", -1),
    ("startup_order: master-first", "startup_order", "master-first"),
    ("stop_criteria: master-done", "stop_criteria", "master-done"),
    ("tags: {team: ml, cost-center: 'a/b 1'}", "tags", {"team": "ml", "cost-center": "a/b 1"}),
    ("utilization_policy: {min_gpu_utilization: 10, time_window: 30m}", "utilization_policy",
     {"min_gpu_utilization": 10, "time_window": 1800}),
    ("schedule: {cron: '0 8 * * mon-fri'}", "schedule", {"cron": ["0 8 * * mon-fri"]}),
    ("schedule: {cron: ['*/15 * * * *', '0 0 1 jan *']}", "schedule", {"cron": ["*/15 * * * *", "0 0 1 jan *"]}),
    ("volumes: ['my-vol:/data', '/mnt/cache:/cache']", "volumes",
     [{"name": "my-vol", "path": "/data"}, {"instance_path": "/mnt/cache", "path": "/cache", "optional": False}]),
    ("volumes: [{name: [a, b], path: /data}]", "volumes", [{"name": ["a", "b"], "path": "/data"}]),
    ("fleets: [mine, team/theirs]", "fleets", [{"project": None, "name": "mine"},
                                                {"project": "team", "name": "theirs"}]),
    ("instances: [gpu-1, {hostname: 10.0.0.2}, {fleet: lab, instance: 0}]", "instances",
     [{"name": "gpu-1"}, {"hostname": "10.0.0.2"}, {"fleet": {"project": None, "name": "lab"}, "instance": 0}]),
    ("backend_options: [{type: vastai, min_reliability: 0.95}]", "backend_options",
     [{"type": "vastai", "offer_order": None, "min_reliability": 0.95, "min_score": None}]),
])
def test_field_forms_parse(text, field, value):
    conf = task(text)
    assert conf.model_dump(mode="json")[field] == value


def test_groups_parse_and_are_named_by_position():
    conf = task("groups:\n- {nodes: 2, commands: [a]}\n- {name: eval, commands: [b]}", commands=False)
    assert [(g.name, g.nodes) for g in conf.groups] == [("0", 2), ("eval", 1)]


@pytest.mark.parametrize("text, message", [
    ("user: 'a:b:c'", "x.dstack.yml:3: user: Invalid user: 'a:b:c'"),
    ("shell: zsh", "x.dstack.yml:3: shell: Invalid shell: 'zsh' (expected `sh`, `bash` or an absolute path"),
    ("priority: 101", "x.dstack.yml:3: priority: Input should be less than or equal to 100"),
    ("stop_duration: soon", "x.dstack.yml:3: stop_duration: Invalid duration: 'soon'"),
    ("tags: {'a b': x}", "x.dstack.yml:3: tags: Invalid tag name 'a b'"),
    ("tags: {team: 1}", "x.dstack.yml:3: tags: Invalid value of tag 'team': expected a string"),
    ("utilization_policy: {min_gpu_utilization: 10, time_window: 1m}",
     "x.dstack.yml:3: utilization_policy.time_window: time_window must be at least 5m"),
    ("utilization_policy: {min_gpu_utilization: 101, time_window: 1h}",
     "x.dstack.yml:3: utilization_policy.min_gpu_utilization: Input should be less than or equal to 100"),
    ("schedule: {cron: '61 * * * *'}", "x.dstack.yml:3: schedule.cron: invalid cron expression '61 * * * *': "
                                       "minute '61' is out of range"),
    ("schedule: {cron: daily}", "expected 5 fields"),
    ("schedule: {cron: []}", "at least one cron expression"),
    ("volumes: [data]", "x.dstack.yml:3: volumes[0]: Invalid volume 'data'"),
    ("volumes: ['v:data']", "path must be absolute"),
    ("fleets: [a/b/c]", "x.dstack.yml:3: fleets[0]: Invalid reference 'a/b/c'"),
    ("creation_policy: always", "creation_policy: 'always' is not allowed"),
    ("startup_order: random", "startup_order: 'random' is not allowed"),
    ("instances: []", "instances: List should have at least 1 item"),
    ("backend_options: [{type: aws}]", "backend_options[0].type: 'aws' is not allowed"),
    ("python: '3.11'\ndocker: true", "x.dstack.yml:4: docker: `docker` and `python` are mutually exclusive"),
    ("nodes: 2\ngroups: [{commands: [a]}]", "`nodes` and `groups` are mutually exclusive"),
    ("privilegd: true", "x.dstack.yml:3: unknown field 'privilegd' (did you mean 'privileged'?)"),
])
def test_invalid_forms_name_file_line_and_field(text, message):
    with pytest.raises(ConfigurationError) as e:
        task(text)
    assert message in str(e.value)


def offer(backend, gpus=0, zones=(), region="r"):
    from offers.catalog import InstanceType

    instance = InstanceType(name="t", cpus=2, memory_gib=8, arch="x86", gpu_vendor="nvidia" if gpus else "",
                            gpu_name="H100" if gpus else "", gpu_count=gpus, gpu_memory_gib=80 if gpus else 0,
                            spot_supported=False)
    return Offer(backend=backend, region=region, zones=tuple(zones), instance=instance, spot=False, price=1.0,
                 disk_gb=100, disk_price=0.0)


@pytest.mark.parametrize("text, message", [
    ("volumes: ['v:/data']", "volume v does not exist: create it with"),
    ("nodes: 2", "`nodes: 2` needs 2 hosts that fit the resources: this machine (the local backend) is one node"),
    ("reservation: cr-1", "`reservation` is not supported on the local backend: only a GCP VM consumes a named "
                          "reservation here"),
    ("instances: [gpu-1]", "`instances` is not supported yet"),
    ("entrypoint: python", "`entrypoint` needs `image:`"),
    ("registry_auth: {username: u, password: p}", "`registry_auth` needs `image:`"),
    ("user: ubuntu", "`user` needs `image:`"),
    ("dstack: true", "`dstack` is not supported"),
    ("backend_options: [{type: vastai}]", "`backend_options` is not supported"),
])
def test_dry_run_refuses_fields_no_backend_acts_upon(tmp_path, text, message):
    path = tmp_path / "x.dstack.yml"
    path.write_text(f"type: task\ncommands: [x]\n{text}\n")
    result = run_cli("apply", "-f", str(path), "--dry-run", "-b", "local")
    assert result.returncode != 0
    assert result.stderr == f"error: {path}: {message}" + result.stderr.split(message, 1)[1]
    assert "Traceback" not in result.stderr


def test_a_field_the_cheapest_backend_ignores_is_refused_naming_the_backend(tmp_path):
    conf = task("docker: true")
    with pytest.raises(ConfigurationError, match="x.yml: `docker` is not supported on the local backend"):
        check_fields(conf, [offer("local"), offer("ssh")], "x.yml")
    assert [o.backend for o in check_fields(conf, [offer("ssh"), offer("local"), offer("aws")], "x.yml")] == \
        ["ssh", "aws"]  # failover never moves the run to a backend that would ignore the field
    path = tmp_path / "d.dstack.yml"
    path.write_text("type: task\ncommands: [docker ps]\ndocker: true\n")
    result = run_cli("apply", "-f", str(path), "--dry-run", "-b", "local")
    assert result.returncode == 1 and "`docker` is not supported on the local backend" in result.stderr


def test_utilization_policy_needs_a_gpu_offer():
    conf = task("utilization_policy: {min_gpu_utilization: 5, time_window: 10m}")
    assert refusals(conf, offer("ssh")) == ["`utilization_policy` needs an NVIDIA GPU to watch, and the chosen "
                                            "offer has none"]
    assert refusals(conf, offer("ssh", gpus=1)) == []


def test_availability_zones_narrow_cloud_offers():
    offers = [offer("aws", zones=("us-east-1a", "us-east-1b"), region="us-east-1"),
              offer("aws", zones=("us-west-2a",), region="us-west-2"), offer("gcp", region="us-central1")]
    kept = restrict_zones(offers, ["us-east-1b", "us-central1-c"])
    assert [(o.region, o.zones) for o in kept] == [("us-east-1", ("us-east-1b",)), ("us-central1", ("us-central1-c",))]
    with pytest.raises(ConfigurationError, match="`availability_zones` is not supported on the local backend"):
        check_fields(task("availability_zones: [x-1a]"), [offer("local")], "x.yml")


def test_priority_is_said_in_the_plan(tmp_path):
    path = tmp_path / "p.dstack.yml"
    path.write_text("type: task\ncommands: [x]\npriority: 70\n")
    result = run_cli("apply", "-f", str(path), "--dry-run", "--json", "-b", "local")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["notes"] == [
        "priority 70: runs do not queue here, so every run is provisioned at once; priority orders nothing"]


def test_tags_reach_aws_tags_and_gcp_labels():
    from configuration.backends import DstackConfig
    from provisioner.planning.stack_plan import stack_spec
    from stacks.spec import HostKey

    conf = task("tags: {Team: ML-Infra, cost_center: 'x/y 1', Name: spoof}")
    spec = stack_spec("r1", conf, offer("aws", region="us-east-1"), "ssh-ed25519 K", (HostKey("p", "q"),),
                      DstackConfig())
    tags = spec.tags()
    assert tags["Team"] == "ML-Infra" and tags["cost_center"] == "x/y 1" and tags["Name"] == spec.resource_name
    labels = spec.labels()
    assert labels["team"] == "ml-infra" and labels["cost_center"] == "x-y-1" and labels["dstack-run"] == "r1"


def test_setup_runs_before_commands_and_system_variables_are_set():
    conf = task("setup: [pip install x]")
    spec = job_spec("r1", conf, offer("ssh", gpus=1), "/some/repo")
    assert spec.commands == ["pip install x", "x"]
    assert {k: v for k, v in spec.env.items() if k != "DSTACK_REPO_ID"} == {
        "DSTACK_RUN_NAME": "r1", "DSTACK_GPUS_NUM": "1", "DSTACK_GPUS_PER_NODE": "1", "DSTACK_NODES_NUM": "1",
        "DSTACK_NODE_RANK": "0"}
    assert spec.env["DSTACK_REPO_ID"].startswith("repo-")
    assert job_spec("r1", conf, offer("ssh"), "https://github.com/me/train.git").env["DSTACK_REPO_ID"].startswith(
        "train-")


def test_stop_duration_sets_the_grace_before_sigkill():
    assert (stop_grace(None), stop_grace(30), stop_grace("off")) == (10, 30, None)


def test_image_fields_reach_docker_run():
    argv = docker_run_argv(JobSpec(run_name="r", commands=["id"], image="ubuntu", user="1000:1000", privileged=True,
                                   home_dir="/home/me", shell="bash"))
    line = " ".join(argv)
    assert "--privileged --user 1000:1000" in line and "-e HOME=/home/me" in line
    assert "--entrypoint /bin/bash ubuntu -c" in line
    assert "-e DSTACK_MASTER_NODE_IP -e DSTACK_NODES_IPS -e DSTACK_MPI_HOSTFILE=/dstack/mpi/hostfile" in line


def test_docker_and_nvcc_scripts():
    script = python_script(JobSpec(run_name="r", commands=["docker ps"], docker=True))
    assert "docker info" in script and "venv" not in script and '"$JOB_DIR/bin/docker"' in script
    script = python_script(JobSpec(run_name="r", commands=["nvcc --version"], nvcc=True))
    assert "this host has no nvcc (the CUDA toolkit)" in script


# --- effects on a real job: this machine, and an SSH host in a network namespace


@pytest.fixture(params=["local", "ssh"])
def host(request, tmp_path, monkeypatch):
    """A transport to run jobs on: this machine, or a namespace host over SSH."""
    monkeypatch.setenv("CLIENT_ONLY_SECRET", "leaked")
    if request.param == "local":
        yield LocalTransport(str(tmp_path / "jobs"))
        return
    from provisioner.host.ssh import connect
    from tests.test_remote import target

    make_host, client_key = request.getfixturevalue("make_host"), request.getfixturevalue("client_key")
    transport = connect(target(make_host(), client_key), total_wait=10)
    yield transport
    transport.close()


def test_job_environment_is_declared_plus_system_variables_only(host):
    spec = job_spec("env-run", task("env: [MODE=fast]"), offer("ssh", gpus=2), None)
    spec.commands = ["env | cut -d= -f1 | sort", "echo MASTER=$DSTACK_MASTER_NODE_IP", "cat $DSTACK_MPI_HOSTFILE"]
    start_job(host, spec)
    code, log = wait_exit(host, "env-run")
    assert code == 0, log
    names = set(log.split("MASTER=")[0].split())
    assert "CLIENT_ONLY_SECRET" not in names and "DSTACK_JOBS_DIR" not in names
    assert {"MODE", "DSTACK_RUN_NAME", "DSTACK_GPUS_NUM", "DSTACK_NODES_NUM", "DSTACK_NODE_RANK",
            "DSTACK_MASTER_NODE_IP", "DSTACK_NODES_IPS", "DSTACK_MPI_HOSTFILE", "HOME", "PATH"} <= names
    master = log.split("MASTER=")[1].split()[0]
    assert master and f"{master} slots=2" in log


@pytest.fixture
def login_home(tmp_path, monkeypatch):
    """A HOME of the test's own for local jobs, whose `.profile` the test writes; PATH without pyenv's shims (they
    need the PYENV_ROOT of the real profile), the profile cut short after 2 s."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin")
    monkeypatch.setenv("DSTACK_PROFILE_TIMEOUT", "2")
    return home


def test_the_login_profile_sets_the_job_environment(login_home, tmp_path):
    (login_home / ".profile").write_text("export FROM_PROFILE=yes\ngreet() { echo \"hello from $*\"; }\n"
                                         "module() { echo module $*; }\nexport -f module\n"
                                         "echo the profile speaks\ncd /\n")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="profile-env", commands=[
        "echo $FROM_PROFILE", "greet the profile", "bash -c 'module load in a child'", "pwd"]))
    code, log = wait_exit(local, "profile-env", timeout=30)
    assert (code, log) == (0, "yes\nhello from the profile\nmodule load in a child\n"
                              f"{tmp_path}/jobs/profile-env/repo\n")
    folder = tmp_path / "jobs" / "profile-env"
    assert not (folder / "profile.env").exists()  # read, then deleted
    assert (folder / "profile.log").read_text() == "the profile speaks\n"  # beside the job's log, not in it


def test_a_profile_timeout_that_is_no_number_is_named_in_the_log_and_the_default_used(login_home, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("DSTACK_PROFILE_TIMEOUT", "2m")
    (login_home / ".profile").write_text("export FROM_PROFILE=yes\n")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="odd-bound", commands=["echo $FROM_PROFILE"]))
    code, log = wait_exit(local, "odd-bound", timeout=30)
    assert (code, log) == (0, f"dstack: DSTACK_PROFILE_TIMEOUT=2m is not a whole number of seconds; the login profile "
                              f"gets {PROFILE_TIMEOUT_S}\nyes\n")


def hanging_profile(home: Path) -> None:
    """A profile that takes a lock (as `pyenv rehash` does), releases it on exit, and never finishes."""
    (home / ".profile").write_text('echo $$ > "$HOME/profile.pid"; trap \'rm -f "$HOME/lock"\' EXIT; : > "$HOME/lock"\n'
                                   "sleep 300\n")


def gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def test_a_login_profile_that_does_not_finish_is_cut_short_and_the_job_goes_on(login_home, tmp_path):
    """A stale lock in the profile (pyenv's rehash waits a minute on one) delays a job by DSTACK_PROFILE_TIMEOUT at
    most; the log says so; the profile gets SIGTERM first, so its traps release what it held."""
    hanging_profile(login_home)
    local = LocalTransport(str(tmp_path / "jobs"))
    began = time.monotonic()
    start_job(local, JobSpec(run_name="slow-profile", commands=["echo started; echo FROM_PROFILE=$FROM_PROFILE"]))
    try:
        code, log = wait_exit(local, "slow-profile", timeout=20)
    finally:
        stop_job(local, "slow-profile", grace=0)
    assert time.monotonic() - began < 10
    assert (code, log) == (0, "dstack: the login profile (bash -l) did not finish within 2s "
                              "(DSTACK_PROFILE_TIMEOUT); the job goes on without it, from HOME, USER, LOGNAME, SHELL, "
                              "PATH and LANG alone (what the profile printed is in "
                              f"{tmp_path}/jobs/slow-profile/profile.log)\nstarted\nFROM_PROFILE=\n")
    assert gone(int((login_home / "profile.pid").read_text())) and not (login_home / "lock").exists()


def test_a_stop_while_the_login_profile_runs_ends_the_profile_too(login_home, tmp_path, monkeypatch):
    monkeypatch.setenv("DSTACK_PROFILE_TIMEOUT", "60")
    hanging_profile(login_home)
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="stopped-in-profile", commands=["echo never"]))
    deadline = time.monotonic() + 10
    while not (login_home / "lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    assert stop_job(local, "stopped-in-profile", grace=10) == 143  # SIGTERM was enough
    assert time.monotonic() - began < 5
    assert gone(int((login_home / "profile.pid").read_text())) and not (login_home / "lock").exists()
    assert "never" not in read_log(local, "stopped-in-profile", 0).data.decode()


def _sleeping(seconds: int) -> list:
    """Live processes running `sleep SECONDS`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == f"sleep\0{seconds}\0".encode() and \
                    (entry / "stat").read_text().split()[2] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_processes_the_job_started_end_with_it(host):
    marker = random.randrange(100_000, 900_000)  # a sleep no other process runs
    start_job(host, JobSpec(run_name="bg-run", commands=[
        f"sleep {marker} &", f"setsid sleep {marker + 1} &", f"sleep 0.5; pgrep -c -f '^sleep ({marker}|{marker + 1})$'"]))
    code, log = wait_exit(host, "bg-run")
    assert (code, log) == (0, "2\n")  # both were running while the job ran
    deadline = time.monotonic() + 5
    while (_sleeping(marker) or _sleeping(marker + 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleeping(marker) == [] and _sleeping(marker + 1) == []


def test_shell_runs_the_commands(host):
    start_job(host, JobSpec(run_name="sh-run", commands=['echo "bash=${BASH_VERSION:+yes}"'], shell="sh"))
    assert wait_exit(host, "sh-run") == (0, "bash=\n")
    start_job(host, JobSpec(run_name="bash-run", commands=['echo "bash=${BASH_VERSION:+yes}"'], shell="/bin/bash"))
    assert wait_exit(host, "bash-run") == (0, "bash=yes\n")


def test_a_named_shells_commands_never_reach_the_process_list(host):
    """`shell:` runs the commands in a shell of its own; their text (which may hold `${{ secrets.NAME }}` values)
    goes to it by environment, never as an argument that `ps` shows to every user of the host."""
    secret, pause = f"tok-{uuid.uuid4().hex}", f"2.{random.randrange(10 ** 6):06d}"  # this test's own `sleep`
    start_job(host, JobSpec(run_name="ps-secret", shell="bash", commands=[
        f"echo {secret} > /dev/null", "echo \"left: ${DSTACK_COMMANDS:-none}\"", f"sleep {pause}", "echo done"]))
    listed = process_list_with(host, f"sleep {pause}")
    assert not [line for line in listed if secret in line]
    assert wait_exit(host, "ps-secret") == (0, "left: none\ndone\n")


def test_stop_duration_off_lets_the_job_finish_its_cleanup(host):
    start_job(host, JobSpec(run_name="slow-stop", commands=[
        "trap 'echo cleaning; sleep 2; echo cleaned; exit 3' TERM", "echo started", "sleep 300 & wait"]))
    deadline = time.monotonic() + 20
    while b"started" not in read_log(host, "slow-stop", 0).data and time.monotonic() < deadline:
        time.sleep(0.1)
    began = time.monotonic()
    assert stop_job(host, "slow-stop", grace=None) is None  # returns at once, without SIGKILL
    assert time.monotonic() - began < 2
    code, log = wait_exit(host, "slow-stop")
    assert (code, log) == (3, "started\ncleaning\ncleaned\n")


def test_python_version_the_host_lacks_is_an_error_naming_those_present(tmp_path):
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="py-none", commands=["python --version"], python="3.14", may_install=False))
    code, log = wait_exit(local, "py-none", timeout=120)
    assert code == 1
    assert "dstack: Python 3.14 is not installed on this host (the local backend installs nothing); present:" in log
    assert " 3.11" in log.split("present:")[1]


def test_python_version_found_through_pyenv_is_used_not_another(tmp_path):
    if subprocess.run(["sh", "-c", "pyenv versions --bare | grep -q '^3[.]12[.]'"]).returncode != 0:
        pytest.skip("needs a pyenv-installed Python 3.12 that is not the global one")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="py-312", commands=["python --version"], python="3.12", may_install=False))
    code, log = wait_exit(local, "py-312", timeout=120)
    assert code == 0 and log.startswith("Python 3.12."), log


def test_nvcc_is_found_where_the_cuda_toolkit_is(tmp_path):
    if not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("needs the CUDA toolkit in /usr/local/cuda")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="nvcc-run", commands=["command -v nvcc >/dev/null && echo found"], nvcc=True,
                             may_install=False))
    assert wait_exit(local, "nvcc-run", timeout=120) == (0, "found\n")


# --- utilization_policy, with a fake nvidia-smi printing the real format of an H200 host


def fake_nvidia_smi(folder: Path, utilization: int) -> Path:
    """`nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader` as the H200 host prints its queries:
    `0, 3 %` per GPU (the indexes are the recorded host's)."""
    rows = (DATA / "gpu-hosts" / "h200-1x" / "nvidia-smi-query.csv").read_text().splitlines()[1:]  # under the header
    lines = "".join(f"{row.split(',')[0]}, {utilization} %\n" for row in rows if row.strip())
    folder.mkdir(exist_ok=True)
    path = folder / "nvidia-smi"
    path.write_text(f"#!/bin/sh\ncase \"$*\" in *utilization.gpu*) ;; *) exit 9 ;; esac\ncat <<'EOF'\n{lines}EOF\n")
    path.chmod(0o755)
    return folder


def run_monitor(tmp_path, utilization, seconds):
    work = tmp_path / "monitor"
    work.mkdir()
    (work / "monitor.sh").write_text(MONITOR_SCRIPT)
    (work / "monitor.sh").chmod(0o700)
    bin_dir = fake_nvidia_smi(tmp_path / "bin", utilization)
    job = subprocess.Popen(["setsid", "sleep", "300"])
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    monitor = subprocess.Popen(["sh", str(work / "monitor.sh"), str(job.pid), "50", "2", "1"], env=env)
    try:
        job.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    alive = job.poll() is None
    for p in (job, monitor):
        p.kill()
        p.wait()
    return alive, (work / "stop_reason").read_text() if (work / "stop_reason").exists() else None


def test_utilization_monitor_stops_a_job_below_the_minimum_for_the_window(tmp_path):
    alive, reason = run_monitor(tmp_path, utilization=3, seconds=15)
    assert not alive and reason == "utilization_policy: GPU 0 below 50% for 2s\n"


def test_utilization_monitor_leaves_a_busy_job_alone(tmp_path):
    alive, reason = run_monitor(tmp_path, utilization=97, seconds=4)
    assert alive and reason is None


def test_an_idle_gpu_job_ends_as_underutilized(tmp_path, monkeypatch):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", utilization=0)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="idle-gpu", commands=["echo training", "sleep 300"], utilization=(10, 1)))
    code, log = wait_exit(local, "idle-gpu", timeout=60)
    assert code == UNDERUTILIZED and log.startswith("training")
