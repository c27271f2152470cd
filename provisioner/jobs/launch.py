"""How a job's processes start and stop on its host, as shell text: the launcher (the login profile read under a
bound), the detached wrapper (max_duration's deadline, the utilization monitor, the VM's power-off after the job),
the sweep of what escaped the job's process group, and the stop."""

from __future__ import annotations

import posixpath
import shlex
from typing import Dict, Optional, Tuple

from provisioner.jobs import dev_env
from provisioner.jobs.layout import HOST_CACHE, INACTIVE, PROFILE_ENV, TIMED_OUT, UNDERUTILIZED, job_folder
from provisioner.jobs.script import JOB_ID_VAR, JobSpec
from provisioner.jobs.spot_notice import NOTICE_FILE, watch_start, watch_stop
from provisioner.jobs.archive import unpack_command
from stacks.power_off import POWER_OFF_PATH

# `monitor.sh PGID MIN_PERCENT WINDOW_S INTERVAL_S`: samples each GPU's utilization with nvidia-smi every INTERVAL_S;
# when one has stayed below MIN_PERCENT for WINDOW_S, writes `stop_reason` and stops the job's process group
# (SIGTERM, SIGKILL 10 s later). util.<gpu> holds the last time that GPU was at or above the minimum.
MONITOR_SCRIPT = """#!/bin/sh
cd "$(dirname "$0")"
pg=$1 min=$2 window=$3 interval=$4
start=$(date +%s)
while kill -0 "$pg" 2>/dev/null; do  # the leader: its group may not exist yet (setsid has not run)
  now=$(date +%s)
  nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader 2>/dev/null | while IFS=, read -r gpu util; do
    gpu=$(echo "$gpu" | tr -d ' '); util=$(echo "$util" | tr -d ' %')
    case "$gpu$util" in ''|*[!0-9]*) continue ;; esac
    [ -f "util.$gpu" ] || echo "$start" > "util.$gpu"
    [ "$util" -ge "$min" ] && echo "$now" > "util.$gpu"
    if [ $((now - $(cat "util.$gpu"))) -ge "$window" ]; then
      echo "utilization_policy: GPU $gpu below $min% for ${window}s" > stop_reason
    fi
  done
  if [ -f stop_reason ]; then
    kill -TERM -"$pg" 2>/dev/null; sleep 10; kill -KILL -"$pg" 2>/dev/null; exit 0
  fi
  sleep "$interval"
done
"""


MIN_SAMPLE_INTERVAL_S = 5


MAX_SAMPLE_INTERVAL_S = 60


# The login profile's environment (its exported variables and, from bash, its functions) is read by a login shell in
# a session of its own and written to PROFILE_ENV, which job.sh sources first; what the profile prints goes to
# profile.log, not to the job's log (which holds the job's output only: a profile's greeting, or pyenv's complaints
# when two logins rehash at once, are no part of it). A profile that has not finished within
# $DSTACK_PROFILE_TIMEOUT seconds (a lock another shell left, a prompt, a slow network home) is cut short: one
# SIGTERM to its process group, so that its own traps release what it holds (`timeout` would signal twice and could
# kill a trap's `rm` of its lock), SIGKILL 2 s later; the job goes on with the basics, saying so in its log. A stop's
# SIGTERM cuts the profile short the same way, and the job ends there. A SIGKILL of the job's group does not reach the
# profile: it finishes as it would have, releasing what it holds. Its end is looked for every 10 ms (the job's first
# line waits on it).
# The environment read is kept in the jobs folder's HOST_CACHE (0600, as the job folder's files), its first line a
# comment holding the key of what the login read it from: the shell, the basics it started with, and each startup
# file bash and sh read (path, inode, size, time), on one line. The next job whose key is the same starts from the
# kept environment, without a login shell (~0.1 s of CPU, a pyenv init's 0.2-0.3 s of wall time); a profile that
# failed or was cut short is not kept. The launcher opens the kept file once, on fd 3, reads its key there and hands
# that open file to job.sh (DSTACK_PROFILE_FD), which sources it as /dev/fd/3: a job starting beside it that renames
# its own reading over the kept file (another key: a changed profile, a docker job's DOCKER_HOST) changes nothing
# for it. A job that becomes root gets a copy in PROFILE_ENV instead: sudo closes what it is handed.
# The launcher runs in the shell that runs job.sh (bash where there is one, as the login's `$sh`: the wrapper picks it
# the same way, as S) and ends by sourcing job.sh, its own variables unset and without arguments ($0 is ./job.sh, as
# when job.sh was run): one shell started per job where there were two (a `sh` for the launcher, which exec'd bash).
PROFILE_TIMEOUT_S = 10


