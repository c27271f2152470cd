"""`Host NAME` entries, one per run, so that the user's own `ssh NAME` (and an IDE's Remote-SSH) reaches the run.

The entries live in `$DSTACK_HOME/ssh/config` (0600), which the user's `~/.ssh/config` includes: the `Include` line
is put at its top once (an Include after a `Host` block would belong to that block), and `add_entry` says when it
put it there. `~` is `$HOME`, as for every program but OpenSSH itself (which reads the home folder from the password
database: a test that points $HOME elsewhere runs `ssh -F $HOME/.ssh/config`). Each entry names the host, port, user
and the run's key; the host's key goes to `$DSTACK_HOME/ssh/known_hosts` under the run's name (`HostKeyAlias`), and
checking is strict: what dstack verified is what `ssh` accepts. A host behind another gets `ProxyJump NAME-jump`,
an entry of its own. Entries are rewritten under a lock, so concurrent dstack processes never lose one.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from configuration.home import dstack_home, private_dir, private_file


@dataclass(frozen=True)
class SSHEntry:
    name: str  # the `Host` alias: the run's name
    hostname: str
    port: int = 22
    user: Optional[str] = None
    identity_file: Optional[str] = None
    host_keys: List[str] = field(default_factory=list)  # `type base64` of the host; none: the user's own known_hosts
    jump: Optional["SSHEntry"] = None  # the host to go through (its name is NAME-jump)


def entries_path() -> Path:
    return dstack_home() / "ssh" / "config"


def known_hosts_path() -> Path:
    return dstack_home() / "ssh" / "known_hosts"


def user_ssh_config() -> Path:
    """The user's ssh config: `$HOME/.ssh/config`."""
    home = os.environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".ssh" / "config"


def _word(value: str) -> str:
    """A value as ssh_config reads it: quoted where it holds a space."""
    return f'"{value}"' if re.search(r"\s", value) else value


def include_line() -> str:
    return f"Include {_word(str(entries_path()))}"


@contextmanager
def _locked() -> Iterator[None]:
    lock = private_file(dstack_home() / "ssh" / "config.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _blocks(text: str) -> Dict[str, str]:
    """The file's entries by name, each its `Host` line and the lines under it, in order."""
    blocks: Dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        match = re.match(r"^Host\s+(\S+)\s*$", line)
        if match:
            name = match.group(1)
            blocks[name] = ""
        if name is not None:
            blocks[name] += line
    return blocks


def _block(entry: SSHEntry) -> str:
    options = {"HostName": entry.hostname, "Port": str(entry.port), "User": entry.user,
               "IdentityFile": _word(entry.identity_file) if entry.identity_file else None,
               "IdentitiesOnly": "yes" if entry.identity_file else None}
    if entry.host_keys:
        options.update({"HostKeyAlias": entry.name, "UserKnownHostsFile": _word(str(known_hosts_path())),
                        "StrictHostKeyChecking": "yes"})
    if entry.jump is not None:
        options["ProxyJump"] = entry.jump.name
    return f"Host {entry.name}\n" + "".join(f"    {key} {value}\n" for key, value in options.items() if value)


def _write_private(path: Path, text: str) -> None:
    private_file(path)
    temporary = path.with_name(path.name + ".tmp")
    private_file(temporary).write_text(text)
    os.replace(temporary, path)


def _rewrite(entries: Dict[str, Optional[SSHEntry]]) -> None:
    """Replaces (or, with None, removes) the named entries and their host keys."""
    path, known = entries_path(), known_hosts_path()
    blocks = _blocks(path.read_text() if path.exists() else "")
    keys = [line for line in (known.read_text().splitlines() if known.exists() else [])
            if line.split(" ", 1)[0] not in entries]
    for name, entry in entries.items():
        blocks.pop(name, None)
        if entry is not None:
            blocks[name] = _block(entry)
            keys += [f"{name} {key}" for key in entry.host_keys]
    _write_private(path, "".join(blocks.values()))
    _write_private(known, "".join(line + "\n" for line in keys))


def _with_jumps(entry: SSHEntry) -> Dict[str, Optional[SSHEntry]]:
    chain: Dict[str, Optional[SSHEntry]] = {}
    while entry is not None:
        chain[entry.name] = entry
        entry = entry.jump
    return chain


def ensure_include() -> Optional[str]:
    """Puts the Include line at the top of the user's ssh config (made 0600 in a 0700 ~/.ssh where missing); returns
    what was done, or None when the line was there."""
    config = user_ssh_config()
    line = include_line()
    existing = config.read_text() if config.exists() else ""
    if any(present.strip() == line for present in existing.splitlines()):
        return None
    private_dir(config.parent)
    if not config.exists():
        private_file(config)
    with open(config, "r+") as handle:  # in place: the file keeps its mode, owner and links
        handle.seek(0)
        handle.write(f"{line}\n" + ("\n" if existing and not existing.startswith("\n") else "") + existing)
    return f"Added `{line}` to the top of {config} (once), so that `ssh RUN` reaches dstack's runs"


def add_entry(entry: SSHEntry) -> Optional[str]:
    """Writes the run's entry (replacing one of the same name), and the Include line where it is missing: returns
    the message to show when that line was added."""
    with _locked():
        _rewrite(_with_jumps(entry))
        return ensure_include()


def remove_entry(name: str) -> bool:
    """Removes the run's entry and its jump host's, with their host keys; whether there was one."""
    path = entries_path()
    if not path.exists():
        return False
    with _locked():
        present = _blocks(path.read_text())
        names = [n for n in (name, f"{name}-jump") if n in present]
        if names:
            _rewrite({n: None for n in names})
        return bool(names)


def has_entry(name: str) -> bool:
    path = entries_path()
    return path.exists() and name in _blocks(path.read_text())
