"""Which Pulumi CLI runs: the one found, wherever it lies (not only in a folder named `bin`), and of those
`dstack setup pulumi` installed the newest by version, not by text; through stand-in `pulumi` executables that answer
the automation API and record who was run."""

import json
from pathlib import Path

from tests.helpers import run_cli

STAND_IN = """#!/bin/sh
[ "$1" = --non-interactive ] && shift
echo "{version} $*" >> {log}
case "$1 $2" in
  "version "*) echo v{version} ;;
  "stack ls") echo '[{{"name": "run-a", "current": false, "updateInProgress": false, "resourceCount": 3}}]' ;;
  "stack output") echo '{{"ip": "10.251.0.9"}}' ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def stand_in(folder: Path, version: str, log: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "pulumi"
    binary.write_text(STAND_IN.format(version=version, log=log))
    binary.chmod(0o755)
    return binary


def listed_stacks(tmp_path: Path, dstack_home: Path, path: str) -> dict:
    result = run_cli("stacks", "--json", env={"PATH": f"{path}:/usr/bin:/bin", "HOME": str(tmp_path),
                                              "DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return json.loads(result.stdout)


def test_a_pulumi_cli_outside_a_folder_named_bin_is_the_one_run(tmp_path, dstack_home):
    log = tmp_path / "calls.log"
    tools = tmp_path / "opt" / "pulumi-3.150.0"  # as a tarball unpacks: no `bin` around the binary
    stand_in(tools, "3.150.0", log)
    found = listed_stacks(tmp_path, dstack_home, str(tools))
    assert found == {"stacks": [{"name": "run-a", "resources": 3, "outputs": {"ip": "10.251.0.9"}}]}
    calls = log.read_text().splitlines()
    assert calls[0] == "3.150.0 version" and any(c.startswith("3.150.0 stack ls") for c in calls), calls
    again = listed_stacks(tmp_path, dstack_home, str(tools))  # the layout made for it is reused as it is
    assert again == found


def test_the_newest_installed_pulumi_is_chosen_by_version_not_by_text(tmp_path, dstack_home):
    log = tmp_path / "calls.log"
    versions = tmp_path / ".pulumi" / "versions"
    for version in ("3.99.0", "3.272.0", "3.100.0-alpha.1", "3.9.0"):
        stand_in(versions / version / "bin", version, log)
    listed_stacks(tmp_path, dstack_home, str(tmp_path / "nothing-here"))
    assert {line.split()[0] for line in log.read_text().splitlines()} == {"3.272.0"}
