"""The line that ends each command's answer in a connection's long-lived shell (provisioner.host.ssh._EndLine): its
own marker and exit status, found by one pattern for every command."""

import re

from provisioner.host import ssh
from provisioner.host.ssh import SSHTarget, connect


def test_the_end_line_is_the_commands_own_marker_at_the_very_end():
    ours = ssh._EndLine("__dstack_0123456789abcdef")
    assert ours.search(b"out\n__dstack_0123456789abcdef 7\n").group("status") == b"7"
    assert ours.search(b"out\n__dstack_0123456789abcdef -1\n").group("status") == b"-1"
    assert ours.search(b"out\n__dstack_fedcba9876543210 0\n") is None  # another command's marker (its output)
    assert ours.search(b"out\n__dstack_0123456789abcdef 0\nmore\n") is None  # not the last line: not ended yet
    assert ours.search(b"__dstack_0123456789abcdef 0\n") is None  # printed by the command, not after a newline


def test_commands_compile_no_pattern_of_their_own(make_host, client_key, monkeypatch):
    """A pattern of each command's marker was compiled for each command (~45 us, 10 commands per node of a cluster's
    start)."""
    host = make_host()
    transport = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key), 10)
    compiled = []
    compile_pattern = re.compile

    def counted(pattern, *flags):
        compiled.append(pattern)
        return compile_pattern(pattern, *flags)

    monkeypatch.setattr(re, "compile", counted)
    try:
        for code in (0, 3):
            result = transport.run(f"echo out; echo err >&2; exit {code}")
            assert (result.code, result.text, result.stderr) == (code, "out\n", b"err\n")
        assert transport.run("cat", stdin=b"archive").text == "archive"
    finally:
        transport.close()
    assert not [pattern for pattern in compiled if b"__dstack_" in pattern]
