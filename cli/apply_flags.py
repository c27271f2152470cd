"""`dstack apply`'s flags from dstack 0.22.5 beyond those `dstack offer` shares (cli.run_options): each is acted upon
or refused by name, never accepted and ignored.

- `--force`: an active run of the name is stopped and overridden without the question (cli.apply_run).
- `-P/--repo PATH|URL`: the run's repo in place of the file's first `repos` entry (a path is relative to the current
  folder, as in dstack); `--repo-branch`, `--repo-hash`: the branch and commit of a repo given by URL.
- `--idle-duration DURATION`, `--dont-destroy`: the run's `idle_duration` (`--dont-destroy` is `off`: the instance is
  kept until `dstack fleet delete`); like dstack, neither goes with `-R/--reuse`.
- `-p/--port MAPPING`: a port forwarded while attached, over the file's mapping of the same remote port.
- `--host`: forwarded ports listen on 127.0.0.1 alone here; `localhost` and `127.0.0.1` are taken, others refused.
- `--ssh-identity`: refused: runs reach their hosts with keys of their own (per run, under $DSTACK_HOME).
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

import typer
from pydantic import ValidationError
from typing_extensions import Annotated

ForceOption = Annotated[bool, typer.Option("--force", help="Stop an active run of the same name and submit this "
                                                            "one without asking")]
RepoOption = Annotated[Optional[str], typer.Option("-P", "--repo", help="The repo of the run, a local path or a git "
                                                                         "URL (in place of the file's `repos`)")]
RepoBranchOption = Annotated[Optional[str], typer.Option("--repo-branch", help="The branch of a repo given by URL")]
RepoHashOption = Annotated[Optional[str], typer.Option("--repo-hash", help="The commit of a repo given by URL")]
IdleDurationOption = Annotated[Optional[str], typer.Option(
    "--idle-duration", metavar="DURATION", help="Keep the run's new cloud instance this long after the run, idle")]
DontDestroyOption = Annotated[bool, typer.Option("--dont-destroy", help="Keep the run's new cloud instance after the "
                                                                         "run until `dstack fleet delete`")]
PortOption = Annotated[Optional[List[str]], typer.Option("-p", "--port", metavar="MAPPING", help="Forward a port "
                                                         "(PORT, LOCAL:REMOTE or *:REMOTE; repeatable)")]
HostOption = Annotated[Optional[str], typer.Option("--host", metavar="HOST", help="The local address forwarded ports "
                                                    "listen on: 127.0.0.1 (localhost) only")]
SshIdentityOption = Annotated[Optional[str], typer.Option("--ssh-identity", metavar="SSH_PRIVATE_KEY", help="Not "
                                                           "supported: runs reach their hosts with keys of their own")]

LOCAL_ADDRESSES = ("localhost", "127.0.0.1")


def refuse_unsupported(host: Optional[str], ssh_identity: Optional[str]) -> None:
    if host is not None and host not in LOCAL_ADDRESSES:
        raise typer.BadParameter(f"{host!r}: forwarded ports listen on 127.0.0.1 alone here (an address others can "
                                 "reach would expose the job's ports)", param_hint="'--host'")
    if ssh_identity is not None:
        raise typer.BadParameter("not supported: each run reaches its hosts with a key of its own (under "
                                 "$DSTACK_HOME), and SSH fleets with the keys in their file", param_hint="'--ssh-identity'")


def override_apply_fields(configuration: Any, ports: Optional[List[str]], idle_duration: Optional[str],
                          dont_destroy: bool, reuse: bool, repo: Optional[str], repo_branch: Optional[str],
                          repo_hash: Optional[str], no_repo: bool) -> Any:
    """The configuration with these flags in place of the file's values."""
    update: dict = {}
    if ports:
        update["ports"] = _merged_ports(configuration, ports)
    given = [flag for flag, value in (("--idle-duration", idle_duration), ("--dont-destroy", dont_destroy),
                                      ("-R/--reuse", reuse)) if value not in (None, False)]
    if len(given) > 1:
        raise typer.BadParameter(f"{' and '.join(given)} exclude each other (a reused instance keeps its fleet's "
                                 "idle_duration)", param_hint=f"'{given[0]}'")
    if idle_duration is not None or dont_destroy:
        update["idle_duration"] = _validated("idle_duration", "off" if dont_destroy else
                                             idle_duration, "--dont-destroy" if dont_destroy else "--idle-duration")
    if repo is not None or repo_branch is not None or repo_hash is not None:
        update["repos"] = _repos(configuration, repo, repo_branch, repo_hash, no_repo)
    return configuration.model_copy(update=update) if update else configuration


def _merged_ports(configuration: Any, texts: List[str]) -> list:
    """dstack's merge: a flag's mapping replaces the file's mapping of the same remote port."""
    from configuration.fields import PortMapping

    merged = {mapping.container_port: mapping for mapping in getattr(configuration, "ports", None) or []}
    for text in texts:
        try:
            mapping = PortMapping.model_validate(text)
        except ValidationError as e:
            raise typer.BadParameter(e.errors()[0]["msg"].removeprefix("Value error, "), param_hint="'-p/--port'") \
                from None
        merged[mapping.container_port] = mapping
    return list(merged.values())


def _repos(configuration: Any, repo: Optional[str], branch: Optional[str], commit: Optional[str],
           no_repo: bool) -> list:
    from configuration.repos import RepoSpec

    if no_repo:
        raise typer.BadParameter("-P/--repo, --repo-branch and --repo-hash name a repo; --no-repo says there is "
                                 "none", param_hint="'--no-repo'")
    repos = list(getattr(configuration, "repos", None) or [])
    if repo is not None:
        spec = RepoSpec.model_validate(repo)
        if spec.local_path:  # relative to the current folder, as dstack's -P (the file's are to the file's folder)
            spec = spec.model_copy(update={"local_path": os.path.abspath(os.path.expanduser(spec.local_path))})
        repos = [spec, *repos[1:]]
    if (branch is not None or commit is not None) and (not repos or not repos[0].url):
        flag = "--repo-branch" if branch is not None else "--repo-hash"
        raise typer.BadParameter("applies to a repo given by URL (`-P URL` or `repos: [URL]` in the file); a local "
                                 "repository uploads its working tree as it is", param_hint=f"'{flag}'")
    if branch is not None or commit is not None:
        changes = {key: value for key, value in (("branch", branch), ("hash", commit)) if value is not None}
        repos[0] = repos[0].model_copy(update=changes)
    return repos


def _validated(field: str, value: Any, flag: str) -> Any:
    """The flag's text validated as the file's value of `field` is."""
    from configuration.models import ProfileFields

    try:
        return getattr(ProfileFields.model_validate({field: value}), field)
    except ValidationError as e:
        raise typer.BadParameter(e.errors()[0]["msg"].removeprefix("Value error, "), param_hint=f"'{flag}'") from None
