"""A host whose `sh` is bash (RHEL, Fedora, Amazon Linux): the connection's long-lived shell reads its input a byte
at a time there, so long commands and small archives go framed (provisioner.host.ssh.FRAMED_MIN); a host whose `sh`
is dash gets them as before."""

import hashlib
import os
import shutil

import pytest

from provisioner.host import ssh
from provisioner.host.ssh import FRAMED_MIN, SSHTarget, connect

IO_OF_THE_SHELL = "grep '^syscr' /proc/$$/io | cut -d' ' -f2"  # $$: the long-lived shell (a subshell's parent)


def bash_is_sh(host) -> None:
    """The host's login user finds bash as `sh` first on PATH, as a RHEL host's users do: its login shell (in the
    host's own passwd) puts a folder where `sh` is bash in front of PATH."""
    folder = host.dir / "bash-as-sh"
    folder.mkdir()
    (folder / "sh").symlink_to(shutil.which("bash"))
    login = folder / "login"
    login.write_text(f'#!/bin/dash\nPATH={folder}:$PATH; export PATH; exec /bin/dash "$@"\n')
    login.chmod(0o755)
    passwd = host.dir / "passwd"
    entry = f"{host.login_user}:x:{host.uid}:{host.uid}::{host.dir / 'home'}:"
    assert f"{entry}/bin/sh\n" in passwd.read_text()
    passwd.write_text(passwd.read_text().replace(f"{entry}/bin/sh\n", f"{entry}{login}\n"))
    host.stop_sshd()
    host.start_sshd()


def connected_to_shell(make_host, client_key, shell: str):
    """A connection to a new namespace host whose login user's `sh` is `shell` (bash, as RHEL's, or dash)."""
    host = make_host(login_user="plain")
    if shell == "bash":
        bash_is_sh(host)
    return connect(SSHTarget(hostname=host.address, user="plain", identity_file=client_key[0],
                             host_key=host.host_public_key), total_wait=10)


def reads_of(transport, command: str) -> int:
    """The read(2) calls the long-lived shell made while `command` ran (its own reads of its input included)."""
    before = int(transport.run(IO_OF_THE_SHELL).text)
    result = transport.run(command)
    assert result.code == 0, result.stderr
    return int(transport.run(IO_OF_THE_SHELL).text) - before


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_long_commands_and_archives_reach_the_shell_whole(make_host, client_key, shell, monkeypatch):
    transport = connected_to_shell(make_host, client_key, shell)
    try:
        assert transport.run('printf "%s" "${BASH_VERSION:+bash}"').text == ("bash" if shell == "bash" else "")
        words = " ".join(f"w{i}" for i in range(20000))  # ~130 KB of command text
        # builtins alone: the reads counted are the shell's own (and head's, framed), none of a pipeline's reader,
        # whose count (each of printf's writes, or several at once) depends on how the two got their turns
        long = f"set -- {words}; echo $#"
        assert len(long) > 50 * FRAMED_MIN
        result = transport.run(long)
        assert result.code == 0 and result.text.strip() == "20000"
        framed = reads_of(transport, long)  # one line, and the command substitution's pipe in blocks
        monkeypatch.setattr(ssh, "FRAMED_MIN", 1 << 30)
        unframed = reads_of(transport, long)  # bash: a byte per read; dash: 8 KB per read
        monkeypatch.undo()
        if shell == "bash":
            assert unframed > len(long) and framed < len(long) / 20
        else:
            assert unframed < 100 and framed < 100
        data = os.urandom(700 << 10)  # under SHELL_STDIN_MAX: through the shell, as a base64 here-document
        result = transport.run("sha256sum | cut -c1-64; exit 3", stdin=data)
        assert (result.code, result.text.strip()) == (3, hashlib.sha256(data).hexdigest())
        small = transport.run("echo small; echo err >&2; exit 5")  # short ones go as they are
        assert (small.code, small.text, small.stderr) == (5, "small\n", b"err\n")
        quoted = transport.run(f"echo \"it's\" {'x' * FRAMED_MIN} | cut -c1-4")
        assert quoted.text == "it's\n"
    finally:
        transport.close()
