"""`repos` and `files`: what a run takes from the user's machine or a git server, with dstack's grammar.

- A repo is a local git repository (`local_path`) or a URL cloned on the host (`url`, with `branch`, `hash`), put at
  `path` (relative to the working directory, `.` by default). Short forms: `.`, `../other`, `local:path`,
  `https://host/repo.git`, `git@host:repo.git:path`. dstack takes one repo per run.
- A file mapping is `local_path:path` (or one path for both); local paths are relative to the configuration file's
  folder, remote paths to the working directory, and `~` on either side is the home folder.
"""

from __future__ import annotations

import re
import string
from enum import Enum
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, List, Optional

from pydantic import AfterValidator, Field, field_validator, model_validator

from configuration.resources import StrictModel


def _windows_drive(parts: List[str]) -> List[str]:
    """`C:\\path` or `c:/path` is one path, not a mapping `C` -> `\\path`."""
    if len(parts) > 1 and len(parts[0]) == 1 and parts[0] in string.ascii_letters and parts[1][:1] in ("\\", "/"):
        return [f"{parts[0]}:{parts[1]}", *parts[2:]]
    return parts


def _check_home(path: str) -> str:
    if path.startswith("~") and PurePosixPath(path).parts[0] != "~":
        raise ValueError(f"`~username` paths are not supported: {path}")
    return path


# `scheme://authority/path` with an optional `:REPO_PATH` after it; the authority may hold `:` (port, credentials)
_SCHEME_URL = re.compile(r"^(?P<url>[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*(?:/[^:]*)?)(?::(?P<path>.*))?$")


class RepoExistsAction(str, Enum):
    ERROR = "error"
    SKIP = "skip"


class RepoSpec(StrictModel):
    local_path: Annotated[
        Optional[str],
        Field(description="A git repository on your machine, relative to the configuration file's folder; "
                          "uploads what git would commit. Mutually exclusive with `url`"),
    ] = None
    url: Annotated[
        Optional[str], Field(description="A git repository URL, cloned on the host. Mutually exclusive with `local_path`")
    ] = None
    branch: Annotated[Optional[str], Field(description="The branch to clone (`url` only); the default branch if absent")] = None
    hash: Annotated[Optional[str], Field(description="The commit to check out (`url` only)")] = None
    path: Annotated[
        str, Field(description="Where the repo goes on the host, relative to the working directory (default `.`)")
    ] = "."
    if_exists: Annotated[
        RepoExistsAction,
        Field(description="When `path` exists and is not empty: `error` (the default) fails the run, `skip` keeps it"),
    ] = RepoExistsAction.ERROR

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        with_scheme = _SCHEME_URL.match(v)
        if with_scheme:  # its authority may hold `:` (a port, user:token), which a plain split would cut
            url, path = with_scheme.group("url"), with_scheme.group("path")
            return {"url": url, "path": path} if path is not None else {"url": url}
        parts = v.split(":")
        is_url = len(parts) > 1 and ("@" in parts[0] or parts[1].startswith("//"))
        parts = [f"{parts[0]}:{parts[1]}", *parts[2:]] if is_url else _windows_drive(parts)
        if len(parts) > 2:
            raise ValueError(f"Invalid repo: {v!r} (expected PATH, PATH:REPO_PATH, URL or URL:REPO_PATH)")
        source = {"url" if is_url else "local_path": parts[0]}
        return {**source, "path": parts[1]} if len(parts) == 2 else source

    @model_validator(mode="after")
    def _one_source(self) -> "RepoSpec":
        if self.local_path and self.url:
            raise ValueError("`local_path` and `url` are mutually exclusive")
        if not self.local_path and not self.url:
            raise ValueError("either `local_path` or `url` must be set")
        return self

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _check_home(v)


class FilePathMapping(StrictModel):
    local_path: Annotated[str, Field(description="A file or folder on your machine, relative to the configuration file's folder")]
    path: Annotated[str, Field(description="Where it goes on the host, relative to the working directory")]

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        parts = _windows_drive(v.split(":"))
        if len(parts) > 2:
            raise ValueError(f"Invalid file mapping: {v!r} (expected LOCAL_PATH or LOCAL_PATH:PATH)")
        return {"local_path": parts[0], "path": parts[-1]}

    @field_validator("local_path", "path")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the path is empty")
        return v

    @field_validator("path")
    @classmethod
    def _unix_path(cls, v: str) -> str:
        if PureWindowsPath(v).is_absolute():
            raise ValueError(f"the path on the host must be a Unix path: {v}")
        return _check_home(v)


def _at_most_one(repos: List[RepoSpec]) -> List[RepoSpec]:
    if len(repos) > 1:
        raise ValueError("at most one repo is supported (as in dstack)")
    return repos


Repos = Annotated[
    List[RepoSpec],
    AfterValidator(_at_most_one),
    Field(description="The git repo to put on the host: `.`, `../other`, `local_path:path`, a URL, or a mapping "
                      "with `local_path`/`url`, `branch`, `hash`, `path`, `if_exists` (at most one)"),
]
Files = Annotated[
    List[FilePathMapping],
    Field(description="Files and folders to upload: `local_path:path` (or one path for both), `~` allowed on both sides"),
]
SingleBranch = Annotated[
    Optional[bool],
    Field(description="Clone only the repo's branch (`url` repos); `true` for tasks by default"),
]
