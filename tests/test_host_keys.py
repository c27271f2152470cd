"""Fleet host keys: shown as SHA256 fingerprints and confirmed at registration, required for every connection after."""

import base64
import json
import os
import pty
import subprocess
import sys
import time

import pytest

from provisioner.host.known_hosts import known_hosts_path, record_host_keys
from provisioner.host.ssh import HostKeyChanged, HostKeyUnknown, SSHTarget, connect, scan_host_key
from tests.helpers import ROOT, run_cli


def fleet_file(tmp_path, client_key, *hosts, name="lab"):
    path = tmp_path / f"{name}.dstack.yml"
    path.write_text(f"type: fleet\nname: {name}\nssh_config:\n  user: root\n  identity_file: {client_key[0]}\n"
                    f"  hosts: [{', '.join(h.address for h in hosts)}]\n")
    return str(path)


def keygen_fingerprint(host) -> str:
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(host.dir / "host_key.pub")],
                            capture_output=True, text=True, check=True)
    return listed.stdout.split()[1]


def fleets(env):
    return json.loads(run_cli("fleet", "--json", env=env).stdout)["fleets"]


def change_host_key(host):
    host.stop_sshd()
    host.new_host_key()
    host.start_sshd()


def test_registration_shows_the_sha256_fingerprint_and_records_the_key(tmp_path, home_env, make_host, client_key):
    first, second = make_host(), make_host()
    result = run_cli("apply", "-f", fleet_file(tmp_path, client_key, first, second), "-y", env=home_env, input="")
    assert result.returncode == 0, result.stderr
    for host in (first, second):
        fingerprint = keygen_fingerprint(host)
        assert fingerprint.startswith("SHA256:") and not fingerprint.endswith("=")
        assert f"root@{host.address}:22  ssh-ed25519 {fingerprint}" in result.stderr
        assert host.host_public_key.split()[1] in known_hosts_path().read_text()
    assert known_hosts_path().stat().st_mode & 0o777 == 0o600
    assert len(fleets(home_env)[0]["hosts"]) == 2

    again = run_cli("apply", "-f", fleet_file(tmp_path, client_key, first, second), env=home_env, input="")
    assert again.returncode == 0, again.stderr  # recorded keys need no confirmation
    assert "not recorded" not in again.stderr


def test_registration_without_a_terminal_or_y_refuses(tmp_path, home_env, make_host, client_key):
    host = make_host()
    result = run_cli("apply", "-f", fleet_file(tmp_path, client_key, host), env=home_env, input="")
    assert result.returncode == 1
    assert keygen_fingerprint(host) in result.stderr
    assert "no terminal to confirm them: check the fingerprints, then run again with -y" in result.stderr
    assert "Traceback" not in result.stderr
    assert fleets(home_env) == []
    assert not known_hosts_path().exists() or host.address not in known_hosts_path().read_text()


def confirm_at_terminal(fleet, env, answer: bytes):
    """`dstack apply -f FLEET` with a terminal on stdin that answers the question."""
    main, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", fleet], stdin=terminal,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, **env))
    os.close(terminal)
    os.write(main, answer + b"\n")  # held by the terminal until the question reads it
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        os.close(main)
    return process.returncode, stderr.decode()


def test_registration_at_a_terminal_asks(tmp_path, home_env, make_host, client_key):
    host = make_host()
    fleet = fleet_file(tmp_path, client_key, host)
    code, stderr = confirm_at_terminal(fleet, home_env, b"n")
    assert code == 1 and "Trust these host keys? [y/N]" in stderr and keygen_fingerprint(host) in stderr
    assert "its host keys were not trusted" in stderr and fleets(home_env) == []
    code, stderr = confirm_at_terminal(fleet, home_env, b"y")
    assert code == 0, stderr
    assert [h["access"]["hostname"] for h in fleets(home_env)[0]["hosts"]] == [host.address]


def test_a_run_to_a_host_whose_key_is_not_recorded_is_refused(tmp_path, home_env, make_host, client_key):
    host = make_host()
    assert run_cli("apply", "-f", fleet_file(tmp_path, client_key, host), "-y", env=home_env).returncode == 0
    known_hosts_path().unlink()
    task = tmp_path / "t.dstack.yml"
    task.write_text("type: task\nname: no-key\nbackends: [ssh]\ncommands: [echo never]\n")
    result = run_cli("apply", "-f", str(task), "-y", env=home_env)
    assert result.returncode == 1 and result.stdout == ""
    assert f"the host key of root@{host.address}:22 is not recorded" in result.stderr
    assert "Register the fleet that lists the host again" in result.stderr and "Traceback" not in result.stderr
    assert not (host.jobs_dir / "no-key").exists()  # nothing reached the host
    assert not known_hosts_path().exists()  # and its key was not recorded on the way


