"""A dev environment's job on its host: `init`, then a wait that only a stop, `max_duration` or
`inactivity_duration` ends; the SSH sessions you open into it, and the watchdog that counts them.

- Sessions: the run gets a key of its own (provisioner.runs.dev_environments). Its line in the host user's
  authorized_keys (`$DSTACK_AUTHORIZED_KEYS` where sshd sets it, as for cluster keys) is added by the job's start and
  removed by the job's end, on the host itself; it forces `login.sh` of the job folder, so every session with it
  (`ssh NAME`, an IDE, `scp`, sftp) starts in the run's working directory with the run's environment (and venv), or
  inside the run's container for `image:`. Each session is marked with DSTACK_DEV_SESSION=<job id> (and the job's
  DSTACK_JOB_ID, so the sweep at the job's end closes what is still open).
- Inactivity: `sessions.sh` (next to `monitor.sh`) counts the marked processes that have an sshd among their
  nearest ancestors, i.e. live SSH sessions; nohup'd leftovers of a closed session have none. From the moment the
  environment is ready (the READY line in its log), `inactivity_duration` seconds with none end the job (exit code
  INACTIVE), whether or not any dstack client runs. An attached `dstack apply` or `dstack attach` holds a marked
  session of its own (`hold_command`): being attached is activity, as in dstack.
- `version:` with an `ide:` downloads that IDE server on the host before `init` (from the host's own network); where
  the download fails the log says so and the IDE installs its server itself when it first connects.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from provisioner.jobs.cluster_ssh import AUTHORIZED_KEYS
from provisioner.jobs.layout import job_folder

SESSION_VAR = "DSTACK_DEV_SESSION"
CONTAINER_WORKDIR = "/workflow"  # provisioner.jobs.script.CONTAINER_REPO: the repo's place in an image's container
KEEP_WAITING = "while :; do sleep 3600; done"
INACTIVE_FILE = "inactive"  # written by sessions.sh when inactivity_duration ends the job


@dataclass(frozen=True)
class DevSession:
    """What a dev environment's job needs beyond a task's: the run's public key line, its inactivity limit."""
    public_key: str  # `ssh-ed25519 AAAA... comment`
    inactivity_s: Optional[int] = None


def ready_line(run_name: str) -> str:
    """The line the job prints once `init` is done: what `apply` waits for, and what starts the inactivity clock."""
    return f"dstack: dev environment {run_name} is ready"


# An IDE's server: (download URL with $arch, the folder it goes to under ~); dstack installs the same ones.
IDE_SERVERS = {
    "vscode": ("VS Code", "https://update.code.visualstudio.com/commit:{version}/server-linux-$arch/stable",
               ".vscode-server/bin/{version}"),
    "cursor": ("Cursor", "https://cursor.blob.core.windows.net/remote-releases/{version}/vscode-reh-linux-$arch.tar.gz",
               ".cursor-server/cli/servers/Stable-{version}/server"),
    "windsurf": ("Windsurf", "https://windsurf-stable.codeiumdata.com/linux-reh-$arch/stable/{commit}/"
                             "windsurf-reh-linux-$arch-{version}.tar.gz", ".windsurf-server/bin/{commit}"),
}
IDE_NAMES = {"vscode": "VS Code", "cursor": "Cursor", "windsurf": "Windsurf", "zed": "Zed"}


def ide_url(ide: str, host: str, path: str) -> str:
    """The link that opens the environment in the IDE over the `Host NAME` entry."""
    if ide == "zed":
        return f"zed://ssh/{host}{path}"
    return f"{ide}://vscode-remote/ssh-remote+{host}{path}"


def ide_server_command(ide: Optional[str], version: Optional[str]) -> Optional[str]:
    """One shell command that installs the pinned IDE server and never fails the job: where the host cannot download
    it, it says so in the log. None where nothing is pinned; zed downloads its server itself, on connect."""
    if not ide or not version:
        return None
    if ide not in IDE_SERVERS:
        return (f"echo 'dstack: {IDE_NAMES.get(ide, ide)} installs its remote server itself when it connects; "
                "`version` pins nothing'")
    name, url, folder = IDE_SERVERS[ide]
    release, _, commit = version.partition("@")
    url, folder = url.format(version=release, commit=commit), folder.format(version=release, commit=commit)
    target = f'"$HOME"/{shlex.quote(folder)}'
    fetch = ('{ if command -v curl >/dev/null 2>&1; then curl -fsSL --connect-timeout 20 --max-time 600 "$url"; '
             'elif command -v wget >/dev/null 2>&1; then wget -q -T 20 -O - "$url"; else echo "no curl or wget" >&2; '
             'false; fi; }')
    return (f'arch=x64; [ "$(uname -m)" = aarch64 ] && arch=arm64; url="{url}"; '
            f'if [ -d {target}/bin ]; then echo "dstack: the {name} server {release} is installed"; '
            f'elif mkdir -p {target} && {fetch} | '
            f'tar --no-same-owner -xz --strip-components=1 -C {target} 2>/dev/null; then '
            f'echo "dstack: installed the {name} server {release}"; '
            f'else rm -rf {target}; echo "dstack: could not install the {name} server {release} from $url (the host '
            f'cannot download it); {name} installs its server itself when it first connects"; fi')