_LOGIN = """sh=sh; if command -v bash >/dev/null; then sh=bash; fi
case $1 in ''|*[!0-9]*) echo "dstack: DSTACK_PROFILE_TIMEOUT=$1 is not a whole number of seconds; the login \
profile gets DEFAULT_S"; set -- DEFAULT_S ;; esac
i=0; n=$(($1 * 100)); term=; stop=; kept=
cache=../HOST_CACHE/PROFILE_ENV
key="# $sh|$HOME|$USER|$LOGNAME|$SHELL|$PATH|$LANG|${DOCKER_HOST:-}|${DOCKER_CONFIG:-}"
files=$(stat -L -c '%n %i %s %y' /etc/profile /etc/profile.d/* /etc/bash.bashrc /etc/environment "$HOME/.bash_profile" \
"$HOME/.bash_login" "$HOME/.profile" "$HOME/.bashrc" 2>/dev/null)
set -f; ifs=$IFS IFS='
'; for line in $files; do key="$key|$line"; done; IFS=$ifs; set +f
if [ -O .. ] && [ -f "$cache" ] && { command exec 3< "$cache"; } 2>/dev/null && { first=; IFS= read -r first <&3; } \
&& [ "$first" = "$key" ] && [ -r /dev/fd/3 ]; then
  echo "dstack: the login profile's environment as an earlier job on this host read it (kept in the jobs folder's \
HOST_CACHE while the profile's files are unchanged)" > profile.log
  KEPT
fi
if [ -z "$kept" ]; then
exec 3<&-
trap 'stop=1; n=0' TERM
setsid "$sh" -l -c 'unset PWD OLDPWD
{ export -p; declare -f; declare -F | sed -n "s/^declare -fx /export -f /p"; } 2>/dev/null >"$0.tmp" && mv "$0.tmp" "$0"
' "$PWD/PROFILE_ENV" > profile.log 2>&1 & p=$!
while kill -0 $p 2>/dev/null; do
  if [ -z "$term" ] && [ $i -ge $n ]; then kill -TERM -$p 2>/dev/null; term=$i
  elif [ -n "$term" ] && [ $i -ge $((term + 200)) ]; then kill -KILL -$p 2>/dev/null; fi
  sleep 0.01; i=$((i + 1))
done
[ -z "$stop" ] || exit 143
trap - TERM
wait $p; code=$?
if [ "$code" = 0 ] && [ -z "$term" ] && [ -f PROFILE_ENV ] && [ -O .. ] && mkdir -p ../HOST_CACHE 2>/dev/null; then
  { echo "$key"; cat PROFILE_ENV; } > "$cache.$$" && mv "$cache.$$" "$cache" || rm -f "$cache.$$"
fi
if [ ! -f PROFILE_ENV ]; then
  why="failed (exit $code)"; [ -z "$term" ] || why="did not finish within ${1}s (DSTACK_PROFILE_TIMEOUT)"
  echo "dstack: the login profile ($sh -l) $why; the job goes on without it, from HOME, USER, LOGNAME, SHELL, PATH and \
LANG alone (what the profile printed is in $PWD/profile.log)"
fi
fi
unset sh i n term stop kept cache key files ifs line first p code why
set --
. ./job.sh
""".replace("DEFAULT_S", str(PROFILE_TIMEOUT_S)).replace("HOST_CACHE", HOST_CACHE)

# On a kept environment's key: job.sh sources the open file itself; a job that becomes root reads a copy of it.
_KEPT_OPEN = 'DSTACK_PROFILE_FD=3; kept=1'
_KEPT_COPY = 'cat /dev/fd/3 > PROFILE_ENV && exec 3<&- && kept=1'


