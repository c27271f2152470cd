"""A task's job on its host, each step one round trip: its folder sent and the job started detached, its log read from
a byte on, its state asked, the jobs still running listed, the job stopped."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from provisioner.host.transport import Transport, TransportError
from provisioner.jobs import dev_env
from provisioner.jobs.cluster_ssh import job_files
from provisioner.jobs.launch import (INLINE_REFUSED, MONITOR_SCRIPT, OUTPUT_SIZES, start_command, stop_command,
                                    written_inline)
from provisioner.jobs.layout import BEGUN_FILE, job_folder, parse_exit_code
from provisioner.jobs.script import ASKPASS_SCRIPT, GIT_PASSWORD_VAR, GIT_USERNAME_VAR, JobSpec, env_file, job_script
from provisioner.jobs.spot_notice import NOTICE_FILE, NOTICE_SCRIPT, NOTICE_SCRIPT_NAME, notice_read, parse_notice
from provisioner.jobs.archive import archive_stream
from provisioner.jobs.uploads import git_credentials


def job_folder_files(job: JobSpec) -> Dict[str, Tuple[bytes, int]]:
    """job.sh, the env file, the utilization monitor where the task has a policy, the spot notice's watcher on a
    cloud spot VM, a dev environment's session files
    (provisioner.jobs.dev_env) and, for a `url` repo that the user's git setup has credentials for, the askpass script
    that hands them to `git clone` on the host (through the env file, which the job empties once read)."""
    env = env_file(job)
    extras = {"job.sh": (job_script(job).encode(), 0o600)}  # run by a shell (`sh ./job.sh`), never executed itself
    if job.utilization:
        extras["monitor.sh"] = (MONITOR_SCRIPT.encode(), 0o700)
    if job.spot_notice is not None:
        extras[NOTICE_SCRIPT_NAME] = (NOTICE_SCRIPT.encode(), 0o700)
    if job.cluster_ssh is not None:
        extras.update(job_files(job.cluster_ssh))
    if job.dev is not None:
        extras.update(dev_env.folder_files(job.run_name, job.job_id, job.working_dir, job.image, job.env))
    credentials = git_credentials(job.uploads.clone.url) if job.uploads.clone is not None else None
    if credentials is not None:
        env += "".join(f"{name}={shlex.quote(value)}\n" for name, value in
                       ((GIT_USERNAME_VAR, credentials[0]), (GIT_PASSWORD_VAR, credentials[1]))).encode()
        extras["askpass"] = (ASKPASS_SCRIPT, 0o700)
    extras["env"] = (env, 0o600)
    return extras


def start_job(transport: Transport, job: JobSpec,
              progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Sends the job folder (its own files written by the start command itself, or one tar.gz stream, packed while it
    is sent) and starts the job."""
    files = job_folder_files(job)
    result = None
    if not getattr(transport, "command_listed", False) and written_inline(job, files):
        result = transport.run(start_command(job, files), timeout=120)
        if result.code != 0 and INLINE_REFUSED in result.stderr.decode(errors="replace"):
            result = None  # a shell without a builtin printf: the archive instead
    if result is None:
        result = transport.run(start_command(job), stdin=archive_stream(job.uploads, files, progress), timeout=120)
    if result.code != 0 or not result.text.strip().isdigit():
        raise TransportError(f"starting the job on {transport.description} failed: "
                           f"{result.stderr.decode(errors='replace').strip() or result.text.strip()}")
    return int(result.text.strip())


# dd's count of the bytes it passed on (its last line, in the C locale) into b; `-` where its dd says none
# (busybox's): what it printed is then the read's, as in a read that does not wait.
_COUNTED = 'case $S in *" bytes"*) b=${S%% bytes*}; b=${b##*[!0-9]} ;; *) b=- ;; esac'


def _whole_log(limit: Optional[int]) -> str:
    """Shell text that prints the log from its start, at most `limit` bytes of it, in one program."""
    return (f"head -c {limit} output.log" if limit is not None else "cat output.log") + " 2>/dev/null"


