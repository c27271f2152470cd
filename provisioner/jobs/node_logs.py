"""The output of a run's nodes: the copy kept under $DSTACK_HOME per node, and one stream of whole lines, each with
its node's rank in front, for a run of several nodes (`dstack apply`, `dstack logs`)."""

from __future__ import annotations

from typing import Callable, Dict, List


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


def interleave(outputs: List[bytes]) -> bytes:
    """Whole logs of several nodes, line by line in turn (node 0's first line, node 1's first line, ...), each
    with its rank in front."""
    split = [output.splitlines() for output in outputs]
    lines = []
    for index in range(max((len(s) for s in split), default=0)):
        for rank, node_lines in enumerate(split):
            if index < len(node_lines):
                lines.append(prefix(rank) + node_lines[index] + b"\n")
    return b"".join(lines)