def _launcher(job: JobSpec) -> str:
    """The job's first process. `python:` and `docker:` jobs start from what the user's login profile sets (once per
    job), so the PATH it sets (conda, ~/.local/bin, pyenv) applies as in an SSH session, from an empty environment: a
    login shell's basics and the env file only. `image:` jobs only drive docker (the container gets `-e` names)."""
    if job.image:
        return "sh ./job.sh"
    basics = ('env -i HOME="$HOME" USER="${USER:-$(id -un)}" LOGNAME="${LOGNAME:-$(id -un)}" SHELL="${SHELL:-/bin/sh}" '
              'PATH="$PATH" LANG="${LANG:-C.UTF-8}"')
    if job.docker:
        basics += ' ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"} ${DOCKER_CONFIG:+DOCKER_CONFIG="$DOCKER_CONFIG"}'
    login = _LOGIN.replace("KEPT", _KEPT_COPY if job.needs_root else _KEPT_OPEN).replace("PROFILE_ENV", PROFILE_ENV)
    return f'{basics} "$S" -c {shlex.quote(login)} ./job.sh "${{DSTACK_PROFILE_TIMEOUT:-{PROFILE_TIMEOUT_S}}}"'


def sweep_command(job_id: str) -> str:
    """Kills every process whose environment carries the job's id: what escaped its process group."""
    return (f'for f in $(grep -lsaF "{JOB_ID_VAR}={job_id}" /proc/[0-9]*/environ 2>/dev/null); do '
            'p=${f#/proc/}; [ "${p%/environ}" != "$$" ] && kill -KILL "${p%/environ}" 2>/dev/null; done; true')


# `dstack logs --since` for every run, attached or not: while the job runs, the log's size is sampled every
# SIZES_INTERVAL_S and each change appended to OUTPUT_SIZES as `TIME SIZE` (the host's clock; by TIME the log had SIZE
# bytes), once more when the job has ended. The job writes its log itself, so nothing stands in its output's way; a
# line's arrival is known to within the interval. provisioner.jobs.control.read_output_times reads it.
# A size is read (stat) only where the shell can not tell it: a missing or empty log has 0 bytes (`-s`), and one older
# than SIZES_SAMPLED, touched (a builtin's truncation) just before each size is read, has the size last read (`-nt`,
# at whatever precision the shell and the file system's clock give: a tie counts as a change). A quiet job's sample
# is one `sleep`.
OUTPUT_SIZES = "output.sizes"
SIZES_SAMPLED = "output.sampled"
SIZES_INTERVAL_S = 0.5
_SIZE = f's=$(stat -c %s output.log 2>/dev/null); echo "$(date +%s.%N) ${{s:-0}}" >> {OUTPUT_SIZES}'
_SIZES_START = ("{ trap 'kill $w 2>/dev/null; exit 0' TERM; o=0; while kill -0 $J 2>/dev/null; do "
                f"if [ ! -s output.log ]; then s=0; elif [ {SIZES_SAMPLED} -nt output.log ]; then s=$o; "
                f"else : > {SIZES_SAMPLED}; s=$(stat -c %s output.log 2>/dev/null); s=${{s:-0}}; fi; "
                f'[ "$s" = "$o" ] || {{ echo "$(date +%s.%N) $s" >> {OUTPUT_SIZES}; o=$s; }}; '
                f"sleep {SIZES_INTERVAL_S} & w=$!; wait $w; done; }} & T=$!; ")
_SIZES_STOP = f"kill $T 2>/dev/null; {_SIZE}; "

# What may hold secret values in the job folder, removed once the job has ended (before its exit code is written):
# the script (the commands, with `${{ secrets.X }}` filled in), the env file (emptied when read, but a job stopped in
# its login profile never reads it), the git askpass helper and a cluster's private key.
SECRET_HOLDERS = ("job.sh", "env", "askpass", "cluster_key")


