"""`image:` tasks in a real Docker daemon started by the tests, with an image made locally; and the registry login
and pull command lines, checked through a stand-in `docker` that records its arguments and stdin."""

import dataclasses
import os
import time
import uuid
import urllib.request

import pytest

from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import read_log, start_job, stop_job
from provisioner.jobs.script import JobSpec, docker_script
from provisioner.jobs.uploads import LEGACY_REPO_DIR, Upload, UploadPlan, list_folder
from tests.docker_daemon import IMAGE, docker_daemon  # noqa: F401 (fixture)
from tests.helpers import free_port, process_list_with, wait_exit


@pytest.fixture
def local(docker_daemon, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    return LocalTransport(str(tmp_path / "jobs"))


def folder_upload(folder):
    """The folder as the repo folder (`/workflow`), where a relative working_dir is."""
    return UploadPlan([Upload(folder, list_folder(folder), LEGACY_REPO_DIR, "repo")])


def test_image_task_env_shm_workdir_and_exit_code(local, tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "data.txt").write_text("from the repo\n")
    job = JobSpec(run_name="img-1", image=IMAGE, working_dir="sub", shm_size_gb=0.25,
                  env={"GREETING": "hello world", "TOKEN": "tok_secret"},
                  commands=["echo $GREETING", "pwd", "cat data.txt", "df -m /dev/shm | tail -1", "exit 5"])
    start_job(local, dataclasses.replace(job, uploads=folder_upload(repo)))
    code, log = wait_exit(local, "img-1")
    lines = log.splitlines()
    assert code == 5
    assert lines[0] == "hello world" and lines[1] == "/workflow/sub" and lines[2] == "from the repo"
    assert lines[3].split()[1] == "256"  # --shm-size
    assert "tok_secret" not in docker_script(job)  # env values go by name (`-e TOKEN`), never in the script
    assert not (tmp_path / "jobs" / "img-1" / "job.sh").exists()  # the script goes when the job ends


def test_an_image_jobs_commands_never_reach_the_process_list(local):
    """The container's shell and the `docker run` client are processes of this machine: the commands' text (which
    may hold `${{ secrets.NAME }}` values) goes to them by environment, never as an argument."""
    secret, pause = f"tok-{uuid.uuid4().hex}", f"3.{uuid.uuid4().int % 10 ** 6:06d}"  # this test's own `sleep`
    start_job(local, JobSpec(run_name="img-ps", image=IMAGE, commands=[
        f"echo {secret} > /dev/null", 'echo "left: ${DSTACK_COMMANDS:-none}"', f"sleep {pause}", "echo done"]))
    listed = process_list_with(local, f"sleep {pause}")
    assert not [line for line in listed if secret in line]
    assert wait_exit(local, "img-ps") == (0, "left: none\ndone\n")


def test_image_entrypoint(local):
    job = JobSpec(run_name="img-2", image=IMAGE, entrypoint="/bin/sh -c", commands=["echo via entrypoint $0"])
    start_job(local, job)
    assert wait_exit(local, "img-2") == (0, "via entrypoint /bin/sh\n")


def test_image_port_serves_http(local, tmp_path):
    repo = tmp_path / "site"
    repo.mkdir()
    (repo / "index.html").write_text("served from a container")
    port = free_port()
    start_job(local, JobSpec(run_name="img-3", image=IMAGE, commands=[f"httpd -f -p 127.0.0.1:{port} -h /workflow"],
                             uploads=folder_upload(repo)))
    body, deadline = None, time.monotonic() + 20
    while body is None and time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).read().decode()
        except OSError:
            time.sleep(0.1)
    assert body == "served from a container"
    stop_job(local, "img-3", grace=2)


def test_image_task_stop(local, docker_daemon):  # noqa: F811
    start_job(local, JobSpec(run_name="img-4", image=IMAGE, commands=["echo up", "sleep 300"]))
    deadline = time.monotonic() + 20
    while b"up" not in read_log(local, "img-4", 0).data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert docker_daemon.docker("ps", "-q", "--filter", "name=dstack-img-4").stdout.strip()
    code = stop_job(local, "img-4", grace=2)
    assert code is not None and code != 0
    assert docker_daemon.docker("ps", "-aq", "--filter", "name=dstack-img-4").stdout.strip() == ""


