"""What a run uploads, decided and size-checked before anything is provisioned, then packed as one tar.gz stream
(a job without uploads: a plain tar of its folder's few files, see gzipped, where no builtin printf writes them).

- A git repository uploads what git would commit: tracked files and untracked ones that are not ignored
  (`git ls-files -co --exclude-standard`), HEAD plus uncommitted changes. A folder that is no repository is never
  uploaded whole: only `files:` mappings take folders outside a repository, and they go through the same filters.
- Everywhere: `.gitignore` and `.dstackignore` are honoured (git reads both, so the patterns mean what they mean to
  git), and `.git` internals, virtual environments (a folder holding `pyvenv.cfg`) and `$DSTACK_HOME` never leave.
- The total is checked against DEFAULT_LIMIT_MB (`$DSTACK_UPLOAD_LIMIT_MB` overrides it); the error names the biggest
  files. Files that vanish between the listing and the packing are skipped.
- The archive is made in a thread while the caller sends it, so packing and the network overlap. It is one gzip
  stream of several members (what `tar -xz` reads on every host; zstd is not on every host, and saying which
  format comes would cost a round trip): a big file whose sample does not shrink under zlib (weights, archives)
  goes stored, since compressing it costs more than sending it; code and text go at gzip level 1, raised up to 6
  while the link is what holds the upload back (the queue to the sender stays full) and lowered again while
  packing is (the queue runs empty). On the benchmark's 100 MB (half random, half code) to a namespace host: 0.96x
  `scp -O -r`'s time (1.28x when the whole stream took one level); on Python's standard library sources, 0.60x
  (benchmarks/upload_bench.py).
"""

from __future__ import annotations

import io
import os
import posixpath
import queue
import stat
import subprocess
import tarfile
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from configuration.errors import ConfigurationError
from configuration.home import dstack_home

DEFAULT_LIMIT_MB = 100
LIMIT_VARIABLE = "DSTACK_UPLOAD_LIMIT_MB"
CHUNK = 1 << 20
QUEUED_CHUNKS = 8  # chunks packed ahead of the sender
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


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def upload_name(index: int) -> str:
    """Where the archive holds upload number `index` (provisioner.jobs.script places it from there)."""
    return f"uploads/{index}"


class _ChunkWriter(io.RawIOBase):
    """A file object that hands what is written to `put` in chunks of about CHUNK bytes."""

    def __init__(self, put: Callable[[bytes], None]):
        self._put = put
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self.flush_chunk()
        return len(data)

    def flush_chunk(self) -> None:
        if self._buffer:
            self._put(bytes(self._buffer))
            self._buffer.clear()


SAMPLE_BYTES = 64 * 1024
COMPRESSIBLE = 0.7  # a sample that shrinks below this share is worth compressing
SAMPLED_FROM = 1 << 20  # files at least this big are sampled one by one; smaller ones take the archive's level
MIN_LEVEL, MAX_LEVEL = 1, 6  # gzip levels for what compresses: faster as packing lags, denser as the link lags
LEVEL_EVERY = 4 * CHUNK  # bytes packed between two looks at the link


def _compresses(path: Path) -> Optional[bool]:
    """Whether a sample from the start of the file shrinks enough under zlib; None for an unreadable one."""
    try:
        with open(path, "rb") as source:
            sample = source.read(SAMPLE_BYTES)
    except OSError:
        return None
    return len(zlib.compress(sample, 1)) < COMPRESSIBLE * len(sample) if sample else None


def compression_level(plan: UploadPlan) -> int:
    """The level the archive starts at: 1 when a sample of its biggest files shrinks enough under zlib, else 0
    (stored). Each big file is judged again on its own (_FileLevels)."""
    judged = [_compresses(path) for path, _ in plan.biggest(8)]
    judged = [compresses for compresses in judged if compresses is not None]
    return MIN_LEVEL if not judged or any(judged) else 0


class _GzipMembers:
    """A gzip stream written as consecutive members (gzip -d, and so `tar -xz`, reads them as one stream), each at
    the level set for it: a member ends and the next begins where the level changes. Weights and archives go
    stored (level 0: a copy and a CRC), code compressed; compressing what does not shrink costs more than sending
    it."""

    def __init__(self, out):
        self._out = out
        self._level: Optional[int] = None
        self._member = None

    def set_level(self, level: int) -> None:
        if level != self._level:
            self._end_member()
            self._level = level

    def write(self, data) -> int:
        if self._member is None:
            self._member = zlib.compressobj(MIN_LEVEL if self._level is None else self._level, zlib.DEFLATED, 31)
        packed = self._member.compress(data)
        if packed:
            self._out.write(packed)
        return len(data)

    def _end_member(self) -> None:
        if self._member is not None:
            self._out.write(self._member.flush())
            self._member = None

    def close(self) -> None:
        if self._member is None:  # an empty archive is still one gzip member
            self.write(b"")
        self._end_member()


