"""`dstack config check`: one line per question a first cloud run depends on, answered before any money is spent.

Each check says ok, warn (the run may work, but read this) or fail (a run on this backend will fail); the cloud
SDKs are imported only inside the check that talks to that cloud.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    backend: str  # "pulumi", "aws", "gcp"
    subject: str  # what was asked: "credentials", "regions", "network", "gpu quota", ...
    status: str  # OK, WARN or FAIL
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


def check_pulumi() -> Check:
    """Is the CLI there, and is it new enough for the SDK's automation API?"""
    import subprocess

    from stacks.automation import find_pulumi

    path = find_pulumi()
    if path is None:
        return Check("pulumi", "cli", FAIL, "the Pulumi CLI is not installed: `dstack setup pulumi`")
    from pulumi.automation._minimum_version import _MINIMUM_VERSION

    try:
        text = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30,
                              env={"PULUMI_SKIP_UPDATE_CHECK": "true", "PATH": ""}).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("pulumi", "cli", FAIL, f"{path} does not run: {e}")
    version = _parse_version(text)
    if version is None:
        return Check("pulumi", "cli", FAIL, f"{path} printed {text[:60]!r}, not a version")
    minimum = (_MINIMUM_VERSION.major, _MINIMUM_VERSION.minor, _MINIMUM_VERSION.patch)
    if version < minimum:
        return Check("pulumi", "cli", FAIL, f"{path} is v{'.'.join(map(str, version))}; the SDK needs "
                                            f"v{'.'.join(map(str, minimum))} or newer: `dstack setup pulumi`")
    return Check("pulumi", "cli", OK, f"{path} v{'.'.join(map(str, version))}")


def _parse_version(text: str) -> Optional[tuple]:
    import re

    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else None


def regions_check(backend: str, wanted: Sequence[str], usable: Sequence[str], word: str,
                  problems: Dict[str, Sequence[str]]) -> Check:
    """"N of M <word>", then each non-empty problem (what is wrong: the regions), warn when there is one."""
    detail = f"{len(usable)} of {len(wanted)} {word}"
    found = {what: regions for what, regions in problems.items() if regions}
    for what, regions in found.items():
        detail += f"; {what}: {', '.join(sorted(regions))}"
    return Check(backend, "regions", WARN if found else OK, detail)


def worst(checks: List[Check]) -> str:
    statuses = {c.status for c in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK
