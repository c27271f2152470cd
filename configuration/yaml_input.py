"""Reads a YAML file that a person wrote (a `*.dstack.yml`, `config.yml`, `secrets.yml`) into plain Python data, within
bounds, turning every problem into one short ConfigurationError that names the file.

A file is trusted for nothing: it may be in another encoding, hold control characters, be endless (`/dev/zero`), nest
thousands of levels (PyYAML composes recursively) or expand a few aliases into billions of values ("billion laughs").
Each of these is refused before it costs more than a fraction of a second or a few megabytes. The bounds are far above
any real configuration and are listed in docs/reference/task.md ("Limits").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from configuration.errors import ConfigurationError

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 100
MAX_VALUES = 10_000
MAX_NUMBER_LENGTH = 100  # digits of an integer: longer ones cost quadratic time (sexagesimal `1:2:3`) for no use
MAX_MESSAGE_LENGTH = 200  # of a problem's text, which may quote the file

_STRING_TAG = "tag:yaml.org,2002:str"
_BYTE_ORDER_MARKS = (
    (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"),
)


class _ContentError(yaml.MarkedYAMLError):
    """What the file holds breaks a rule of this module (a bound, a key that is not a string); the syntax is fine, so
    the message has no `YAML syntax error` prefix."""

    def __init__(self, problem: str, mark: Optional[yaml.Mark]):
        super().__init__(problem=problem, problem_mark=mark)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts, while composing, the values a document expands to (an alias counts as many
    values as the node it names) and how deep they nest, and that gives string keys and readable value errors only."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0
        self._values = 0
        self._anchor_values: Dict[str, int] = {}

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.anchors and event.anchor not in self._anchor_values:
                raise _ContentError(f"the alias *{event.anchor} refers to a value that contains it", event.start_mark)
            self._count(self._anchor_values.get(event.anchor, 0), event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _ContentError(f"values nest more than {MAX_DEPTH} levels deep", event.start_mark)
        before = self._values
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._anchor_values[event.anchor] = self._values - before
        return node

    def _count(self, values: int, mark: yaml.Mark) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise _ContentError(f"the file holds more than {MAX_VALUES:,} values (YAML aliases expanded)", mark)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # an impossible date (2024-02-30), an integer past Python's limit
            # the value is not quoted: secrets.yml is read here too
            problem = f"cannot read this {node.tag.rsplit(':', 1)[-1]} ({e}); quote it if it is text"
            raise _ContentError(problem, node.start_mark) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_NUMBER_LENGTH:
            raise _ContentError(f"a number is longer than {MAX_NUMBER_LENGTH} digits; quote it if it is text",
                                node.start_mark)
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        self.flatten_mapping(node)  # merge keys (`<<: *defaults`) first, so that merged keys are checked too
        for key, _ in node.value:
            if key.tag != _STRING_TAG:
                problem = (f"the key {shorten(key.value, 40)} is not a string: quote it"
                           if isinstance(key, yaml.ScalarNode) else f"a key must be a string, not a {key.id}")
                raise _ContentError(problem, key.start_mark)
        return super().construct_mapping(node, deep)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def read_text(path: Path) -> str:
    """The file's text: at most MAX_FILE_BYTES of UTF-8 (a UTF-8 byte-order mark is allowed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read the file: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigurationError(f"{path}: the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB; "
                                 "is it the configuration you meant?")
    return decode(data, str(path))


def decode(data: bytes, source: str) -> str:
    """UTF-8 text, or an error that names the encoding the file seems to be in, or where its first bad byte is."""
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            raise ConfigurationError(f"{source}: the file is {encoding} text; save it as UTF-8")
    if 0 in data:
        head = data[:256]
        if any(2 * half.count(0) >= len(half) for half in (head[0::2], head[1::2])):
            raise ConfigurationError(f"{source}: the file looks like UTF-16 or UTF-32 text; save it as UTF-8")
        where = _line_column(data, data.index(0))
        raise ConfigurationError(f"{source}:{where}: NUL byte: is this a binary file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        where = _line_column(data, e.start)
        raise ConfigurationError(
            f"{source}:{where}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def load_yaml_file(path: Path) -> Tuple[Any, Optional[yaml.Node]]:
    return parse_yaml(read_text(path), str(path))


def parse_yaml(text: str, source: str) -> Tuple[Any, Optional[yaml.Node]]:
    """The document's data (dicts, lists, strings, numbers, booleans, None) and its node tree, for line numbers."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # checks every character first
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as e:
        where = _line_column(text, e.position)
        raise ConfigurationError(
            f"{source}:{where}: character U+{e.character:04X} is not allowed in YAML; remove it, "
            f"or write it as an escape inside double quotes (\"\\u{e.character:04x}\")"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        kind = "" if isinstance(e, _ContentError) else "YAML syntax error: "
        raise ConfigurationError(f"{where}: {kind}{shorten(str(e.problem or e.context))}") from None
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{source}: YAML syntax error: {shorten(str(e))}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node


def _line_column(text: Any, position: int) -> str:
    """`LINE:COLUMN` (from 1) of a position in a text or its bytes."""
    newline = "\n" if isinstance(text, str) else b"\n"
    line = text.count(newline, 0, position) + 1
    column = position - (text.rfind(newline, 0, position) + 1) + 1
    return f"{line}:{column}"


def shorten(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """The text, cut to `limit` characters with `...` at the end when longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
