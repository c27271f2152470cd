"""`dstack completion bash|zsh|fish`: the shell completion script (typer's), to source from the shell's profile:
`eval "$(dstack completion bash)"` in ~/.bashrc."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

SHELLS = ("bash", "zsh", "fish")


def completion(shell: Annotated[str, typer.Argument(help="bash, zsh or fish")]) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    from typer._completion_shared import get_completion_script

    from cli import COMPLETE_VAR, PROG_NAME

    if shell not in SHELLS:
        raise typer.BadParameter(f"{shell!r} (allowed: {', '.join(SHELLS)})", param_hint="'SHELL'")
    print(get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell))