def job_commands(run_name: str, setup: List[str], init: List[str], ide: Optional[str], version: Optional[str]
                 ) -> List[str]:
    """The job's commands: dstack's legacy `setup`, the IDE server, `init`, the READY line, then the wait."""
    install = ide_server_command(ide, version)
    return [*setup, *([install] if install else []), *init, f"echo {shlex.quote(ready_line(run_name))}",
            KEEP_WAITING]


def session_workdir(working_dir: Optional[str], in_container: bool) -> str:
    """Where a session starts: the repo's folder (the job folder's `repo`, `/workflow` in a container), or the
    task's `working_dir` (relative to it, or absolute)."""
    base = CONTAINER_WORKDIR if in_container else "$JOB_DIR/repo"
    if working_dir is None:
        return base
    return working_dir if working_dir.startswith("/") else posixpath.join(base, working_dir)


def _quoted_workdir(workdir: str) -> str:
    if workdir.startswith("$JOB_DIR"):
        return '"$JOB_DIR"' + (shlex.quote(workdir[len("$JOB_DIR"):]) if workdir != "$JOB_DIR" else "")
    return shlex.quote(workdir)


_LOGIN_HEAD = """#!/bin/sh
# Written by dstack for dev environment {run}: the forced command of its key (authorized_keys), so every SSH session
# with that key starts here.
JOB_DIR=$(cd "$(dirname "$0")" && pwd)
{var}={job_id}; DSTACK_JOB_ID={job_id}; export {var} DSTACK_JOB_ID
case "$SSH_ORIGINAL_COMMAND" in internal-sftp*)
  for s in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server \\
/usr/libexec/sftp-server; do [ -x "$s" ] && exec "$s"; done
  echo "dstack: this host has no sftp-server" >&2; exit 1 ;;
esac
"""

# On the host: the run's environment and venv, in its working directory; a login shell as `ssh` gives one (bash reads
# session.rc, which reads the login profile first and then puts the venv back on PATH: Debian's /etc/profile resets it).
_LOGIN_HOST = """if [ -f "$JOB_DIR/session.env" ]; then set -a; . "$JOB_DIR/session.env"; set +a; fi
if [ -x "$JOB_DIR/venv/bin/python" ]; then VIRTUAL_ENV="$JOB_DIR/venv"; PATH="$VIRTUAL_ENV/bin:$PATH"; \
export VIRTUAL_ENV PATH; fi
DSTACK_WORKDIR={workdir}; export DSTACK_WORKDIR
cd "$DSTACK_WORKDIR" 2>/dev/null || cd "$JOB_DIR/repo" 2>/dev/null || true
sh=${{SHELL:-/bin/sh}}
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "$sh" -c "$SSH_ORIGINAL_COMMAND"; fi
case "${{sh##*/}}" in bash) exec "$sh" --rcfile "$JOB_DIR/session.rc" -i ;; esac
exec "$sh" -l
"""
SESSION_RC = """# Written by dstack: a login shell's profile, then the dev environment's venv and working directory.
[ -f /etc/profile ] && . /etc/profile
for f in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do [ -f "$f" ] && { . "$f"; break; }; done
[ -n "$VIRTUAL_ENV" ] && case ":$PATH:" in *":$VIRTUAL_ENV/bin:"*) ;; *) PATH="$VIRTUAL_ENV/bin:$PATH" ;; esac
cd "$DSTACK_WORKDIR" 2>/dev/null || true
"""
# In the container: `docker exec` as the job drives docker (itself, else through sudo).
_LOGIN_CONTAINER = """if docker info >/dev/null 2>&1; then D=docker; else D="sudo -n docker"; fi
T=; [ -t 0 ] && T=-t
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
  exec $D exec -i $T -w {workdir} {container} sh -c "$SSH_ORIGINAL_COMMAND"
fi
login='if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l'
exec $D exec -i $T -w {workdir} {container} sh -c "$login"
"""


def login_script(run_name: str, job_id: str, working_dir: Optional[str], image: Optional[str]) -> str:
    head = _LOGIN_HEAD.format(run=run_name, var=SESSION_VAR, job_id=job_id)
    if image:
        return head + _LOGIN_CONTAINER.format(workdir=shlex.quote(session_workdir(working_dir, True)),
                                              container=shlex.quote(f"dstack-{run_name}"))
    return head + _LOGIN_HOST.format(workdir=_quoted_workdir(session_workdir(working_dir, False)))


