"""The output of a run's nodes: the copy kept under $DSTACK_HOME per node, and one stream of whole lines, each with
its node's rank in front, for a run of several nodes (`dstack apply`, `dstack logs`)."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List


def prefix(rank: int) -> bytes:
    return f"[{rank}] ".encode()


class NodeLines:
    """Turns each node's output, as it arrives in pieces, into whole lines with the node's rank in front, written
    in the order they complete. A single node's output passes through as it is."""

    def __init__(self, size: int, write: Callable[[bytes], None]):
        self.size = size
        self._write = write
        self._partial: Dict[int, bytes] = {}

    def add(self, rank: int, data: bytes) -> None:
        if self.size == 1:
            self._write(data)
            return
        text = self._partial.pop(rank, b"") + data
        *lines, rest = text.split(b"\n")
        if lines:
            self._write(b"".join(prefix(rank) + line + b"\n" for line in lines))
        if rest:
            self._partial[rank] = rest

    def flush(self, rank: int) -> None:
        """The node has ended: its last line, even without a newline."""
        rest = self._partial.pop(rank, b"")
        if rest:
            self._write(prefix(rank) + rest + b"\n")


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of output that arrives in chunks (any line ending, as bytes.splitlines reads them), without their
    endings; a line cut between two chunks comes whole."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).splitlines(keepends=True)
        # the last piece waits for the next chunk unless it ends in "\n" (a lone "\r" may be half of "\r\n")
        rest = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for line in lines:
            yield line.rstrip(b"\r\n")
    if rest:
        yield from rest.splitlines()


def interleave_chunks(outputs: List[Iterable[bytes]]) -> Iterator[bytes]:
    """Whole logs of several nodes, each read in chunks, line by line in turn (node 0's first line, node 1's first
    line, ...), each with its rank in front: a few lines at a time, however long the logs."""
    sources = [(rank, _lines(output)) for rank, output in enumerate(outputs)]
    while sources:
        left = []
        for rank, lines in sources:
            line = next(lines, None)
            if line is not None:
                yield prefix(rank) + line + b"\n"
                left.append((rank, lines))
        sources = left


def interleave(outputs: List[bytes]) -> bytes:
    """interleave_chunks of logs held whole."""
    return b"".join(interleave_chunks([[output] for output in outputs]))