def test_a_changed_key_stays_refused(tmp_path, home_env, make_host, client_key):
    host = make_host()
    fleet = fleet_file(tmp_path, client_key, host)
    assert run_cli("apply", "-f", fleet, "-y", env=home_env).returncode == 0
    old_key = host.host_public_key.split()[1]
    change_host_key(host)
    task = tmp_path / "t.dstack.yml"
    task.write_text("type: task\nname: changed\nbackends: [ssh]\ncommands: [echo never]\n")
    result = run_cli("apply", "-f", str(task), "-y", env=home_env)
    assert result.returncode == 1
    assert f"the host key of {host.address}:22 is not the one expected (got ssh-ed25519 " \
           f"{keygen_fingerprint(host)}" in result.stderr
    registered = run_cli("apply", "-f", fleet, "-y", env=home_env)  # -y trusts new keys, never a changed one
    assert registered.returncode == 1 and "is not the one expected" in registered.stderr
    assert old_key in known_hosts_path().read_text() and host.host_public_key.split()[1] not in \
        known_hosts_path().read_text()


def test_connect_trusts_only_a_recorded_key(make_host, client_key):
    host = make_host()
    target = SSHTarget(hostname=host.address, user="root", identity_file=client_key[0])
    started = time.monotonic()
    with pytest.raises(HostKeyUnknown, match=f"root@{host.address}:22 is not recorded"):
        connect(target, total_wait=30)
    assert time.monotonic() - started < 10  # refused at once, not retried
    assert not known_hosts_path().exists()
    key = scan_host_key(target)
    assert f"{key.get_name()} {key.get_base64()}" == host.host_public_key
    record_host_keys([(target, key)])
    connect(target, total_wait=10).close()
    change_host_key(host)
    with pytest.raises(HostKeyChanged, match=f"host key of {host.address}:22 is not the one expected"):
        connect(target, total_wait=10)


def test_the_keys_a_clusters_job_folders_get_are_read_as_paramiko_reads_known_hosts(tmp_path):
    """recorded_key_lines reads known_hosts' text (no paramiko import): the same keys as paramiko's reading, per host,
    for plain names, `[name]:port`, several types and comma-joined names; a hashed name is read by paramiko."""
    import paramiko

    from provisioner.host.known_hosts import recorded_host_keys, recorded_key_lines

    made = {}
    for kind in ("ed25519", "ecdsa", "rsa"):
        key_path = tmp_path / f"key-{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key_path)], check=True)
        made[kind] = (tmp_path / f"key-{kind}.pub").read_text().split()[:2]
    targets = [SSHTarget("10.0.0.1"), SSHTarget("10.0.0.2", port=2222), SSHTarget("alias-b"), SSHTarget("10.0.0.9")]
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("# recorded by dstack\n"
            f"10.0.0.1 {' '.join(made['ed25519'])}\n10.0.0.1 {' '.join(made['ecdsa'])}\n\n"
            f"[10.0.0.2]:2222 {' '.join(made['rsa'])}\n10.0.0.2 {' '.join(made['ecdsa'])}\n"
            f"alias-a,alias-b {' '.join(made['ed25519'])}\n")
    path.write_text(text)
    by_paramiko = [[f"{key.get_name()} {key.get_base64()}" for key in recorded_host_keys(t).values()] for t in targets]
    assert recorded_key_lines(targets) == by_paramiko
    assert by_paramiko[0] == [" ".join(made["ed25519"]), " ".join(made["ecdsa"])] and by_paramiko[3] == []
    hashed = paramiko.HostKeys()
    hashed.add(paramiko.HostKeys.hash_host("10.0.0.9"), made["ecdsa"][0],
               paramiko.PKey.from_type_string(made["ecdsa"][0], base64.b64decode(made["ecdsa"][1])))
    hashed.save(str(tmp_path / "hashed"))
    path.write_text(text + (tmp_path / "hashed").read_text())
    assert recorded_key_lines(targets)[3] == [" ".join(made["ecdsa"])]


