"""Where the CLI writes: tables and progress for people (rich), JSON for scripts (plain stdout)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

# Every typer.Typer of the CLI: plain help and one-line usage errors (quicker, and readable in logs), -h as --help,
# no typer `--install-completion` (`dstack completion SHELL` prints the script, as dstack's does).
TYPER_SETTINGS: dict = dict(
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def write_stdout(data: bytes) -> None:
    """A job's output as it came, unbuffered."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


COPY_CHUNK = 4 << 20


def file_chunks(path, offset: int = 0) -> Iterator[bytes]:
    """A file from byte `offset` on, a chunk at a time: a log of any size in constant memory."""
    with open(path, "rb") as source:
        source.seek(offset)
        while True:
            data = source.read(COPY_CHUNK)
            if not data:
                return
            yield data


def copy_to_stdout(path, offset: int = 0) -> None:
    for data in file_chunks(path, offset):
        write_stdout(data)


def stdout_console():
    """Tables keep one line per row when piped: rich would otherwise wrap them at 80 columns."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, width=width)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def confirm(question: str, yes: bool) -> bool:
    """Asks on a terminal unless `-y`; without a terminal (a script) the answer is yes, as before the question."""
    if yes or not sys.stdin.isatty():
        return True
    import typer

    return typer.confirm(question, default=False, err=True)


def error(message: str) -> None:
    """An error for a person: one line per problem, no traceback."""
    lines = message.splitlines() or [""]
    sys.stderr.write("error: " + "\n       ".join(lines) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """A command's DstackError as one `error:` line and exit status 1, Ctrl-C as 130: never a traceback."""
    from configuration.errors import DstackError

    try:
        yield
    except DstackError as e:
        error(_message(e))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _message(problem: Exception) -> str:
    """A damaged state store's message names the jobs still running where the damaged copy said runs were."""
    from provisioner.store.errors import StoreDamaged

    if isinstance(problem, StoreDamaged):
        from provisioner.jobs.orphans import damage_report

        return damage_report(problem)
    return str(problem)