# A job that becomes root (JobSpec.needs_root) is refused before anything is unpacked where the login user can not;
# where it can, `as_root` in the job folder says how ("" as root, else "sudo -n"): the wrapper and a stop reach the
# job's root processes (their signals and the sweep) and give the folder back to the user after it.
ROOT_CHECK = ('if [ "$(id -u)" = 0 ]; then R=""; elif sudo -n true 2>/dev/null; then R="sudo -n"; else '
              'echo "$(id -un) can not become root here (it is not root and has no passwordless sudo), which WHAT '
              'without image: needs" >&2; exit 1; fi; ')


def root_check(job: JobSpec) -> str:
    what = " and ".join(w for w, used in (("privileged: true", job.privileged),
                                           ("resources.shm_size", job.shm_size_gb)) if used)
    return ROOT_CHECK.replace("WHAT", what)


# A job with nothing to upload or clone has only its folder's own few files (job.sh, the env file, a cluster's keys
# and `ssh`, the monitors): the start command writes them itself, each with the shell's builtin printf, instead of
# unpacking a tar that came as base64 through the kept shell (`base64 -d` and `tar`: two of the ~20 programs a host
# started per job on the way to its first line). Their text is the command's, which reaches the host's shell on its
# stdin (provisioner.host.ssh), so no process list shows it: a builtin's arguments are no process's (an external
# printf's would be, so a shell without the builtin refuses, saying INLINE_REFUSED, and the archive goes instead). They
# are made 0600 by the umask; the executable ones (a cluster's `bin/ssh`, the monitors) are made 0700 by one `chmod`.
# Text that is not UTF-8, holds a NUL or passes INLINE_MAX goes as the archive; so does a transport that runs a
# command as an argument, in the process list (LocalTransport.command_listed).
INLINE_MAX = 256 * 1024
INLINE_REFUSED = "dstack: the host's shell has no builtin printf"
_PRINTF_CHECK = (f"case $(command -V printf 2>/dev/null) in *builtin*) ;; *) echo {shlex.quote(INLINE_REFUSED)} >&2; "
                 "exit 1 ;; esac; ")
FolderFiles = Dict[str, Tuple[bytes, int]]  # name in the job folder: (content, mode)


def written_inline(job: JobSpec, files: FolderFiles) -> bool:
    """Whether the start command can write the job folder's files itself (see INLINE_MAX)."""
    if job.uploads.uploads or job.uploads.clone is not None:
        return False
    if sum(len(data) for data, _ in files.values()) > INLINE_MAX:
        return False
    for data, _ in files.values():
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
        if b"\0" in data:
            return False
    return True


def _writes(files: FolderFiles) -> str:
    """Shell text that writes `files` in the job folder: printf for each (a builtin), one chmod for the executables."""
    writes = [f"printf '%s' {shlex.quote(data.decode())} > {shlex.quote(name)}" for name, (data, _) in files.items()]
    executables = [shlex.quote(name) for name, (_, mode) in files.items() if mode & 0o100]
    if executables:
        writes.append(f"chmod 700 {' '.join(executables)}")
    return " && ".join(writes)