def _log_past(offset: int, limit: Optional[int]) -> str:
    """Shell text that prints the log past byte `offset` (at most `limit` bytes) and sets b to how many bytes that
    was (0: none yet), or to `-` where that can not be told (no count from dd, or a dd that can not seek in bytes):
    from the start the shell's own `-s` says whether there is any (none: no program), further on dd's count does,
    in the program that reads the bytes."""
    if offset == 0:
        return f"if [ -s output.log ]; then b=-; {_whole_log(limit)}; else b=0; fi"
    flags, count = ("skip_bytes,count_bytes", f" count={limit}") if limit is not None else ("skip_bytes", "")
    rest = f"tail -c +{offset + 1} output.log 2>/dev/null" + (f" | head -c {limit}" if limit is not None else "")
    # dd's bytes go to the read's stdout (fd 4), what it says to the $(...)
    return (f"if {{ S=$(dd if=output.log bs=64K iflag={flags} skip={offset}{count} 2>&1 >&4 4>&-); }} "
            f"4>&1; then {_COUNTED}; else b=-; {rest}; fi")


def _wait_past(offset: int, wait: float, limit: Optional[int]) -> str:
    """Shell text that waits for the log's bytes past `offset`, the job's end or `wait` seconds, and prints the
    first bytes that come, setting b to their count. GNU tail follows the log (by inotify where the file system has
    it: no process started per step, which 16 nodes' readers polling on 2 cores felt) and its first output is the
    read itself: one read(2) of it by dd (at most a pipe's capacity, or `limit`), which then ends, and tail with it
    (its reader gone); tail also ends at the job's end (--pid, looked at every _PID_CHECK_S) or at the bound. The
    job's exit code, which its wrapper writes a moment after the end (up to ~0.3 s here under 16 nodes' load), is
    then waited for where no byte came, by a tail that follows its name until the wrapper's rename makes it (three
    programs, where a shell's poll started a `sleep` every 10 ms: ~20 a job's end). Where tail is not GNU's
    (no --pid: it fails at once, as does a missing `timeout`, and nothing comes), the attempt's own exit status
    (124: the bound, 0: the job's end, 141: its reader took bytes) tells: a first read (from byte 0) has the shell
    poll instead, with no probe started on each step, and reads the log after it (b emptied); a later one returns
    at once, and the client polls (provisioner.jobs.follow)."""
    block = min(limit, _PIPE_READ) if limit is not None else _PIPE_READ
    # (a name that is not there yet is looked for every -s, not by inotify: 1 s by default)
    ended = (f'[ -f exit_code ] || [ -d /proc/"$P" ] || timeout 1 tail -c +1 -s {_PID_CHECK_S} -F exit_code '
             "2>/dev/null | head -c 1 >/dev/null")
    fallback = ":"
    if offset == 0:
        fallback = (f"i=0; while [ $i -lt {int(wait / _WAIT_STEP_S)} ] && [ ! -f exit_code ] && [ ! -s output.log ]; "
                    f"do sleep {_WAIT_STEP_S}; i=$((i+1)); done; b=")
    # tail's status and dd's count both go to the $(...) on fd 3; the bytes go to the read's stdout (fd 4)
    follow = (f'{{ S=$( {{ {{ timeout {wait:g} tail -c +{offset + 1} -s {_PID_CHECK_S} --pid="$P" -F output.log '
              '2>/dev/null 3>&- 4>&-; echo "tail $?" >&3; } | '
              f"dd bs={block} count=1 2>&3 >&4 3>&- 4>&-; }} 3>&1 ); }} 4>&1")
    return (f'P=; {{ read -r P < pid; }} 2>/dev/null; S=; [ -z "$P" ] || {follow}; case $S in '
            f'*"tail 124"*|*"tail 0"*|*"tail 141"*) {_COUNTED}; [ "$b" != 0 ] || {{ {ended}; }} ;; *) {fallback} ;; '
            "esac")


# The exit code file's first line into c (empty while there is none), and that on stderr: read by the shell itself.
_READ_EXIT_CODE = 'c=; { read -r c < exit_code; } 2>/dev/null'
_EXIT_CODE_TO_STDERR = _READ_EXIT_CODE + '; printf "%s\\n" "$c" >&2; '


def _log_from(offset: Union[int, str], limit: Optional[Union[int, str]]) -> str:
    """Shell text that prints the log from byte `offset` on, at most `limit` bytes of it (nothing where there is no
    log, or no byte past `offset`), in one process: from the start `head` (none for a log with nothing in it yet, as
    the shell's `-s` tells: a job not yet started), further on GNU's (and busybox's) `dd` that seeks and counts in
    bytes, `tail | head` where dd cannot (it fails at once, having printed nothing). `offset` and `limit` are
    numbers or shell arithmetic (past the bytes a waiting read has had: $b)."""
    if offset == 0:
        return f"[ ! -s output.log ] || {_whole_log(limit)}"
    first = offset + 1 if isinstance(offset, int) else f"$(({offset}+1))"
    rest = f"tail -c +{first} output.log 2>/dev/null"
    if limit is None:
        return rest
    return (f"dd if=output.log bs=64K iflag=skip_bytes,count_bytes skip={offset} count={limit} 2>/dev/null || "
            f"{rest} | head -c {limit}")


