"""A task's job on a host: written, started detached, read, stopped, each in one round trip.

The job folder is `$DSTACK_JOBS_DIR/<run>` on the host, by default `~/.dstack-jobs/<run>` (a host's admin can move it
with sshd's `SetEnv DSTACK_JOBS_DIR=...`; the local backend puts it under `$DSTACK_HOME/jobs`). Both folders are
made under umask 077, so they are 0700 and what the job writes in them 0600. In it: `job.sh` (the script), `env`
(mode 0600, read by the script at start and then emptied, by the shell itself: no `rm` started; both go when the job
ends, with whatever else may hold a secret value: provisioner.jobs.launch.SECRET_HOLDERS), `repo/` (the working directory, where the repo and
`files` go unless their paths say otherwise), `uploads/` (what the client sent, until the script puts each upload
in its place or, in a container, mounts it there), `output.log` (stdout and
stderr), `output.sizes` (when its output arrived: provisioner.jobs.launch.OUTPUT_SIZES), `profile.log` (what the
login profile printed), `pid` (the job's process group), `as_root` (how a job that needs root becomes it:
provisioner.jobs.launch.ROOT_CHECK) and `exit_code` (written when the job ends). The job runs in its own session
(setsid), so a dropped SSH connection loses nothing: the client reconnects and reads the log on from the byte it had.

A job without `image:` starts from an empty environment (`env -i`): a login shell's basics (HOME, USER, LOGNAME,
SHELL, PATH, LANG), dstack's system variables and what the task declares, on every backend alike. When the job's
main process ends, everything it started ends too: its process group is killed, then every process still carrying
the job's `DSTACK_JOB_ID` in its environment (a child that escaped the group with setsid).
"""

from __future__ import annotations

import posixpath
import secrets
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from provisioner.jobs.cluster_ssh import ClusterSSH, ssh_setup
from provisioner.jobs.dev_env import DevSession
from provisioner.jobs.layout import BEGUN_FILE, PROFILE_ENV
from provisioner.jobs.mounts import Mounts, docker_volume_args, mount_steps
from provisioner.jobs.python_env import python_setup
from provisioner.jobs.uploads import LEGACY_REPO_DIR, UploadPlan, in_job_folder, upload_name

CONTAINER_REPO = "/workflow"
REGISTRY_PASSWORD_VAR = "DSTACK_REGISTRY_PASSWORD"
REGISTRY_USERNAME_VAR = "DSTACK_REGISTRY_USERNAME"
JOB_ID_VAR = "DSTACK_JOB_ID"  # marks every process of the job, for the sweep at its end
CONTAINER_HOSTFILE = "/dstack/mpi/hostfile"
# Set on the host when a single node's job starts (the host knows its own address); a cluster's come from the client
# (provisioner.jobs.nodes), and the host file is written from DSTACK_NODES_IPS either way.
HOST_VARS = ("DSTACK_MASTER_NODE_IP", "DSTACK_NODES_IPS", "DSTACK_MPI_HOSTFILE")
SHELLS = {"sh": "/bin/sh", "bash": "/bin/bash"}


@dataclass
class JobSpec:
    run_name: str
    commands: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    image: Optional[str] = None
    python: Optional[str] = None
    entrypoint: Optional[str] = None
    working_dir: Optional[str] = None
    shm_size_gb: Optional[float] = None
    nvidia_gpus: bool = False
    registry_username: Optional[str] = None
    registry_password: Optional[str] = None
    max_duration_s: Optional[int] = None  # the job is stopped (exit code 124) when it runs longer
    power_off_after_exit_min: Optional[int] = None  # cloud VMs: power off (and so terminate) this long after the job
    shell: Optional[str] = None  # `sh`, `bash` or an absolute path; None: bash (sh without it), /bin/sh in an image
    user: Optional[str] = None  # image jobs: the container's user
    privileged: bool = False  # image jobs: a privileged container; without `image:`, the commands run as root
    home_dir: Optional[str] = None  # image jobs: the container's HOME
    docker: bool = False  # Docker usable by the commands
    nvcc: bool = False  # the commands need the CUDA compiler
    may_install: bool = True  # may download what the job needs (uv, Docker); False on the user's own machine
    gpus: int = 0  # DSTACK_GPUS_NUM, and the slots of the MPI host file
    utilization: Optional[Tuple[int, int]] = None  # (min GPU %, window s): stopped when a GPU stays below it
    cluster_ssh: Optional[ClusterSSH] = None  # a multi-node job's SSH to the other nodes (provisioner.jobs.cluster_ssh)
    dev: Optional[DevSession] = None  # a dev environment's sessions and inactivity (provisioner.jobs.dev_env)
    spot_notice: Optional[str] = None  # aws, gcp: a spot VM's interruption notice watched (jobs.spot_notice)
    job_id: str = field(default_factory=lambda: secrets.token_hex(12))
    uploads: UploadPlan = field(default_factory=UploadPlan)  # the repo and `files`
    mounts: Mounts = Mounts()  # `volumes`: network volumes and instance folders (provisioner.jobs.mounts)

    @property
    def needs_root(self) -> bool:
        """A job without `image:` that becomes root on its host: `privileged: true`, or its own /dev/shm."""
        return self.image is None and (self.privileged or bool(self.shm_size_gb))


