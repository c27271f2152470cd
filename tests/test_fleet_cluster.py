"""SSH fleets as clusters (dstack's `placement: cluster`, `hosts[].internal_ip`, `network`, `proxy_jump`) through the
`dstack` command, on namespace hosts joined by a switch that also carries a private network of their own
(10.251.250.0/24, inside the guarded test range, present only in the hosts' namespaces): a multi-node task gets
those internal addresses as DSTACK_MASTER_NODE_IP and DSTACK_NODES_IPS, and a host reachable only through another is
reached with `proxy_jump`."""

import socket
import textwrap

import pytest

from tests.helpers import run_cli, write
from tests.netns_hosts import Switch, sh
from tests.test_runs import ps

PRIVATE = "10.251.250"


def private_address(host) -> str:
    return f"{PRIVATE}.{host.index}"


@pytest.fixture
def cluster(make_host):
    """Three hosts on one switch, each with an address of the private network on its switch link."""
    hosts = [make_host() for _ in range(3)]
    switch = Switch().start()
    try:
        for host in hosts:
            switch.join(host)
        for host, link in switch.members:
            sh("ip", "netns", "exec", host.ns, "ip", "addr", "add", f"{private_address(host)}/24", "dev", link)
        yield hosts
    finally:
        switch.cleanup()


def fleet_file(tmp_path, client_key, hosts_yaml: str) -> str:
    """A cluster fleet `lab`; `hosts_yaml` goes under `ssh_config`."""
    return write(tmp_path, "lab.dstack.yml", f"type: fleet\nname: lab\nplacement: cluster\nssh_config:\n"
                 f"  user: root\n  identity_file: {client_key[0]}\n{textwrap.indent(hosts_yaml, '  ')}")


# rank 1 connects to the master at DSTACK_MASTER_NODE_IP; both print what they were given
CHECK = ("type: task\nname: {name}\nnodes: 2\nbackends: [ssh]\ncommands:\n"
         "  - 'echo ips $(echo $DSTACK_NODES_IPS) master $DSTACK_MASTER_NODE_IP'\n"
         "  - >-\n    python3 -c \"import os, socket, time; m = os.environ['DSTACK_MASTER_NODE_IP'];"
         " s = socket.create_server((m, 29700)) if os.environ['DSTACK_NODE_RANK'] == '0' else None;"
         " print('accepted' if s and s.accept() else [time.sleep(0.1) for _ in"
         " iter(lambda:socket.socket().connect_ex((m, 29700)), 0)] and 'connected' or 'connected')\"\n")


def run_check(tmp_path, home_env, name="chk"):
    conf = write(tmp_path, f"{name}.dstack.yml", CHECK.format(name=name))
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines(), [job["host"].split("@")[1].split(":")[0] for job in ps(home_env)[name]["jobs"]]


def test_network_picks_each_hosts_internal_address_for_the_cluster_variables(tmp_path, home_env, cluster,
                                                                             client_key):
    hosts = cluster[:2]
    conf = fleet_file(tmp_path, client_key, f"hosts: [{', '.join(h.address for h in hosts)}]\nnetwork: {PRIVATE}.0/24\n")
    applied = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert applied.returncode == 0, applied.stderr
    for host in hosts:
        assert f"internal address {private_address(host)}" in applied.stdout + applied.stderr
    lines, ssh_addresses = run_check(tmp_path, home_env)
    by_address = {h.address: h for h in hosts}
    internal = [private_address(by_address[a]) for a in ssh_addresses]
    for rank in (0, 1):
        assert f"[{rank}] ips {internal[0]} {internal[1]} master {internal[0]}" in lines, lines
    assert "[0] accepted" in lines and "[1] connected" in lines


def test_internal_ip_per_host_is_used_and_checked_against_the_hosts_addresses(tmp_path, home_env, cluster,
                                                                              client_key):
    hosts = cluster[:2]
    listed = "".join(f"  - hostname: {h.address}\n    internal_ip: {private_address(h)}\n" for h in hosts)
    applied = run_cli("apply", "-f", fleet_file(tmp_path, client_key, "hosts:\n" + listed), "-y", env=home_env)
    assert applied.returncode == 0, applied.stderr
    lines, ssh_addresses = run_check(tmp_path, home_env, "ipchk")
    by_address = {h.address: h for h in hosts}
    internal = [private_address(by_address[a]) for a in ssh_addresses]
    assert f"[1] ips {internal[0]} {internal[1]} master {internal[0]}" in lines, lines

    wrong = f"  - hostname: {hosts[0].address}\n    internal_ip: {PRIVATE}.254\n" \
            f"  - hostname: {hosts[1].address}\n    internal_ip: {private_address(hosts[1])}\n"
    refused = run_cli("apply", "-f", fleet_file(tmp_path, client_key, "hosts:\n" + wrong), "-y", env=home_env)
    assert refused.returncode != 0
    assert f"root@{hosts[0].address}:22: internal_ip {PRIVATE}.254 is not one of the host's addresses" in \
        refused.stderr, refused.stderr
    assert private_address(hosts[0]) in refused.stderr and "Traceback" not in refused.stderr