def start_command(job: JobSpec, inline: Optional[FolderFiles] = None) -> str:
    """Unpack (tar on stdin), or write the `inline` files (written_inline), and start the job detached; prints the
    job's process group id."""
    folder = job_folder(job.run_name)
    check = root_check(job) if job.needs_root else ""
    # What a job that ran in this folder before left, removed before the new one is unpacked (one `rm`); files written
    # inline too, which would otherwise keep their old mode.
    stale = ["uploads", "repo", "exit_code", "pid", "begun", "output.log", SIZES_SAMPLED, NOTICE_FILE, PROFILE_ENV]
    subfolders = sorted({posixpath.dirname(name) for name in inline or {}} - {""})
    if inline is not None:
        stale += [shlex.quote(name) for name in inline]
        check = _PRINTF_CHECK + check
    mark_root = ' && printf "%s" "$R" > as_root' if job.needs_root else ""
    if not job.needs_root:
        stale.append("as_root")
    limit = f"timeout -s TERM -k 10 {job.max_duration_s} " if job.max_duration_s else ""
    monitor_start = monitor_stop = ""
    if job.utilization:
        low, window = job.utilization
        interval = min(max(window // 10, MIN_SAMPLE_INTERVAL_S), MAX_SAMPLE_INTERVAL_S)
        stale += ["stop_reason", "util.*"]
        monitor_start = f"./monitor.sh $J {low} {window} {interval} & M=$!; "
        monitor_stop = f'kill $M 2>/dev/null; [ -f stop_reason ] && {{ code={UNDERUTILIZED}; by=utilization_policy; }}; '
    authorize = ""
    if job.dev is not None:  # its key's line goes with the job: added before it starts, removed once it has ended
        authorize = f" && {{ {dev_env.authorize_command(job.dev.public_key)}; }}"
        if job.dev.inactivity_s is not None:
            interval = dev_env.sample_interval(job.dev.inactivity_s)
            stale.append(dev_env.INACTIVE_FILE)
            monitor_start += f"./sessions.sh $J {job.dev.inactivity_s} {interval} & S=$!; "
            monitor_stop += (f"kill $S 2>/dev/null; [ -f {dev_env.INACTIVE_FILE} ] && "
                             f"{{ code={INACTIVE}; by=inactivity_duration; }}; ")
        monitor_stop += f"{dev_env.revoke_command(job.dev.public_key)}; rm -f session.env; "
    monitor_start += watch_start(job.spot_notice)  # the spot interruption notice (provisioner.jobs.spot_notice)
    monitor_stop += watch_stop(job.spot_notice)
    started = "started=$(date +%s); " if job.max_duration_s else ""
    # The log is opened to append (O_APPEND): a line the notice's watcher adds lands after the job's, not under them.
    # The job's process group id goes to the pid file (a stop and a log's reader read it there) and to the wrapper's
    # stdout, which the start reads to its end: the wrapper then turns its stdout away, and the start returns. SIGPIPE
    # is ignored only for that line (were the start gone, the wrapper would go on); the job keeps the default.
    shell = "" if job.image else "S=sh; if command -v bash >/dev/null; then S=bash; fi; "  # as the launcher's $sh
    wrapper = (f": > {OUTPUT_SIZES}; {started}by=; {shell}setsid {limit}{_launcher(job)} >> output.log 2>&1 "
               "< /dev/null & "
               "J=$!; echo $J > pid; trap '' PIPE; echo $J; trap - PIPE; exec > /dev/null; "
               f"{_SIZES_START}{monitor_start}wait $J; code=$?; {_timed_out(job)}{_SIZES_STOP}"
               f"{monitor_stop}{_end_of_job(job)}rm -f {' '.join(SECRET_HOLDERS)} {SIZES_SAMPLED}; "
               "echo $code $by > exit_code.tmp; mv exit_code.tmp exit_code")
    if job.power_off_after_exit_min:
        minutes = job.power_off_after_exit_min
        # The VM's own idle watchdog (cloud-init writes it: a GCP VM deletes itself), else a plain scheduled
        # shutdown; the start of the next job on a reused instance cancels what an earlier one scheduled.
        wrapper = (f"{{ sudo -n {POWER_OFF_PATH} --cancel-idle || {POWER_OFF_PATH} --cancel-idle || "
                   f"sudo -n shutdown -c || shutdown -c; }} > /dev/null 2>&1; {wrapper}"
                   f"; sudo -n {POWER_OFF_PATH} --idle {minutes} || {POWER_OFF_PATH} --idle {minutes} || "
                   f"sudo -n shutdown -h +{minutes} || shutdown -h +{minutes}")
    # The wrapper and all it starts ignore SIGHUP (as under nohup): the job's own session has no terminal to lose,
    # and what the job's commands do with a hangup stays as it was.
    wrapper = f"trap '' HUP; {wrapper}"
    # umask first: the jobs folder, the run's folder and everything the job writes there are the user's alone.
    # The last job's log goes before the command returns: the launch opens the new one in the background, and a
    # follower that reads at once (a retry) would read the old log's lines again. A new folder has nothing to remove.
    # A job with nothing to upload or clone has its repo folder (its working directory's) made with its own folder:
    # job.sh then starts no `mkdir` of its own.
    # Folders that inline files go in are made with it, or (a folder used before) where missing.
    made = folder if job.uploads.uploads or job.uploads.clone is not None else f"{folder}/repo"
    made = " ".join([made] + [f"{folder}/{shlex.quote(name)}" for name in subfolders])
    unpack = unpack_command(job.uploads) if inline is None else _writes(inline)
    missing = "".join(f" && {{ [ -d {shlex.quote(name)} ] || mkdir -p {shlex.quote(name)}; }}" for name in subfolders)
    return (f"{check}{{ umask 077 && if cd {folder} 2>/dev/null; then rm -rf {' '.join(stale)}{missing}; "
            f"else mkdir -p {made} && cd {folder}; fi && {unpack}{mark_root}{authorize}; }} "
            "|| exit 1; "
            f"J=$(setsid sh -c {shlex.quote(wrapper)} 2>/dev/null < /dev/null &); "
            '[ -n "$J" ] || { echo "the job did not start (its wrapper gave no process group)" >&2; exit 1; }; echo "$J"')


def _timed_out(job: JobSpec) -> str:
    """timeout(1) exits 124 when it stopped the job with SIGTERM (137 when SIGKILL had to follow) and also when the
    commands exit 124 themselves: only a job that ran its whole max_duration was stopped by it (`by`, ENDED_BY)."""
    if not job.max_duration_s:
        return ""
    return (f'case $code in 124|137) [ $(( $(date +%s) - started )) -ge {job.max_duration_s} ] && '
            f'{{ code={TIMED_OUT}; by=max_duration; }};; esac; ')


def _end_of_job(job: JobSpec) -> str:
    """What the job left is killed (its process group, then what escaped it). After a job that ran as root, through
    the way `as_root` says, and the job folder is the login user's again (what the commands wrote there)."""
    if not job.needs_root:
        return f"kill -KILL -$J 2>/dev/null; {sweep_command(job.job_id)}; "
    root = "R=$(cat as_root 2>/dev/null); "
    return (f"{root}$R sh -c {shlex.quote('kill -KILL -$0 2>/dev/null; ' + sweep_command(job.job_id))} $J; "
            '[ -z "$R" ] || $R chown -R "$(id -u):$(id -g)" . 2>/dev/null; ')


def stop_command(run_name: str, grace: Optional[int]) -> str:
    """SIGTERM, then SIGKILL after `grace` seconds; with None (`stop_duration: off`) SIGTERM alone: the job takes
    as long as it needs, and the command returns at once."""
    folder = job_folder(run_name)
    container = shlex.quote(f"dstack-{run_name}")
    docker_stop = (f"{{ docker stop -t SECONDS {container} || sudo -n docker stop -t SECONDS {container}; }} "
                   ">/dev/null 2>&1")
    # k SIGNAL: to the job's process group; also through `as_root` where the job runs as root by it (sudo).
    prefix = (f"cd {folder} 2>/dev/null || exit 0; [ -s pid ] || exit 0; PG=$(cat pid); R=$(cat as_root 2>/dev/null); "
              'k() { kill -$1 -$PG 2>/dev/null; r=$?; [ -z "$R" ] || { $R kill -$1 -- -$PG 2>/dev/null; r=$?; }; '
              "return $r; }; ")
    if grace is None:
        return (prefix + "if command -v docker >/dev/null 2>&1; then "
                f"setsid nohup sh -c {shlex.quote(docker_stop.replace('SECONDS', str(OFF_DOCKER_STOP_S)))} "
                "</dev/null >/dev/null 2>&1 & fi; k TERM; true")
    return (prefix + f"if command -v docker >/dev/null 2>&1; then {docker_stop.replace('SECONDS', str(grace))} || true; fi; "
            f"k TERM || true; "
            f"i=0; while k 0 && [ $i -lt {grace * 10} ]; do sleep 0.1; i=$((i+1)); done; "
            f"k KILL || true; "
            f"i=0; while [ ! -f exit_code ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; "
            f"cat exit_code 2>/dev/null || true")


OFF_DOCKER_STOP_S = 7 * 86400  # `docker stop` needs some bound: a week stands for none
