"""What a run uploads, decided and size-checked before anything is provisioned (provisioner.jobs.archive packs it).

- A git repository uploads what git would commit: tracked files and untracked ones that are not ignored
  (`git ls-files -co --exclude-standard`), HEAD plus uncommitted changes. A folder that is no repository is never
  uploaded whole: only `files:` mappings take folders outside a repository, and they go through the same filters.
- Everywhere: `.gitignore` and `.dstackignore` are honoured (git reads both, so the patterns mean what they mean to
  git), and `.git` internals, virtual environments (a folder holding `pyvenv.cfg`) and `$DSTACK_HOME` never leave.
- The total is checked against DEFAULT_LIMIT_MB (`$DSTACK_UPLOAD_LIMIT_MB` overrides it); the error names the biggest
  files. Files that vanish between the listing and the packing are skipped.
"""

from __future__ import annotations

import os
import posixpath
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from configuration.errors import ConfigurationError
from configuration.home import dstack_home

DEFAULT_LIMIT_MB = 100
LIMIT_VARIABLE = "DSTACK_UPLOAD_LIMIT_MB"
LEGACY_REPO_DIR = ""  # the dest of the repo uploaded without `repos`: the repo folder (`/workflow`), as before 0.20
BIGGEST_SHOWN = 5


def _git(*args: str) -> Optional[bytes]:
    """git's output, or None outside a repository or where git is not installed."""
    try:
        done = subprocess.run(["git", *args], capture_output=True)
    except FileNotFoundError:
        return None
    return done.stdout if done.returncode == 0 else None


def git_toplevel(folder: Path) -> Optional[Path]:
    top = _git("-C", str(folder), "rev-parse", "--show-toplevel")
    return Path(top.decode().strip()) if top else None


@dataclass(frozen=True)
class Upload:
    """A local file or folder and where it goes on the host (see provisioner.jobs.script for how `dest` is placed)."""

    source: Path
    files: Tuple[Tuple[str, int], ...]  # (path relative to `source`, "" for a file itself; size in bytes)
    dest: str  # relative to the working directory, absolute, `~/...`, or LEGACY_REPO_DIR
    what: str  # `repos[0]`, `files[1]`: how messages name it
    if_exists: str = "merge"  # `merge` (files), or a repo's `error` / `skip`


@dataclass(frozen=True)
class RemoteRepo:
    """A repo cloned on the host; credentials come at start time from the user's git setup, never from here."""

    url: str
    dest: str
    branch: Optional[str] = None
    hash: Optional[str] = None
    single_branch: bool = True
    if_exists: str = "error"


@dataclass
class UploadPlan:
    uploads: List[Upload] = field(default_factory=list)
    clone: Optional[RemoteRepo] = None

    @property
    def repo(self) -> Optional[str]:
        """What DSTACK_REPO_ID is made of: the cloned URL, or the uploaded repository's folder."""
        if self.clone is not None:
            return self.clone.url
        return next((str(u.source) for u in self.uploads if u.dest == LEGACY_REPO_DIR or "repos[" in u.what), None)

    @property
    def total_bytes(self) -> int:
        return sum(size for upload in self.uploads for _, size in upload.files)

    def biggest(self, count: int = BIGGEST_SHOWN) -> List[Tuple[Path, int]]:
        files = [(upload.source / name if name else upload.source, size)
                 for upload in self.uploads for name, size in upload.files]
        return sorted(files, key=lambda item: -item[1])[:count]


def upload_limit_mb() -> float:
    text = os.environ.get(LIMIT_VARIABLE)
    if text is None:
        return DEFAULT_LIMIT_MB
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigurationError(f"{LIMIT_VARIABLE}={text!r} is not a positive number of megabytes")
    return value