def _waiting_read(offset: int, wait: float, limit: Optional[int]) -> str:
    """Shell text of a read that waits (read_log): the exit code and the notice are read first (c, m); where
    neither is there, what is past `offset` is printed (b bytes, _log_past), where that was nothing the next bytes
    are waited for (_wait_past), and the exit code and the notice are read again. The log is then read (again)
    after the b bytes that came only where the exit code or the notice came by then (the read then has the whole
    log, or the notice's line); a read that printed what it could not count (b=-) is what it printed. In the C
    locale: dd's count is read from what it says."""
    code = f"{_READ_EXIT_CODE}; [ ! -f {NOTICE_FILE} ] || m=1"
    rest = _log_from(f"$(({offset}+b))", f"$(({limit}-b))" if limit is not None else None)
    return (f'export LC_ALL=C; m=; {code}; b=; if [ -z "$c$m" ]; then {_log_past(offset, limit)}; '
            f'[ "$b" != 0 ] || {{ {_wait_past(offset, wait, limit)}; }}; [ "$b" = - ] || {{ {code}; }}; fi; '
            f'if [ -z "$b" ]; then {_log_from(offset, limit)}; elif [ "$b" != - ] && [ -n "$c$m" ]; then {rest}; fi; '
            f'printf "%s\\n" "$c" >&2; [ -z "$m" ] || {{ {notice_read()}}}')


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    exit_code: Optional[int]  # set once the job has ended; `data` then holds the end of the log
    notice: Optional[str] = None  # the spot interruption notice the host had (provisioner.jobs.spot_notice)


LOG_READ_LIMIT = 8 << 20  # bytes of a log one read takes at most: a long log comes in pieces, in constant memory
# How long a read waits on the host for the log's next bytes where there are none yet (the first line, or the next
# one): a follower's idle node costs its host one read (4 programs) per wait, its keeper one relay and the client one
# turn, where a poll every POLL_INTERVAL_S cost five of each a second (a relay that waits costs a keeper about what
# two quick ones do: ~0.9 against ~0.45 ms, measured). Its end is noticed within
# _PID_CHECK_S, a notice by the line it writes; a Ctrl-C meets the read itself, or a command of another thread takes
# a session of its own (provisioner.host), so the bound delays none of them: it adds to how long a host that stopped
# answering mid-read takes to be noticed (the read's timeout; its connection's keep-alives notice a dead peer
# regardless) and to a single node's max_duration check (15 s of margin; the host ends the job itself then).
OUTPUT_WAIT_S = 5.0
_WAIT_STEP_S = 0.01  # the step of a first read's poll where tail is not GNU's
_PID_CHECK_S = 0.05  # how often a waiting tail looks at whether the job is there (a wake-up each: 0.01 cost ~2 ms
# of the host's CPU a second per waiting node, measured; 0.05 a fifth of that)
_PIPE_READ = 64 << 10  # the most one read(2) of a pipe gives (Linux's default pipe capacity)


def read_log(transport: Transport, run_name: str, offset: int, timeout: float = 20,
             limit: Optional[int] = None, wait: float = 0) -> LogChunk:
    """The log from `offset` on (at most `limit` bytes of it), and the exit code if the job has ended (read first,
    so the log is complete when fewer than `limit` bytes came), and the spot interruption notice if the host had it
    (read before the log, which then holds its line). With `wait`, where the log has nothing past `offset` yet, the
    read waits on the host for up to `wait` seconds for its next bytes (or the job's end): a line reaches the client
    as it is written, not at the next poll (_waiting_read)."""
    folder = job_folder(run_name)
    read = (_waiting_read(offset, wait, limit) if wait else
            f"{_EXIT_CODE_TO_STDERR}{notice_read()}{_log_from(offset, limit)}")
    result = transport.run(f"cd {folder} 2>/dev/null || exit 0; {read}", timeout=timeout + wait)
    stderr = result.stderr.decode(errors="replace")
    return LogChunk(result.stdout, parse_exit_code(stderr.split("\nnotice ", 1)[0]), parse_notice(stderr))


