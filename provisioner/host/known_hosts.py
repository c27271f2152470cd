"""`$DSTACK_HOME/known_hosts` (0600): the fleet hosts' keys, recorded when the user confirms a fingerprint at fleet
registration and required for every connection after (provisioner.host.ssh). A target is anything with a `hostname`
and a `port` (provisioner.host.ssh.SSHTarget)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Sequence

from configuration.home import dstack_home, private_file


def known_hosts_path() -> Path:
    return dstack_home() / "known_hosts"


def describe_key(key) -> str:
    """`ssh-ed25519 SHA256:...`: the fingerprint as `ssh-keygen -l` prints it (base64 of the SHA-256, no padding)."""
    return f"{key.get_name()} {key.fingerprint}"


def host_key_name(target) -> str:
    """The host as known_hosts names it."""
    return target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"


def recorded_host_keys(target) -> dict:
    """The keys recorded for the host in known_hosts, by type ({} when none is), as the file reads now."""
    try:
        text = known_hosts_path().read_text()
    except FileNotFoundError:
        return {}
    return dict(_host_keys(text).lookup(host_key_name(target)) or {})


@functools.lru_cache(maxsize=2)
def _host_keys(text: str):
    """known_hosts' text as paramiko.HostKeys.load reads the file: a kept connection checks the file before each
    command's use (provisioner.host.ssh.untrusted_now), and parsing it took ~0.5 ms each time for a 16-host fleet's
    file (every line's key, and each line looked up among those before it); the text is read each time, and the same
    text is parsed once. A line it cannot read is passed over, as load does; load also drops a host's key recorded
    again, which changes no lookup (the first line of a key type is the one a lookup gives), so this does not."""
    import paramiko

    keys = paramiko.HostKeys()
    for number, line in enumerate(text.split("\n"), 1):  # as a file iterates (read_text made CR LF and CR a LF)
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except paramiko.SSHException:
            continue
        if entry is not None:
            keys._entries.append(entry)  # what load appends to (HostKeys.add would replace a host's key of the type)
    return keys


def recorded_key_lines(targets: Sequence) -> List[List[str]]:
    """For each target, the keys known_hosts records for it as `type base64` (what a cluster's job folders get), read
    from the file's text: importing paramiko (~50 ms) would be the only use of it in a command that reaches its hosts
    through keepers. A file with a hashed host name or a marker line (which only a hand edit gives it) is read by
    paramiko as recorded_host_keys reads it."""
    try:
        text = known_hosts_path().read_text()
    except FileNotFoundError:
        return [[] for _ in targets]
    entries = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if any(fields[0].startswith(("|", "@")) for fields in entries):
        return [[f"{key.get_name()} {key.get_base64()}" for key in recorded_host_keys(target).values()]
                for target in targets]
    return [list(dict.fromkeys(f"{fields[1]} {fields[2]}" for fields in entries
                               if len(fields) >= 3 and host_key_name(target) in fields[0].split(",")))
            for target in targets]


def record_host_keys(offered: list) -> None:
    """Adds [(SSHTarget, key), ...] to known_hosts, which is created 0600 before anything is written to it."""
    import paramiko

    path = private_file(known_hosts_path())
    keys = paramiko.HostKeys(str(path))
    for target, key in offered:
        keys.add(host_key_name(target), key.get_name(), key)
    keys.save(str(path))