def check_size(plan: UploadPlan, limit_mb: Optional[float] = None) -> None:
    limit_mb = upload_limit_mb() if limit_mb is None else limit_mb
    total = plan.total_bytes
    if total <= limit_mb * 1024 * 1024:
        return
    biggest = "\n".join(f"  {_mb(size)}  {path}" for path, size in plan.biggest())
    raise ConfigurationError(
        f"the upload is {_mb(total)}, over the {limit_mb:g} MB limit; the biggest files:\n{biggest}\n"
        f"ignore them in .gitignore or .dstackignore, keep data outside the uploaded folders, or raise the limit "
        f"with {LIMIT_VARIABLE}")


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def _never_uploaded(folder: Path) -> Callable[[str], bool]:
    """Whether a listed path lies in `.git`, a virtual environment or $DSTACK_HOME (git does not follow symlinked
    folders, so the listed names say where a file is)."""
    home, top = dstack_home().resolve(), folder.resolve()
    if top == home or home in top.parents:
        return lambda name: True
    home_inside = home.relative_to(top).as_posix() + "/" if top in home.parents else None
    venv_of: Dict[str, bool] = {}

    def in_venv(parent: str) -> bool:
        if parent not in venv_of:
            venv_of[parent] = (folder / parent / "pyvenv.cfg").exists() or (
                parent != "" and in_venv(os.path.dirname(parent)))
        return venv_of[parent]

    def excluded(name: str) -> bool:
        return (".git" in Path(name).parts or in_venv(os.path.dirname(name))
                or (home_inside is not None and name.startswith(home_inside)))

    return excluded


def _ls_files(folder: Path, *args: str) -> List[str]:
    """`git ls-files` of `folder`: in its repository, or with an empty git dir for a folder outside any."""
    if git_toplevel(folder) is not None:
        listed = _git("-C", str(folder), "ls-files", "-z", *args)
    else:
        with tempfile.TemporaryDirectory(prefix="dstack-ls-") as empty:
            if _git("init", "-q", "--bare", empty) is None:
                raise ConfigurationError("git is needed to list the files to upload (it reads .gitignore and "
                                         ".dstackignore); install git")
            listed = _git(f"--git-dir={empty}", f"--work-tree={folder}", "-C", str(folder), "ls-files", "-z", *args)
    if listed is None:
        raise ConfigurationError(f"git could not list the files of {folder}")
    return [name for name in listed.decode(errors="surrogateescape").split("\0") if name]


def list_folder(folder: Path) -> Tuple[Tuple[str, int], ...]:
    """The files of `folder` that may be uploaded, with their sizes (symlinks count 0: they travel as links)."""
    ignored = set(_ls_files(folder, "-c", "-o", "-i", "--exclude-per-directory=.dstackignore"))
    excluded = _never_uploaded(folder)
    files = []
    for name in _ls_files(folder, "-c", "-o", "--exclude-standard"):
        if name in ignored or name.endswith("/") or excluded(name):
            continue
        try:
            info = os.lstat(folder / name)
        except FileNotFoundError:  # deleted but still tracked, or gone since the listing
            continue
        if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
            files.append((name, info.st_size if stat.S_ISREG(info.st_mode) else 0))
    return tuple(sorted(files))


def _local(path_text: str, base: Path) -> Path:
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else base / path


def _in_dstack_home(path: Path) -> bool:
    home = dstack_home().resolve()
    resolved = path.resolve()
    return resolved == home or home in resolved.parents or resolved in home.parents


def in_job_folder(dest: str, working_dir: Optional[str]) -> Optional[str]:
    """Where a relative `dest` lands in the job folder of a job without `image:` (relative to the folder: the working
    directory is `repo/` in it, or a relative `working_dir` under that); None for a `dest` that is not placed
    there (absolute, `~`, or under an absolute working directory)."""
    if dest.startswith("/") or dest == "~" or dest.startswith("~/") or (working_dir or "").startswith("/"):
        return None
    return posixpath.normpath(posixpath.join("repo", working_dir or "", dest))