def log_pieces(transport: Transport, run_name: str, offset: int = 0) -> Iterator[bytes]:
    """The job's log on its host from byte `offset` on, as it is now, in pieces of at most LOG_READ_LIMIT bytes (a
    log of any size in constant memory)."""
    while True:
        data = read_log(transport, run_name, offset, limit=LOG_READ_LIMIT).data
        if data:
            yield data
            offset += len(data)
        if len(data) < LOG_READ_LIMIT:
            return


def log_size(transport: Transport, run_name: str) -> int:
    """How many bytes the job's log holds now (0 when there is none yet)."""
    result = transport.run(f"wc -c < {job_folder(run_name)}/output.log 2>/dev/null || echo 0", timeout=30)
    text = result.text.strip()
    return int(text) if text.isdigit() else 0


def read_output_times(transport: Transport, run_name: str) -> Optional[List[Tuple[float, int]]]:
    """When each piece of the job's log arrived, as its host recorded it (provisioner.jobs.launch.OUTPUT_SIZES), in
    the form of `$DSTACK_HOME/runs/NAME/output.times`: (time, the offset where output that arrived by then begins),
    the times moved to this machine's clock (the host's is read in the same round trip). None when the host kept no
    record (a job started by a dstack that did not keep one)."""
    folder = job_folder(run_name)
    asked = time.time()
    result = transport.run(f"cd {folder} 2>/dev/null && [ -f {OUTPUT_SIZES} ] && date +%s.%N && cat {OUTPUT_SIZES}",
                           timeout=30)
    answered = time.time()
    lines = result.text.splitlines()
    try:
        skew = float(lines[0]) - (asked + answered) / 2
    except (IndexError, ValueError):
        return None
    times, had = [], 0
    for line in lines[1:]:
        at, _, size = line.partition(" ")
        try:
            at_here, size_now = float(at) - skew, int(size)
        except ValueError:  # a line cut short
            continue
        if size_now > had:
            times.append((at_here, had))
            had = size_now
    return times


def log_exists(transport: Transport, run_name: str) -> bool:
    return transport.run(f"test -f {job_folder(run_name)}/output.log", timeout=30).code == 0


def job_begun(transport: Transport, run_name: str) -> Tuple[bool, Optional[int]]:
    """(whether the job's commands have started, its exit code once it has ended)."""
    folder = job_folder(run_name)
    result = transport.run(f"cd {folder} 2>/dev/null || exit 0; {_EXIT_CODE_TO_STDERR}"
                           f"[ -f {BEGUN_FILE} ] && echo begun; true", timeout=30)
    return "begun" in result.text, parse_exit_code(result.stderr.decode(errors="replace"))


def job_ended_ago(transport: Transport, run_name: str) -> Optional[float]:
    """How many seconds ago the job ended, by the host's own clock (its exit code file's age: the job wrapper writes
    it as the job ends, then arms the VM's idle watchdog); None when it has not ended or cannot be told. A client
    that learns of the end later (a detached run, the next `dstack ps`) counts an instance's idle time from here."""
    result = transport.run(f"cd {job_folder(run_name)} 2>/dev/null && [ -f exit_code ] && "
                           "echo $(( $(date +%s) - $(date -r exit_code +%s) ))", timeout=30)
    text = result.text.strip()
    return max(0.0, float(text)) if result.code == 0 and text.lstrip("-").isdigit() else None


def job_state(transport: Transport, run_name: str) -> Tuple[str, Optional[int]]:
    """("running", None), ("exited", code) or ("missing", None)."""
    folder = job_folder(run_name)
    result = transport.run(f"cd {folder} 2>/dev/null || {{ echo missing; exit 0; }}; "
                           "if [ -f exit_code ]; then c=; read -r c < exit_code; echo exited $c; "
                           'elif p=; { read -r p < pid; } 2>/dev/null; [ -n "$p" ] && kill -0 -"$p" 2>/dev/null; '
                           "then echo running; else echo missing; fi", timeout=30)
    state, _, code = result.text.strip().partition(" ")
    if state == "exited":
        return "exited", parse_exit_code(code)
    return state or "missing", None


def stop_job(transport: Transport, run_name: str, grace: Optional[int] = 10) -> Optional[int]:
    """SIGTERM to the job's process group (and `docker stop` for its container), SIGKILL after `grace` seconds
    (never, with None); returns the exit code recorded (None when the job is still ending)."""
    result = transport.run(stop_command(run_name, grace), timeout=(grace or 0) + 30)
    return parse_exit_code(result.text)