def registry_of(image: str) -> Optional[str]:
    """The registry host of an image reference, or None for Docker Hub (`ghcr.io/me/x:1` -> ghcr.io)."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def env_file(job: JobSpec) -> bytes:
    values = dict(job.env)
    values[JOB_ID_VAR] = job.job_id
    if job.registry_password is not None:
        values[REGISTRY_USERNAME_VAR] = job.registry_username or ""
        values[REGISTRY_PASSWORD_VAR] = job.registry_password
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items()).encode()


_PREAMBLE = """#!/bin/sh
# Written by dstack for run {run}.
set -e
case $0 in */*) cd "${{0%/*}}" ;; esac
JOB_DIR="$PWD"
{as_root}if [ -n "${{DSTACK_PROFILE_FD:-}}" ]; then unset DSTACK_PROFILE_FD; . /dev/fd/3 || true; exec 3<&-; \
elif [ -f {profile} ]; then . ./{profile} || true; rm -f {profile}; fi
if [ -f env ]; then set -a; . ./env; set +a; : > env; fi
if [ -z "${{DSTACK_MASTER_NODE_IP:-}}" ]; then
  DSTACK_MASTER_NODE_IP=$(ip -o -4 addr show scope global 2>/dev/null | awk '{{split($4, a, "/"); print a[1]; exit}}')
  DSTACK_MASTER_NODE_IP=${{DSTACK_MASTER_NODE_IP:-127.0.0.1}}
  DSTACK_NODES_IPS=$DSTACK_MASTER_NODE_IP
fi
DSTACK_MPI_HOSTFILE="$JOB_DIR/mpi_hostfile"
__dstack_ips=$DSTACK_NODES_IPS __dstack_nl='
'
{{ while :; do printf '%s slots={slots}\\n' "${{__dstack_ips%%"$__dstack_nl"*}}"
  case $__dstack_ips in *"$__dstack_nl"*) __dstack_ips=${{__dstack_ips#*"$__dstack_nl"}} ;; *) break ;; esac
done; }} > "$DSTACK_MPI_HOSTFILE"
unset __dstack_ips __dstack_nl
export DSTACK_MASTER_NODE_IP DSTACK_NODES_IPS DSTACK_MPI_HOSTFILE
"""
_BEGUN = f": > \"$JOB_DIR/{BEGUN_FILE}\"\n"


def _preamble(job: JobSpec) -> str:
    return _PREAMBLE.format(run=job.run_name, slots=max(job.gpus, 1), profile=PROFILE_ENV, as_root=_as_root(job))


# A job without `image:` that needs root (`privileged: true`, `resources.shm_size`) runs job.sh again as root (the
# login user's sudo where it is not root), from the same basics the launcher gave it; with shm_size in a mount
# namespace of its own, where a tmpfs of that size is mounted over /dev/shm: the job sees it, the host's own
# /dev/shm stays as it is. Without `privileged`, the commands then run as the login user again (setpriv).
# DSTACK_JOB_STAGE marks the second pass; the variables it needs are unset before the job's own begin.
_AS_ROOT = """if [ -z "${{DSTACK_JOB_STAGE:-}}" ]; then
  if [ "$(id -u)" = 0 ]; then AS_ROOT=""; elif sudo -n true 2>/dev/null; then AS_ROOT="sudo -n"
  else echo "dstack: $(id -un)@$(uname -n) cannot become root (no passwordless sudo), which {what} needs" >&2; exit 1
  fi
  JOB_SHELL=sh; if command -v bash >/dev/null 2>&1; then JOB_SHELL=$(command -v bash); fi
  $AS_ROOT env -i HOME="$HOME" USER="${{USER:-}}" LOGNAME="${{LOGNAME:-}}" SHELL="${{SHELL:-/bin/sh}}" PATH="$PATH" \
LANG="${{LANG:-C.UTF-8}}" ${{DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"}} ${{DOCKER_CONFIG:+DOCKER_CONFIG="$DOCKER_CONFIG"}} \
DSTACK_JOB_STAGE=root DSTACK_JOB_OWNER="$(id -u):$(id -g)" DSTACK_JOB_SHELL="$JOB_SHELL" {unshare}"$JOB_SHELL" "$0"
  exit $?
fi
if [ "$DSTACK_JOB_STAGE" = root ]; then
  :
{mount}{drop}fi
unset DSTACK_JOB_STAGE DSTACK_JOB_OWNER DSTACK_JOB_SHELL
"""
_MOUNT_SHM = """  mount -t tmpfs -o size={mib}m,mode=1777,nosuid,nodev dstack-shm /dev/shm || \
{{ echo "dstack: could not mount a {mib}MB /dev/shm for the job (resources.shm_size)" >&2; exit 1; }}
"""
_DROP_ROOT = """  if [ "${DSTACK_JOB_OWNER%%:*}" != 0 ]; then
    exec setpriv --reuid="${DSTACK_JOB_OWNER%%:*}" --regid="${DSTACK_JOB_OWNER#*:}" --init-groups \
env DSTACK_JOB_STAGE=user "$DSTACK_JOB_SHELL" "$0"
  fi
"""


def shm_mib(job: JobSpec) -> int:
    return int((job.shm_size_gb or 0) * 1024)


def _as_root(job: JobSpec) -> str:
    if not job.needs_root:
        return ""
    what = " and ".join(w for w, used in (("privileged: true", job.privileged),
                                           ("resources.shm_size", job.shm_size_gb)) if used)
    shm = bool(job.shm_size_gb)
    return _AS_ROOT.format(what=what, unshare="unshare --mount --propagation private -- " if shm else "",
                           mount=_MOUNT_SHM.format(mib=shm_mib(job)) if shm else "",
                           drop="" if job.privileged else _DROP_ROOT)


_NVCC = """PATH="$PATH:/usr/local/cuda/bin"
if ! command -v nvcc >/dev/null 2>&1; then
  echo "dstack: nvcc: true, but this host has no nvcc (the CUDA toolkit) on PATH or in /usr/local/cuda/bin" >&2
  exit 1
fi
"""
# `docker: true`: the commands call `docker`; where only root may, a `docker` on PATH runs it through sudo.
_DOCKER_FOR_COMMANDS = """if [ "$DOCKER" != docker ]; then
  mkdir -p "$JOB_DIR/bin"
  printf '#!/bin/sh\\nexec %s docker "$@"\\n' "$AS_ROOT" > "$JOB_DIR/bin/docker"
  chmod +x "$JOB_DIR/bin/docker"
  PATH="$JOB_DIR/bin:$PATH"
fi
"""


# A shell that is not job.sh's own gets the commands in its environment, never as its argument: the text may hold
# `${{ secrets.NAME }}` values, and a process's arguments are in every user's process list (its environment is not).
COMMANDS_VAR = "DSTACK_COMMANDS"
_EVAL_COMMANDS = f'__dstack_commands=${COMMANDS_VAR}; unset {COMMANDS_VAR}; eval "$__dstack_commands"'


def _export_commands(job: JobSpec) -> str:
    text = "set -e\n" + "\n".join(job.commands)
    return f"{COMMANDS_VAR}={shlex.quote(text)}\nexport {COMMANDS_VAR}\n"


def _commands(job: JobSpec) -> str:
    """The commands, run by the shell that runs job.sh (bash, else sh), or by `shell:` when the task names one."""
    if job.shell is None:
        return "".join(command + "\n" for command in job.commands)
    shell = SHELLS.get(job.shell, job.shell)
    return f"{_export_commands(job)}exec {shlex.quote(shell)} -c {shlex.quote(_EVAL_COMMANDS)}\n"


def _workdir(job: JobSpec, base: str) -> str:
    if job.working_dir is None:
        return base
    if job.working_dir.startswith("/"):
        return job.working_dir
    return f"{base}/{job.working_dir}"


GIT_USERNAME_VAR = "DSTACK_GIT_USERNAME"
GIT_PASSWORD_VAR = "DSTACK_GIT_PASSWORD"
CLONE = "uploads/clone"

# dstack_place SRC DEST IF_EXISTS WHAT: moves an upload to its place. A repo meets an existing, non-empty DEST with
# its `if_exists` (error, skip); `files` merge into a folder and replace a file. What is there already is looked at by
# the shell: an upload to a new place in an existing folder (the repo, to `repo/`) starts one `mv` and nothing else.
_PLACE = """dstack_place() {
  if [ -f "$2" ] || { [ -d "$2" ] && [ -n "$(ls -A "$2")" ]; }; then
    case "$3" in
      error) echo "dstack: $4: $2 exists and is not empty (if_exists: error)" >&2; exit 1 ;;
      skip) echo "dstack: $4: $2 exists; left as it is (if_exists: skip)" >&2; return 0 ;;
    esac
  fi
  case $2 in
    */) mkdir -p "$(dirname "$2")" ;;
    */*) [ -d "${2%/*}/" ] || mkdir -p "${2%/*}/" ;;
  esac
  [ ! -d "$2" ] || rmdir "$2" 2>/dev/null || true
  if [ -d "$1" ] && [ -d "$2" ]; then cp -a "$1/." "$2/" && rm -rf "$1"
  elif [ -e "$2" ] || [ -L "$2" ]; then rm -rf "$2" && mv "$1" "$2"
  else mv "$1" "$2"
  fi
}
"""
ASKPASS_SCRIPT = b"""#!/bin/sh
case "$1" in Username*) printf '%s\\n' "$DSTACK_GIT_USERNAME" ;; *) printf '%s\\n' "$DSTACK_GIT_PASSWORD" ;; esac
"""


def _in_job_dir(relative: str) -> str:
    return '"$JOB_DIR"/' + shlex.quote(relative) if relative not in ("", ".") else '"$JOB_DIR"'


def upload_target(job: JobSpec, dest: str) -> Tuple[str, Optional[str]]:
    """Where an upload's `dest` is: (the host path as a shell word, the container path to mount it at or None).
    Relative paths follow the working directory; `~` is the home folder (`/root` in a container); LEGACY_REPO_DIR is
    the repo folder itself, which a relative `working_dir` is inside."""
    if dest == LEGACY_REPO_DIR:
        return _in_job_dir("repo"), None
    if dest == "~" or dest.startswith("~/"):
        if job.image:
            return "", posixpath.normpath("/root/" + dest[1:])
        return '"$HOME"' + (shlex.quote(dest[1:]) if dest[1:] else ""), None
    inside = in_job_folder(dest, job.working_dir)
    if inside is not None:
        if job.image and not (inside == "repo" or inside.startswith("repo/")):
            return "", posixpath.normpath(posixpath.join(CONTAINER_REPO, job.working_dir or "", dest))
        return _in_job_dir(inside), None
    absolute = posixpath.normpath(posixpath.join(job.working_dir or "/", dest))
    return ("", absolute) if job.image else (shlex.quote(absolute), None)


def _upload_steps(job: JobSpec) -> str:
    """The clone of a `url` repo, then each upload moved to its place (container paths are mounted instead)."""
    plan = job.uploads
    places = [(upload_name(i), u.dest, u.if_exists, u.what) for i, u in enumerate(plan.uploads)]
    lines = []
    if plan.clone is not None:
        clone = plan.clone
        options = ["--single-branch" if clone.single_branch else "--no-single-branch"]
        options += ["--branch", shlex.quote(clone.branch)] if clone.branch else []
        url = shlex.quote(clone.url)
        lines.append(f'command -v git >/dev/null 2>&1 || {{ echo "dstack: git is not installed on this host; '
                     f'it is needed to clone "{url} >&2; exit 1; }}\n')
        lines.append(f'rm -rf {CLONE}; if [ -f askpass ]; then export GIT_ASKPASS="$JOB_DIR/askpass"; fi\n')
        lines.append(f"GIT_TERMINAL_PROMPT=0 git clone -q {' '.join(options)} -- {url} {CLONE}\n")
        if clone.hash:
            lines.append(f"git -C {CLONE} checkout -q {shlex.quote(clone.hash)}\n")
        lines.append(f"unset GIT_ASKPASS {GIT_USERNAME_VAR} {GIT_PASSWORD_VAR}; rm -f askpass\n")
        places.insert(0, (CLONE, clone.dest, clone.if_exists, "repos[0]"))
    for source, dest, if_exists, what in places:
        host, _ = upload_target(job, dest)
        if host:
            lines.append(f"dstack_place {source} {host} {if_exists} {shlex.quote(what)}\n")
    return _PLACE + "".join(lines) if lines else ""


def _container_mounts(job: JobSpec) -> List[str]:
    sources = [upload_name(i) for i in range(len(job.uploads.uploads))]
    dests = [u.dest for u in job.uploads.uploads]
    if job.uploads.clone is not None:
        sources.insert(0, CLONE)
        dests.insert(0, job.uploads.clone.dest)
    mounts = []
    for source, dest in zip(sources, dests):
        _, container = upload_target(job, dest)
        if container:
            mounts += ["-v", f"$JOB_DIR/{source}:{container}"]
    return mounts


def _made(*folders: str) -> str:
    """Shell text that makes the folders (shell words) where any is missing: no `mkdir` started when all are there."""
    return " && ".join(f"[ -d {folder} ]" for folder in folders) + f" || mkdir -p {' '.join(folders)}\n"


def python_script(job: JobSpec) -> str:
    """A job without `image:`: in a venv of its Python, or (`docker: true`) with Docker at hand."""
    workdir = _workdir(job, "$JOB_DIR/repo")
    if workdir.startswith("$JOB_DIR/"):
        workdir = '"$JOB_DIR"/' + shlex.quote(workdir[len("$JOB_DIR/"):])
    else:
        workdir = shlex.quote(workdir)
    lines = [_preamble(job), _upload_steps(job), mount_steps(job.mounts, in_container=False)]
    if job.cluster_ssh is not None:
        lines.append(ssh_setup(job.cluster_ssh))
    if job.docker:
        lines += [_DOCKER_ACCESS.replace("{may_install}", "1" if job.may_install else ""), _DOCKER_FOR_COMMANDS]
    else:
        lines.append(python_setup(job.python, job.may_install))
    if job.nvcc:
        lines.append(_NVCC)
    # the repo folder, made once where no upload made it: with the working directory, which is in it unless
    # `working_dir` is absolute
    made = [workdir] if workdir.startswith('"$JOB_DIR"/repo') else ['"$JOB_DIR"/repo', workdir]
    lines += [_made(*made), f"cd {workdir}\n", _BEGUN, _commands(job)]
    return "".join(lines)


def docker_run_argv(job: JobSpec) -> List[str]:
    """The `docker run` command line. The container shares the host's network (one run per host), so its ports are
    the host's and no `-p` is needed. Env values are not on it: `-e NAME` passes the value the script exported."""
    argv = ["$DOCKER", "run", "--rm", "--init", "--name", f"dstack-{job.run_name}", "--network", "host"]
    if job.nvidia_gpus:
        argv += ["--gpus", "all"]
    if job.shm_size_gb:
        argv += ["--shm-size", f"{int(job.shm_size_gb * 1024)}m"]
    if job.privileged:
        argv += ["--privileged"]
    if job.user:
        argv += ["--user", job.user]
    for name in dict.fromkeys([*job.env, *HOST_VARS[:2]]):
        argv += ["-e", name]
    argv += ["-e", f"DSTACK_MPI_HOSTFILE={CONTAINER_HOSTFILE}",
             "-v", f"$JOB_DIR/mpi_hostfile:{CONTAINER_HOSTFILE}:ro"]
    if job.home_dir:
        argv += ["-e", f"HOME={job.home_dir}"]
    argv += ["-v", f"$JOB_DIR/repo:{CONTAINER_REPO}", *_container_mounts(job), *docker_volume_args(job.mounts),
             "-w", _workdir(job, CONTAINER_REPO)]
    entry = shlex.split(job.entrypoint) if job.entrypoint else []
    args: List[str] = []
    if entry:
        argv += ["--entrypoint", entry[0]]
        args = entry[1:] + (["\n".join(job.commands)] if job.commands else [])
    elif job.commands:  # the text goes by name, as env values do (job.sh exports it: _export_commands)
        argv += ["-e", COMMANDS_VAR, "--entrypoint", SHELLS.get(job.shell or "sh", job.shell or "sh")]
        args = ["-c", _EVAL_COMMANDS]
    return argv + [job.image] + args


def _quote(word: str) -> str:
    """Shell-quote, leaving `$JOB_DIR` to the shell and `$DOCKER` to split into its words."""
    if word == "$DOCKER":
        return word
    if word.startswith("$JOB_DIR"):
        return '"' + word.replace('"', '\\"') + '"'
    return shlex.quote(word)


# Docker needs root: a cloud image's `ubuntu` is not in the `docker` group but has passwordless sudo; a fleet host's
# user may be either. AS_ROOT is how this job becomes root ("" as root, sudo -n -E with passwordless sudo, `none`);
# DOCKER is plain `docker` where the user may use it, else `$AS_ROOT docker` (-E keeps the task's env for `-e NAME`).
_DOCKER_ACCESS = """if [ "$(id -u)" = 0 ]; then AS_ROOT=""; elif sudo -n true 2>/dev/null; then AS_ROOT="sudo -n -E"; \
else AS_ROOT=none; fi
as_root() {
  if [ "$AS_ROOT" = none ]; then echo "dstack: $(id -un) cannot become root (no passwordless sudo) to $*" >&2; exit 1; fi
  $AS_ROOT "$@"
}
if ! command -v docker >/dev/null 2>&1; then
  [ -n "{may_install}" ] || { echo "dstack: Docker is not installed on this machine; install it first" >&2; exit 1; }
  echo "dstack: installing Docker"
  curl -fsSL https://get.docker.com -o "$JOB_DIR/get-docker.sh"
  as_root sh "$JOB_DIR/get-docker.sh"
fi
if docker info >/dev/null 2>&1; then DOCKER=docker
elif [ "$AS_ROOT" != none ]; then DOCKER="$AS_ROOT docker"
else echo "dstack: $(id -un) may not use Docker: not root, not in the docker group, no passwordless sudo" >&2; exit 1
fi
"""
_NVIDIA_TOOLKIT = """if ! $DOCKER info 2>/dev/null | grep -qi "runtimes:.*nvidia"; then
  echo "dstack: installing the NVIDIA container toolkit"
  curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | \
as_root gpg --batch --yes --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | \
sed "s#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g" | \
as_root tee /etc/apt/sources.list.d/nvidia-container-toolkit.list >/dev/null
  as_root apt-get update -qq && as_root apt-get install -y -qq nvidia-container-toolkit
  as_root nvidia-ctk runtime configure --runtime=docker && as_root systemctl restart docker
fi
"""


def docker_script(job: JobSpec) -> str:
    lines = [_preamble(job), _upload_steps(job), _made("repo"), mount_steps(job.mounts, in_container=True),
             _DOCKER_ACCESS.replace("{may_install}", "1" if job.may_install else "")]
    if job.nvidia_gpus:
        lines.append(_NVIDIA_TOOLKIT)
    if job.registry_password is not None:
        server = registry_of(job.image) or ""
        login = ["$DOCKER", "login", "--username", f'"${REGISTRY_USERNAME_VAR}"', "--password-stdin"]
        login += [shlex.quote(server)] if server else []
        lines.append(f'printf "%s" "${REGISTRY_PASSWORD_VAR}" | ' + " ".join(login) + "\n")
        lines.append(f"unset {REGISTRY_PASSWORD_VAR} {REGISTRY_USERNAME_VAR}\n")
    image = shlex.quote(job.image)
    lines.append(f"$DOCKER image inspect {image} >/dev/null 2>&1 || $DOCKER pull {image}\n")
    lines.append(_BEGUN)
    if job.commands and not job.entrypoint:  # an entrypoint takes them as its argument, as dstack passes them
        lines.append(_export_commands(job))
    lines.append("exec " + " ".join(_quote(w) for w in docker_run_argv(job)) + "\n")
    return "".join(lines)


def job_script(job: JobSpec) -> str:
    return docker_script(job) if job.image else python_script(job)