def _check_places(plan: UploadPlan, configuration, source: str) -> None:
    """A relative path that climbs out of the job folder (`../../x`) would write beside it, into the jobs folder or
    another run's: refused by name. Absolute paths say where they go, and `image:` jobs' are in the container."""
    if getattr(configuration, "image", None):
        return
    places = [(upload.what, upload.dest) for upload in plan.uploads]
    places += [(f"{source}: repos[0]", plan.clone.dest)] if plan.clone is not None else []
    for what, dest in places:
        inside = in_job_folder(dest, getattr(configuration, "working_dir", None)) if dest != LEGACY_REPO_DIR else None
        if inside is not None and (inside == ".." or inside.startswith("../")):
            raise ConfigurationError(f"{what}: `{dest}` leaves the job folder (relative paths are relative to the "
                                     "working directory, repo/ in it); write an absolute path to put it elsewhere on "
                                     "the host")


def plan_uploads(configuration, config_dir: Path, source: str, include_repos: bool = True) -> UploadPlan:
    """The uploads of a run configuration whose file is in `config_dir`. Without `repos`, the git repository that
    holds the configuration is uploaded as `repos: [.]` would (dstack before 0.20 did so); outside one, nothing.
    `include_repos=False` (`--no-repo`): no repo at all, only `files`."""
    plan = UploadPlan()
    repos = list(getattr(configuration, "repos", None) or []) if include_repos else []
    if not repos and include_repos:
        top = git_toplevel(config_dir)
        if top is not None:
            plan.uploads.append(Upload(top, list_folder(top), LEGACY_REPO_DIR, "the configuration's git repository"))
    for index, repo in enumerate(repos):
        what = f"{source}: repos[{index}]"
        if repo.url:
            single = configuration.single_branch
            plan.clone = RemoteRepo(repo.url, repo.path, repo.branch, repo.hash,
                                    True if single is None else single, repo.if_exists.value)
            continue
        if repo.branch or repo.hash:
            raise ConfigurationError(f"{what}: `branch` and `hash` apply to a repo given by `url`; a local "
                                     "repository uploads its working tree as it is (commit, or check out the branch)")
        folder = _local(repo.local_path, config_dir)
        if not folder.is_dir():
            raise ConfigurationError(f"{what}: {folder} is not a folder")
        top = git_toplevel(folder)
        if top is None:
            raise ConfigurationError(f"{what}: {folder} is not a git repository; a folder that is no repository "
                                     "is never uploaded whole (`git init` it, or map what the job needs with `files`)")
        plan.uploads.append(Upload(top, list_folder(top), repo.path, what, repo.if_exists.value))
    for index, mapping in enumerate(getattr(configuration, "files", None) or []):
        what = f"{source}: files[{index}]"
        path = _local(mapping.local_path, config_dir)
        if not path.exists():
            raise ConfigurationError(f"{what}: {path} does not exist")
        if _in_dstack_home(path):
            raise ConfigurationError(f"{what}: {path} is inside or above {dstack_home()} ($DSTACK_HOME: keys, state "
                                     "and secrets), which is never uploaded")
        if path.is_dir():
            plan.uploads.append(Upload(path, list_folder(path), mapping.path, what))
        else:
            plan.uploads.append(Upload(path, (("", path.stat().st_size),), mapping.path, what))
    _check_places(plan, configuration, source)
    return plan


def git_credentials(url: str) -> Optional[Tuple[str, str]]:
    """(username, password) for an http(s) URL from the user's git credential helpers, asked without a prompt;
    None where they have none (the clone on the host then goes without). SSH URLs use the host's own keys."""
    if not url.startswith(("https://", "http://")):
        return None
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")
    try:
        done = subprocess.run(["git", "credential", "fill"], input=f"url={url}\n\n".encode(), capture_output=True,
                              env=env, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    fields = dict(line.split("=", 1) for line in done.stdout.decode(errors="replace").splitlines() if "=" in line)
    if not fields.get("password"):
        return None
    return fields.get("username", ""), fields["password"]


def upload_name(index: int) -> str:
    """Where the archive holds upload number `index` (provisioner.jobs.script places it from there)."""
    return f"uploads/{index}"