def test_registry_login_gets_the_password_on_stdin_only(tmp_path, monkeypatch):
    """A stand-in `docker` records each call; the password must appear in login's stdin and nowhere else."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
echo "ARGV $*" >> {calls}
if [ "$1" = login ]; then echo "STDIN $(cat)" >> {calls}; fi
if [ "$1" = image ]; then exit 1; fi
exit 0
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    job = JobSpec(run_name="img-5", image="ghcr.io/me/private:1", commands=["python train.py"],
                  env={"HF_TOKEN": "hf_abc"}, registry_username="me", registry_password="ghp_supersecret")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, job)
    assert wait_exit(local, "img-5")[0] == 0
    recorded = [line for line in calls.read_text().splitlines() if line != "ARGV info"]
    assert recorded[0] == "ARGV login --username me --password-stdin ghcr.io"
    assert recorded[1] == "STDIN ghp_supersecret"
    assert recorded[2] == "ARGV image inspect ghcr.io/me/private:1"
    assert recorded[3] == "ARGV pull ghcr.io/me/private:1"
    run_line = recorded[4]
    assert run_line.startswith("ARGV run --rm --init --name dstack-img-5 --network host -e HF_TOKEN "
                               "-e DSTACK_MASTER_NODE_IP -e DSTACK_NODES_IPS "
                               "-e DSTACK_MPI_HOSTFILE=/dstack/mpi/hostfile -v ")
    assert run_line.endswith('-w /workflow -e DSTACK_COMMANDS --entrypoint /bin/sh ghcr.io/me/private:1 -c '
                             '__dstack_commands=$DSTACK_COMMANDS; unset DSTACK_COMMANDS; eval "$__dstack_commands"')
    assert len(recorded) == 5  # the commands are not an argument
    assert sum("ghp_supersecret" in line for line in recorded) == 1
    assert "hf_abc" not in calls.read_text()
    assert "ghp_supersecret" not in docker_script(job)
    assert not any((tmp_path / "jobs" / "img-5" / name).exists() for name in ("job.sh", "env"))


def test_docker_hub_image_logs_in_without_a_server_and_gpus_are_passed():
    script = docker_script(JobSpec(run_name="x", image="me/private", commands=["nvidia-smi"], nvidia_gpus=True,
                                   registry_username="me", registry_password="pw"))
    assert '$DOCKER login --username "$DSTACK_REGISTRY_USERNAME" --password-stdin\n' in script
    assert "--gpus all" in script and "nvidia-container-toolkit" in script


def fake_tools(folder, calls, *, sudo_ok):
    """`id` says uid 1000; `docker` refuses unless run through `sudo` (as for a user outside the docker group);
    `sudo` records its flags and runs the command, or refuses (-n without a password) when not `sudo_ok`."""
    folder.mkdir()
    tools = {
        "id": "#!/bin/sh\n[ \"$1\" = -u ] && echo 1000 || echo ubuntu\n",
        "sudo": f"""#!/bin/sh
{"" if sudo_ok else "exit 1"}
echo "SUDO $1 $2" >> {calls}
shift 2
[ "$1" = true ] && exit 0
AS_ROOT_NOW=1 exec "$@"
""",
        "docker": f"""#!/bin/sh
[ -n "$AS_ROOT_NOW" ] || exit 1
echo "DOCKER $* HF_TOKEN=$HF_TOKEN COMMANDS=$DSTACK_COMMANDS" >> {calls}
[ "$1" = image ] && exit 1
exit 0
""",
    }
    for name, text in tools.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)


@pytest.mark.parametrize("sudo_ok", [True, False])
def test_an_image_job_of_a_user_outside_the_docker_group_goes_through_sudo(tmp_path, monkeypatch, sudo_ok):
    calls = tmp_path / "calls"
    fake_tools(tmp_path / "bin", calls, sudo_ok=sudo_ok)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    local = LocalTransport(str(tmp_path / "jobs"))
    start_job(local, JobSpec(run_name="img-6", image="me/train:1", commands=["python train.py"],
                             env={"HF_TOKEN": "hf_abc"}))
    code, log = wait_exit(local, "img-6")
    if not sudo_ok:
        assert code != 0 and "ubuntu may not use Docker" in log
        return
    assert code == 0, log
    recorded = calls.read_text().splitlines()
    docker_calls = [line for line in recorded if line.startswith("DOCKER")]
    assert docker_calls[0] == "DOCKER image inspect me/train:1 HF_TOKEN=hf_abc COMMANDS="  # plain `docker info` was refused
    assert docker_calls[1] == "DOCKER pull me/train:1 HF_TOKEN=hf_abc COMMANDS="
    assert docker_calls[2].startswith("DOCKER run --rm --init --name dstack-img-6 --network host -e HF_TOKEN")
    assert docker_calls[2].endswith(" HF_TOKEN=hf_abc COMMANDS=set -e")  # -E kept the task's env for `-e NAME`
    assert recorded[recorded.index(docker_calls[2]) + 1] == "python train.py"  # the commands, by environment
    assert "SUDO -n -E" in recorded