# `sessions.sh PGID LIMIT_S INTERVAL_S`: ends the job's process group (SIGTERM, SIGKILL 10 s later) once no marked SSH
# session has been open for LIMIT_S seconds since the environment became ready; `last_session` holds the last time one
# was (or the time it became ready).
_SESSIONS = """#!/bin/sh
cd "$(dirname "$0")"
pg=$1 limit=$2 interval=$3
last=$(date +%s); ready=
open_session() {
  for f in $(grep -lsaF "VAR=JOB_ID" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}; p=${p%/environ}; i=0
    while [ $i -lt 3 ]; do
      p=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null)
      case "$p" in ''|0|1) break ;; esac
      case "$(cat "/proc/$p/comm" 2>/dev/null)" in sshd*) return 0 ;; esac
      i=$((i + 1))
    done
  done
  return 1
}
nap=; trap '[ -z "$nap" ] || kill "$nap" 2>/dev/null; exit 0' TERM  # the job's end leaves no sleep behind
while kill -0 "$pg" 2>/dev/null; do
  now=$(date +%s)
  if [ -z "$ready" ]; then
    last=$now; grep -qxF READY output.log 2>/dev/null && ready=1
  elif open_session; then last=$now
  fi
  echo "$last" > last_session.tmp && mv last_session.tmp last_session
  if [ -n "$ready" ] && [ $((now - last)) -ge "$limit" ]; then
    echo "no SSH connection for ${limit}s (inactivity_duration)" > INACTIVE
    kill -TERM -"$pg" 2>/dev/null; i=0
    while kill -0 -"$pg" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL -"$pg" 2>/dev/null; exit 0
  fi
  sleep "$interval" & nap=$!; wait "$nap"; nap=
done
"""


def sessions_script(run_name: str, job_id: str) -> str:
    return (_SESSIONS.replace("VAR", SESSION_VAR).replace("JOB_ID", job_id)
            .replace("READY", shlex.quote(ready_line(run_name))).replace("INACTIVE", INACTIVE_FILE))


def sample_interval(limit_s: int) -> int:
    """How often sessions.sh looks: a tenth of the limit, between 1 s and 30 s."""
    return max(1, min(limit_s // 10, 30))


def folder_files(run_name: str, job_id: str, working_dir: Optional[str], image: Optional[str],
                 env: Dict[str, str]) -> Dict[str, Tuple[bytes, int]]:
    """What a dev environment's job folder gets besides a task's: login.sh, sessions.sh, and (on the host) the
    environment its sessions start with and the shell profile that keeps its venv."""
    files = {"login.sh": (login_script(run_name, job_id, working_dir, image).encode(), 0o700),
             "sessions.sh": (sessions_script(run_name, job_id).encode(), 0o700)}
    if not image:
        files["session.env"] = ("".join(f"{name}={shlex.quote(value)}\n" for name, value in env.items()).encode(),
                                0o600)
        files["session.rc"] = (SESSION_RC.encode(), 0o600)
    return files


def _key_blob(public_key: str) -> str:
    return public_key.split()[1]


def authorize_command(public_key: str) -> str:
    """Run in the job folder before the job starts: the key's line, forcing login.sh, added once."""
    return ('D=$(pwd -P); case "$D" in *[!A-Za-z0-9_./-]*) echo "dstack: the job folder $D holds characters that an '
            'authorized_keys command cannot: set DSTACK_JOBS_DIR (sshd SetEnv) to a plain path" >&2; exit 1 ;; esac; '
            f'F={AUTHORIZED_KEYS}; mkdir -p "$(dirname "$F")" && touch "$F" && '
            f'{{ grep -qF {shlex.quote(_key_blob(public_key))} "$F" || '
            f'printf \'command="%s/login.sh" %s\\n\' "$D" {shlex.quote(public_key)} >> "$F"; }}')


def revoke_command(public_key: str) -> str:
    """The key's line removed from authorized_keys (the file itself, its mode and owner, kept)."""
    blob = shlex.quote(_key_blob(public_key))
    return (f'F={AUTHORIZED_KEYS}; if [ -f "$F" ] && grep -qF {blob} "$F"; then '
            f'grep -vF {blob} "$F" > "$F.dstack"; cat "$F.dstack" > "$F"; rm -f "$F.dstack"; fi')


def hold_command(run_name: str) -> str:
    """A session that lasts as long as its channel (what an attached dstack holds): marked as login.sh marks them."""
    folder = job_folder(run_name)
    return (f'm=$(sed -n "s/^{SESSION_VAR}=\\([0-9a-f]*\\);.*/\\1/p" {folder}/login.sh 2>/dev/null); '
            f'[ -n "$m" ] || exit 1; exec env {SESSION_VAR}="$m" DSTACK_JOB_ID="$m" sh -c "exec cat > /dev/null"')


def state_command(run_name: str) -> str:
    """The job folder's absolute path, whether the environment is ready, and (on stderr) the exit code once ended."""
    folder = job_folder(run_name)
    return (f"cd {folder} 2>/dev/null || exit 0; pwd -P; {{ cat exit_code 2>/dev/null || true; }} >&2; "
            f"grep -qxF {shlex.quote(ready_line(run_name))} output.log 2>/dev/null && echo ready; true")
