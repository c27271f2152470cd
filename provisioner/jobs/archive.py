"""A job's archive: the job folder's own files and the run's uploads (provisioner.jobs.uploads), packed while they
are sent; a job without uploads as a plain tar of its folder's few files (gzipped), where no builtin printf writes
them (provisioner.jobs.launch.written_inline).

The archive is made in a thread while the caller sends it, so packing and the network overlap. It is one gzip stream of
several members (what `tar -xz` reads on every host; zstd is not on every host, and saying which format comes would
cost a round trip): a big file whose sample does not shrink under zlib (weights, archives) goes stored, since
compressing it costs more than sending it; code and text go at gzip level 1, raised up to 6 while the link is what
holds the upload back (the queue to the sender stays full) and lowered again while packing is (the queue runs empty).
On the benchmark's 100 MB (half random, half code) to a namespace host: 0.96x `scp -O -r`'s time (1.28x when the whole
stream took one level); on Python's standard library sources, 0.60x (benchmarks/upload_bench.py).
"""

from __future__ import annotations

import io
import queue
import tarfile
import threading
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

from configuration.errors import ConfigurationError
from provisioner.jobs.uploads import UploadPlan, upload_name

CHUNK = 1 << 20
QUEUED_CHUNKS = 8  # chunks packed ahead of the sender


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


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