class _FileLevels:
    """The level each file goes at. A big file whose sample does not shrink is stored. What compresses starts at
    MIN_LEVEL and moves with the link: while the sender waits for the packer (a fast link: the queue is empty)
    the level goes down to MIN_LEVEL, while the packer waits for the link (the queue is full) it goes up to
    MAX_LEVEL, so each side is kept busy."""

    def __init__(self, start: int, backlog: Callable[[], float]):
        self.level = start or MIN_LEVEL
        self._start = start
        self._backlog = backlog  # how full the queue to the sender is, 0..1
        self._since_change = 0  # bytes since the level was last weighed: it changes every few MB, not every file

    def of(self, path: Path, size: int) -> int:
        self._since_change += size
        if self._since_change >= LEVEL_EVERY:
            self._since_change = 0
            backlog = self._backlog()
            if backlog >= 0.75:
                self.level = min(MAX_LEVEL, self.level + 1)
            elif backlog <= 0.25:
                self.level = max(MIN_LEVEL, self.level - 1)
        if size < SAMPLED_FROM:
            return self.level if self._start else 0
        return self.level if _compresses(path) is not False else 0


def gzipped(plan: UploadPlan) -> bool:
    """Whether the job's archive is gzip: only where it carries uploads. Without them it holds the job folder's own
    few files (job.sh, env, a cluster's keys: a few KB), which go as a plain tar: the host unpacks it without
    starting gzip (~1.4 ms of its CPU per job start). Over SSH the start writes them itself (launch.written_inline)."""
    return bool(plan.uploads)


def unpack_command(plan: UploadPlan) -> str:
    """The host's command that unpacks the job's archive (on its stdin) in the job folder."""
    return "tar -xzf -" if gzipped(plan) else "tar -xf -"


def _write_archive(out, plan: UploadPlan, extra: Dict[str, Tuple[bytes, int]], done: Callable[[int], None],
                   backlog: Callable[[], float] = lambda: 0.0) -> None:
    if not gzipped(plan):
        _write_plain(out, extra)
        return
    compressed = _GzipMembers(out)
    levels = _FileLevels(compression_level(plan), backlog)
    with tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for name, (data, mode) in extra.items():
            add_bytes(archive, name, data, mode)
        for index, upload in enumerate(plan.uploads):
            for name, size in upload.files:
                arcname = f"{upload_name(index)}/{name}" if name else upload_name(index)
                path = upload.source / name if name else upload.source
                compressed.set_level(levels.of(path, size))
                _add_file(archive, path, arcname)
                done(size)
    compressed.close()


def _write_plain(out, extra: Dict[str, Tuple[bytes, int]]) -> None:
    """A plain tar of `extra`, ending at its end-of-archive blocks (tarfile pads it to 10 KB, which `tar -x` reading
    a pipe does not need)."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for name, (data, mode) in extra.items():
            add_bytes(archive, name, data, mode)
        end = archive.offset + 2 * tarfile.BLOCKSIZE
    out.write(packed.getvalue()[:end])


def _add_file(archive: tarfile.TarFile, path: Path, arcname: str) -> None:
    try:
        if path.is_symlink():
            archive.addfile(archive.gettarinfo(str(path), arcname))
            return
        with open(path, "rb") as source:
            info = archive.gettarinfo(arcname=arcname, fileobj=source)
            archive.addfile(info, source)
    except FileNotFoundError:  # deleted since the listing: what is gone is not uploaded
        return
    except OSError as e:  # unreadable, or shrunk while being read
        raise ConfigurationError(f"cannot upload {path}: {e.strerror or e}") from None


def archive_stream(plan: UploadPlan, extra: Dict[str, Tuple[bytes, int]],
                   progress: Callable[[int, int], None] = lambda done, total: None) -> Iterator[bytes]:
    """The archive of `extra` ({name: (bytes, mode)}) and the plan's uploads (a tar.gz; a plain tar where there are
    no uploads, see gzipped), in chunks as a thread makes them;
    `progress(bytes packed, bytes in all)` is called from the caller's thread."""
    chunks: "queue.Queue" = queue.Queue(maxsize=QUEUED_CHUNKS)
    stop = threading.Event()
    total, packed = plan.total_bytes, [0]

    def put(item) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def produce() -> None:
        writer = _ChunkWriter(lambda data: put((data, packed[0])))
        try:
            _write_archive(writer, plan, extra, lambda size: packed.__setitem__(0, packed[0] + size),
                           lambda: chunks.qsize() / QUEUED_CHUNKS)
            writer.flush_chunk()
            put(None)
        except BaseException as e:  # handed to the caller, which raises it
            put(e)

    thread = threading.Thread(target=produce, name="dstack-pack", daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if item is None:
                progress(total, total)
                return
            if isinstance(item, BaseException):
                raise item
            data, done = item
            progress(done, total)
            yield data
    finally:
        stop.set()
        thread.join(timeout=5)
