"""The terminal side of a run: progress lines on stderr, the job's output on stdout, and what the signals mean.

Ctrl-C (SIGINT) while the job runs attached detaches, as in dstack: in a terminal, without `-y`, it first asks "Stop
the run NAME before detaching?" (yes: stop and tear down; a second Ctrl-C there aborts: no grace period); with `-y`,
or with no terminal to ask, it detaches at once. `dstack attach` detaches on Ctrl-C as well. Before the job runs,
Ctrl-C stops the run (no process would go on provisioning it). SIGTERM and SIGHUP always stop the job, remove what
the run created and record it `terminated`: a killed client, or a closed window, leaves nothing billed unseen."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from cli.output import stderr_console, write_stdout
from provisioner.store.statuses import RunStatus

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal other than SIGINT, raised where Ctrl-C would raise KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_interrupt():
    """SIGTERM (`kill`, systemd, a CI timeout) and SIGHUP (the terminal closed) interrupt as Ctrl-C does."""
    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {number: signal.signal(number, interrupt) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def make_reporter(quiet: bool = False, run_name: Optional[str] = None):
    """Progress on stderr and the job's output on stdout; `quiet` (for --json) keeps both for the logs alone. With
    `run_name`, every progress line is also kept for `dstack logs -d`."""
    from provisioner.runs.session import Reporter
    from provisioner.store.run_files import log_diagnostic

    started = time.monotonic()
    dim, plain = ("\x1b[2m", "\x1b[0m") if not quiet and sys.stderr.isatty() else ("", "")

    def info(message: str) -> None:
        if run_name is not None:
            log_diagnostic(run_name, message)
        if quiet:
            return
        try:  # written as it is (no rich console: ~20 ms of an apply's start, and a `[...]` in it is no markup)
            sys.stderr.write(f"{dim}{time.monotonic() - started:6.1f}s{plain} {message}\n")
            sys.stderr.flush()
        except OSError:  # the terminal is gone (SIGHUP): progress is for a person, the teardown must go on
            pass

    def step(progress) -> None:
        took = f" ({progress.seconds:.0f}s)" if progress.seconds is not None else ""
        info(f"{progress.op} {progress.type.split(':')[-1]} {progress.name}: {progress.state}{took}")

    from cli.upload_progress import UploadProgress

    return Reporter(info=info, step=step, output=(lambda data: None) if quiet else write_stdout,
                    upload=UploadProgress(stderr_console))


def session_for(config, store, hosts=None, quiet: bool = False, run_name: Optional[str] = None, on_interrupt=None):
    from provisioner.runs.session import RunSession

    return RunSession(store=store, config=config, reporter=make_reporter(quiet, run_name), fleet_hosts=hosts or {},
                      on_interrupt=on_interrupt)


def ctrl_c_choice(yes: bool):
    """What Ctrl-C does to an attached run (the module's docstring); SIGTERM and SIGHUP stop it."""
    from provisioner.runs.session import InterruptAction

    def choose(run_name: str, interrupt: KeyboardInterrupt) -> InterruptAction:
        import sys

        if getattr(interrupt, "signum", signal.SIGINT) != signal.SIGINT:
            return InterruptAction.STOP
        if yes or not sys.stdin.isatty():
            return InterruptAction.DETACH
        try:
            stop = _ask(f"\nStop the run {run_name} before detaching?")
        except (KeyboardInterrupt, EOFError):  # a second Ctrl-C (or a SIGTERM, or the end of input) while it asks
            return InterruptAction.ABORT
        return InterruptAction.STOP if stop else InterruptAction.DETACH

    return choose


def _ask(question: str) -> bool:
    """A yes/no question on stderr, no by default, whose wait for the answer a Ctrl-C always ends: input() (and so
    click.confirm) misses a signal that lands between its prompt and its read, whose read then waits for a line.
    Here stdin is waited on in short selects, between which Python runs its signal handlers."""
    import select
    import sys

    stdin = sys.stdin.fileno()
    while True:
        sys.stderr.write(f"{question} [y/N]: ")
        sys.stderr.flush()
        line = b""
        while not line.endswith(b"\n"):
            if select.select([stdin], [], [], 0.1)[0]:
                chunk = os.read(stdin, 1024)
                if not chunk:
                    raise EOFError
                line += chunk
        answer = line.decode(errors="replace").strip().lower()
        if answer in ("y", "yes", "n", "no", ""):
            return answer.startswith("y")
        sys.stderr.write("Error: invalid input\n")


def run_and_report(config, store, hosts, run_name, resolved, offers, source: Path, detach: bool,
                   as_json: bool = False, upload_repo: bool = True, yes: bool = False) -> int:
    """Runs the task; returns the exit status for the shell: 0 when the job succeeded, its exit code when it failed.
    With `as_json`, stdout gets only the run's final record (`{"run": ...}`); the output stays in `dstack logs`.
    `source` is the configuration file: its repo is uploaded unless `upload_repo` is false (`--no-repo`)."""
    from provisioner.runs.lifecycle import submit

    session = session_for(config, store, hosts, quiet=as_json, run_name=run_name, on_interrupt=ctrl_c_choice(yes))
    try:
        with stop_signals_interrupt():
            record = submit(session, run_name, resolved, offers, source, detach, upload_repo=upload_repo)
    except KeyboardInterrupt as interrupt:
        record = store.get_run(run_name)
        if record is not None and record.active:
            left = (f"its Pulumi stack {record.stack['name']} ({record.stack['backend']} {record.stack['region']}) "
                    "may still hold cloud resources" if record.stack else "nothing was created in a cloud")
            session.reporter.info(f"Left {run_name} {record.status}: {left}; `dstack stop {run_name}` (or the next "
                                  "`dstack ps`) finishes the teardown")
        return 128 + getattr(interrupt, "signum", signal.SIGINT)
    if as_json:
        from cli.output import print_json

        from provisioner.runs.listing import with_dev_environment

        print_json({"run": with_dev_environment(record.summary(time.time()), record)})
    if detach:
        session.reporter.info(f"{run_name} is running; `dstack logs {run_name} -f` follows it, "
                              f"`dstack stop {run_name}` ends it")
        return 0
    if record.active and record.detached:  # Ctrl-C detached it (submit said so)
        return 0
    session.reporter.info(f"{run_name} {record.status}" + (f" ({record.reason})" if record.reason else ""))
    if record.status == RunStatus.DONE:
        return 0
    return record.exit_code if record.exit_code not in (None, 0) and 0 < record.exit_code < 256 else 1