def made_keys(tmp_path, *kinds) -> list:
    made = []
    for number, kind in enumerate(kinds):
        key_path = tmp_path / f"made-{number}-{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key_path)], check=True)
        made.append(" ".join((tmp_path / f"{key_path.name}.pub").read_text().split()[:2]))
    return made


def test_the_recorded_keys_are_those_paramiko_reads_from_the_file(tmp_path):
    """recorded_host_keys parses known_hosts' text itself (once for the same text): for each host, the keys paramiko's
    HostKeys reads from the file, whatever the file holds (a host's key type recorded twice: the first line; the same
    line twice; hashed names, comments, a line whose key does not parse, CR LF ends); a marker line (which paramiko
    cannot read) is refused as paramiko refuses it."""
    import paramiko

    from provisioner.host.known_hosts import recorded_host_keys

    first, second, ecdsa, rsa = made_keys(tmp_path, "ed25519", "ed25519", "ecdsa", "rsa")
    hashed = paramiko.HostKeys()
    hashed.add(paramiko.HostKeys.hash_host("10.0.0.7"), "ssh-ed25519",
               paramiko.PKey.from_type_string("ssh-ed25519", base64.b64decode(second.split()[1])))
    hashed.save(str(tmp_path / "hashed"))
    text = (f"# a comment\n10.0.0.1 {first}\n10.0.0.1 {second}\n10.0.0.1 {ecdsa}\r\n10.0.0.1 {first}\n\n"
            f"[10.0.0.2]:2222,10.0.0.3 {rsa}\n10.0.0.3 {first}\n"
            f"10.0.0.5 ssh-ed25519 AAAA\n10.0.0.5 {ecdsa}\n10.0.0.6 unknown-type AAAA\n"
            + (tmp_path / "hashed").read_text())
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    read_by_paramiko = paramiko.HostKeys(str(path))
    for target in (SSHTarget("10.0.0.1"), SSHTarget("10.0.0.2", port=2222), SSHTarget("10.0.0.3"),
                   SSHTarget("10.0.0.4"), SSHTarget("10.0.0.5"), SSHTarget("10.0.0.6"), SSHTarget("10.0.0.7"),
                   SSHTarget("10.0.0.8")):
        name = target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"
        expected = {kind: key.asbytes() for kind, key in dict(read_by_paramiko.lookup(name) or {}).items()}
        assert {kind: key.asbytes() for kind, key in recorded_host_keys(target).items()} == expected, name
    assert recorded_host_keys(SSHTarget("10.0.0.1"))["ssh-ed25519"].get_base64() == first.split()[1]
    path.write_text(text + f"@revoked 10.0.0.4 {second}\n")
    with pytest.raises(paramiko.hostkeys.InvalidHostKey):
        paramiko.HostKeys(str(path))
    with pytest.raises(paramiko.hostkeys.InvalidHostKey):
        recorded_host_keys(SSHTarget("10.0.0.1"))


def test_known_hosts_is_read_at_each_check_and_parsed_once_for_the_same_text(tmp_path, monkeypatch):
    """A kept connection checks known_hosts before each command's use (untrusted_now): the file is read each time, so
    a changed record counts at once, but the same text is not parsed again (every line's key, ~0.5 ms for 16 hosts)."""
    import paramiko

    from provisioner.host.known_hosts import recorded_host_keys

    keys = made_keys(tmp_path, *["ed25519"] * 17)
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"10.0.1.{number} {key}\n" for number, key in enumerate(keys[:16])))
    parsed = []
    from_line = paramiko.hostkeys.HostKeyEntry.from_line
    monkeypatch.setattr(paramiko.hostkeys.HostKeyEntry, "from_line",
                        classmethod(lambda cls, line, lineno=None: parsed.append(line) or from_line(line, lineno)))
    target = SSHTarget("10.0.1.5")
    assert recorded_host_keys(target)["ssh-ed25519"].get_base64() == keys[5].split()[1]
    assert recorded_host_keys(target)["ssh-ed25519"].get_base64() == keys[5].split()[1]
    assert len(parsed) <= 16  # the second check parsed nothing (the first, at most each line once)
    path.write_text(path.read_text().replace(keys[5], keys[16]))  # the same size: a host's key replaced in place
    assert recorded_host_keys(target)["ssh-ed25519"].get_base64() == keys[16].split()[1]