def test_a_network_no_host_address_is_in_is_refused_naming_the_host(tmp_path, home_env, cluster, client_key):
    conf = fleet_file(tmp_path, client_key, f"hosts: [{cluster[0].address}]\nnetwork: 10.251.251.0/24\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert result.returncode != 0
    assert f"root@{cluster[0].address}:22: none of the host's addresses is in network 10.251.251.0/24" in \
        result.stderr, result.stderr


@pytest.mark.parametrize("hosts_yaml, message", [
    ("hosts:\n  - hostname: 10.251.1.2\n    internal_ip: 10.0.0.1\n  - 10.251.2.2\n",
     "internal_ip must be specified for all hosts (or none)"),
    ("hosts:\n  - hostname: 10.251.1.2\n    internal_ip: 10.0.0.1\nnetwork: 10.0.0.0/24\n",
     "internal_ip is mutually exclusive with network"),
    ("hosts:\n  - hostname: 10.251.1.2\n    internal_ip: 8.8.8.8\n", "IP address 8.8.8.8 is not private"),
    ("hosts:\n  - hostname: 10.251.1.2\n    internal_ip: ten\n", "Invalid IP address: 'ten'"),
    ("hosts: [10.251.1.2]\nnetwork: 8.8.0.0/16\n", "network 8.8.0.0/16 is public"),
    ("hosts: [10.251.1.2]\nnetwork: nope\n", "Failed to parse network: 'nope'"),
    ("hosts: [10.251.1.2]\nproxy_jump: {hostname: 10.251.3.2}\n", "proxy_jump.user"),
])
def test_cluster_fields_are_checked_as_dstack_checks_them(tmp_path, home_env, client_key, hosts_yaml, message):
    result = run_cli("apply", "-f", fleet_file(tmp_path, client_key, hosts_yaml), "--dry-run", env=home_env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("per_host", [True, False])
def test_proxy_jump_reaches_a_host_only_its_proxy_can_reach(tmp_path, home_env, cluster, client_key, per_host):
    jump, target = cluster[0], cluster[1]
    inside = private_address(target)
    # the target's sshd also listens on its private address; then its link to this machine goes down
    (target.dir / "sshd_config").write_text((target.dir / "sshd_config").read_text() + f"ListenAddress {inside}\n")
    target.stop_sshd()
    target.start_sshd()
    target.link(False)
    with pytest.raises(OSError):
        socket.create_connection((inside, 22), timeout=2)
    with pytest.raises(OSError):
        socket.create_connection((target.address, 22), timeout=2)
    proxy = f"{{hostname: {jump.address}, user: root, identity_file: {client_key[0]}}}"
    if per_host:
        conf = fleet_file(tmp_path, client_key, f"hosts:\n  - hostname: {inside}\n    proxy_jump: {proxy}\n")
    else:
        conf = fleet_file(tmp_path, client_key, f"proxy_jump: {proxy}\nhosts: [{inside}]\n")
    applied = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=120)
    assert applied.returncode == 0, applied.stderr
    task = write(tmp_path, "hop.dstack.yml", "type: task\nname: hop\nbackends: [ssh]\n"
                 "commands: ['echo on $(ip -o -4 addr show | grep -o \"inet [0-9.]*\" | tr \"\\n\" \" \")']\n")
    result = run_cli("apply", "-f", task, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"inet {inside}" in result.stdout and f"inet {jump.address}" not in result.stdout, result.stdout
    run = ps(home_env, "-v")["hop"]
    assert run["status"] == "done" and f"via root@{jump.address}:22" in run["jobs"][0]["host"]
    logs = run_cli("logs", "hop", env=home_env)
    assert logs.returncode == 0 and f"inet {inside}" in logs.stdout
