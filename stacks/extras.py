"""The cloud SDKs are optional: `pip install dstack-pulumi` runs on this machine and SSH hosts; `[aws]`, `[gcp]` and
`[all]` add what cloud runs need. Code that is about to use a cloud's SDK asks `require_extra` first, so that a
missing SDK reads as the extra to install, not as an ImportError."""

from __future__ import annotations

import shlex
from importlib.util import find_spec
from pathlib import Path
from typing import Tuple

from configuration.errors import DstackError

PACKAGE = "dstack-pulumi"
EXTRA_MODULES = {  # the modules each extra installs (pyproject.toml's optional-dependencies)
    "aws": ("pulumi", "pulumi_aws", "boto3"),
    "gcp": ("pulumi", "pulumi_gcp", "google.auth", "requests"),
    "pulumi": ("pulumi",),  # the automation API alone: either cloud's extra brings it
}
EXTRA_FOR = {"pulumi": "all"}


def install_command(extra: str) -> str:
    """The command that installs `extra`, runnable as written: from a checkout (this code beside its
    pyproject.toml), an editable install of that checkout (`.` from its folder); else the package by name."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        return f"pip install '{PACKAGE}[{extra}]'"
    try:
        here = Path.cwd().resolve() == root
    except OSError:  # the working folder is gone
        here = False
    return f"pip install -e {shlex.quote(('.' if here else str(root)) + f'[{extra}]')}"


class MissingExtra(DstackError):
    """A cloud SDK is not installed; the message names the extra that installs it."""

    def __init__(self, extra: str, purpose: str, modules: Tuple[str, ...]):
        install = EXTRA_FOR.get(extra, extra)
        super().__init__(f"{purpose} needs the [{install}] extra of {PACKAGE} (missing: {', '.join(modules)}): "
                         f"{install_command(install)}")
        self.extra = install


def installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or was blocked
        return False


def require_extra(extra: str, purpose: str) -> None:
    missing = tuple(m for m in EXTRA_MODULES[extra] if not installed(m))
    if missing:
        raise MissingExtra(extra, purpose, missing)
