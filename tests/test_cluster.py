"""Multi-node tasks (`nodes: 3`) end to end on an SSH fleet of three namespace hosts joined by a switch
(tests.netns_hosts.Switch): the cluster variables, a rendezvous at the master's address, startup order, stop
criteria, a failing worker, Ctrl-C and a killed client, all through the `dstack` command."""

import dataclasses
import json
import signal
import textwrap
import time

import pytest

from tests.helpers import run_cli, write
from tests.netns_hosts import Switch
from tests.test_faults import add_fleet
from tests.test_runs import group_alive, ps, spawn, wait_for_output, wait_status

# Every node checks its variables, then rank 0 accepts one connection per worker at $DSTACK_MASTER_NODE_IP.
RENDEZVOUS = textwrap.dedent('''\
    import os, socket, sys, time
    rank, size = int(os.environ["DSTACK_NODE_RANK"]), int(os.environ["DSTACK_NODES_NUM"])
    ips = os.environ["DSTACK_NODES_IPS"].split("\\n")
    master = os.environ["DSTACK_MASTER_NODE_IP"]
    assert size == 3 and len(set(ips)) == 3 and master == ips[0], (size, ips, master)
    socket.socket().bind((ips[rank], 0))  # the node's own address is its line of DSTACK_NODES_IPS
    assert os.environ["DSTACK_GPUS_PER_NODE"] == "0" and os.environ["DSTACK_GPUS_NUM"] == "0"
    assert open(os.environ["DSTACK_MPI_HOSTFILE"]).read() == "".join(ip + " slots=1\\n" for ip in ips)
    print("variables ok", flush=True)
    if rank == 0:
        server = socket.create_server((master, 29500))
        seen = []
        for _ in range(size - 1):
            conn, _ = server.accept()
            seen.append(int(conn.recv(16)))
            conn.close()
        print("rendezvous", sorted(seen), flush=True)
    else:
        for _ in range(300):
            try:
                socket.create_connection((master, 29500), timeout=2).sendall(str(rank).encode())
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("no master at " + master)
        print("connected", flush=True)
''')


@pytest.fixture
def fleet(tmp_path, home_env, make_host, client_key):
    """Three fleet hosts that reach each other; returned in rank order once a run has placed them."""
    hosts = [make_host() for _ in range(3)]
    switch = Switch().start()
    try:
        for host in hosts:
            switch.join(host)
        add_fleet(tmp_path, home_env, client_key, hosts)
        yield hosts
    finally:
        switch.cleanup()


def task(tmp_path, name, body):
    return write(tmp_path, f"{name}.dstack.yml", f"type: task\nname: {name}\nnodes: 3\nbackends: [ssh]\n{body}")


def times(output: str, word: str) -> dict:
    """{rank: time} from `[K] word <time>` lines."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == word:
            found[int(parts[0].strip("[]"))] = float(parts[2])
    return found


def wait_for_every_node(process, word: str) -> None:
    """Until every node has printed `word RANK`."""
    seen = b""
    for rank in range(3):
        line = f"[{rank}] {word} {rank}\n".encode()
        while line not in seen:
            seen += wait_for_output(process, b"\n", timeout=120)


def no_job_left(hosts, name, timeout: float = 10) -> bool:
    """No process of the run's job on any host (killed processes stay in their group as zombies for a moment)."""
    groups = [int((host.jobs_dir / name / "pid").read_text()) for host in hosts
              if (host.jobs_dir / name / "pid").exists()]
    deadline = time.monotonic() + timeout
    while any(group_alive(group) for group in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(group_alive(group) for group in groups)


def test_rendezvous_with_every_variable_on_every_node(tmp_path, home_env, fleet):
    script = tmp_path / "rendezvous.py"
    script.write_text(RENDEZVOUS)
    conf = task(tmp_path, "rdv", f"files: ['{script}:rendezvous.py']\ncommands: [python rendezvous.py]\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line for line in lines if line.endswith("variables ok")) == [
        f"[{rank}] variables ok" for rank in range(3)]
    assert "[0] rendezvous [1, 2]" in lines and lines.count("[1] connected") == lines.count("[2] connected") == 1
    run = ps(home_env, "-v")["rdv"]
    assert (run["status"], run["exit_code"]) == ("done", 0)
    assert [(job["node"], job["status"], job["exit_code"]) for job in run["jobs"]] == [
        (0, "done", 0), (1, "done", 0), (2, "done", 0)]
    assert len({job["host"] for job in run["jobs"]}) == 3
    assert sorted(run_cli("logs", "rdv", env=home_env).stdout.splitlines()) == sorted(lines)
    assert run_cli("logs", "rdv", "--job", "2", env=home_env).stdout == "variables ok\nconnected\n"
    assert run_cli("logs", "rdv", "--node", "1", env=home_env).stdout == "variables ok\nconnected\n"
    assert "rdv has nodes 0 to 2" in run_cli("logs", "rdv", "--job", "3", env=home_env).stderr
    verbose = run_cli("ps", "-a", "-v", env=home_env).stdout
    assert all(job["host"] in verbose for job in run["jobs"])


def test_nodes_reach_each_other_over_ssh_with_the_runs_key_and_it_is_removed_after(tmp_path, home_env, fleet):
    before = [(host.dir / "authorized_keys").read_text() for host in fleet]
    conf = task(tmp_path, "mpi", "commands:\n"
                "  - 'next=$(echo \"$DSTACK_NODES_IPS\" | sed -n \"$(( (DSTACK_NODE_RANK + 1) % 3 + 1 ))p\")'\n"
                "  - 'ssh $next \"echo reached \\$SSH_CONNECTION\"'\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    addresses = [job["host"].split("@")[1].split(":")[0] for job in ps(home_env)["mpi"]["jobs"]]
    for rank in range(3):  # each node reached the next one, from its own address
        client, server = addresses[rank], addresses[(rank + 1) % 3]
        reached = [line.split() for line in result.stdout.splitlines() if line.startswith(f"[{rank}] reached")]
        assert len(reached) == 1 and (reached[0][2], reached[0][4]) == (client, server), result.stdout
    # the hosts' authorized_keys (which hold only the tests' key) as they were, and the run's private key gone
    assert [(host.dir / "authorized_keys").read_text() for host in fleet] == before
    assert not any((host.jobs_dir / "mpi" / "cluster_key").exists() for host in fleet)
    assert all((host.jobs_dir / "mpi" / "output.log").exists() for host in fleet)


@pytest.mark.parametrize("order", ["master-first", "workers-first"])
def test_startup_order(tmp_path, home_env, fleet, order):
    conf = task(tmp_path, order, f"startup_order: {order}\ncommands: ['echo began $(date +%s.%N)']\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    began = times(result.stdout, "began")
    assert sorted(began) == [0, 1, 2], result.stdout
    workers = [began[1], began[2]]
    if order == "master-first":
        assert began[0] < min(workers)
    else:
        assert began[0] > max(workers)


def test_stop_criteria_master_done_stops_the_workers(tmp_path, home_env, fleet):
    conf = task(tmp_path, "mdone", "stop_criteria: master-done\ncommands:\n"
                "  - 'if [ $DSTACK_NODE_RANK = 0 ]; then echo master done; else sleep 300; echo worker done; fi'\n")
    started = time.monotonic()
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "[0] master done" in result.stdout and "worker done" not in result.stdout
    assert time.monotonic() - started < 200
    run = ps(home_env)["mdone"]
    assert (run["status"], [job["status"] for job in run["jobs"]]) == ("done", ["done", "terminated", "terminated"])
    assert no_job_left(fleet, "mdone")


def test_stop_criteria_all_done_waits_for_every_node(tmp_path, home_env, fleet):
    conf = task(tmp_path, "adone", "commands:\n  - 'if [ $DSTACK_NODE_RANK != 0 ]; then sleep 2; fi'\n"
                "  - 'echo finished $(date +%s.%N)'\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    finished = times(result.stdout, "finished")
    assert sorted(finished) == [0, 1, 2] and finished[0] < min(finished[1], finished[2])
    assert [job["status"] for job in ps(home_env)["adone"]["jobs"]] == ["done"] * 3


def test_a_failing_worker_fails_the_run_and_leaves_no_process(tmp_path, home_env, fleet):
    conf = task(tmp_path, "wfail", "commands:\n  - echo up\n"
                "  - 'if [ $DSTACK_NODE_RANK = 2 ]; then sleep 1; exit 3; fi; sleep 300'\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 3, result.stderr
    run = ps(home_env)["wfail"]
    assert (run["status"], run["reason"]) == ("failed", "node 2: exit code 3")
    assert [job["status"] for job in run["jobs"]] == ["terminated", "terminated", "failed"]
    assert no_job_left(fleet, "wfail")


def test_sigterm_stops_every_node(tmp_path, home_env, fleet):
    conf = task(tmp_path, "cint", "commands: ['echo up $DSTACK_NODE_RANK', sleep 300]\n")
    process = spawn(["apply", "-f", conf, "-y"], home_env)
    wait_for_every_node(process, "up")
    process.send_signal(signal.SIGTERM)  # Ctrl-C with -y detaches (tests/test_apply_interrupt.py)
    assert process.wait(60) == 128 + signal.SIGTERM
    run = ps(home_env)["cint"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")
    assert [job["status"] for job in run["jobs"]] == ["terminated"] * 3
    assert no_job_left(fleet, "cint")


def test_a_killed_client_is_completed_by_the_next_ps(tmp_path, home_env, fleet):
    conf = task(tmp_path, "ckill", "commands: ['echo up $DSTACK_NODE_RANK', 'sleep 2', 'echo finished']\n")
    process = spawn(["apply", "-f", conf, "-y"], home_env)
    wait_for_every_node(process, "up")
    process.kill()
    process.wait(10)
    run = wait_status(home_env, "ckill", "done", timeout=60)
    assert [(job["status"], job["exit_code"]) for job in run["jobs"]] == [("done", 0)] * 3
    logs = run_cli("logs", "ckill", env=home_env).stdout.splitlines()
    assert sorted(logs) == sorted(f"[{rank}] {line}" for rank in range(3) for line in (f"up {rank}", "finished"))
    assert no_job_left(fleet, "ckill")


def test_plan_shows_the_per_node_offer_and_the_total(tmp_path, home_env, fleet):
    conf = task(tmp_path, "plan", "commands: [x]\n")
    shown = run_cli("apply", "-f", conf, "--dry-run", env=home_env)
    assert shown.returncode == 0, shown.stderr
    assert "3 nodes" in shown.stdout
    document = json.loads(run_cli("apply", "-f", conf, "--dry-run", "--json", env=home_env).stdout)
    assert document["nodes"] == {"count": 3, "price_per_node": 0.0, "total_price": 0.0}


def test_a_fleet_smaller_than_the_cluster_is_named(tmp_path, home_env, make_host, client_key):
    hosts = [make_host() for _ in range(2)]
    add_fleet(tmp_path, home_env, client_key, hosts, name="pair")
    conf = task(tmp_path, "big", "commands: [x]\n")
    result = run_cli("apply", "-f", conf, "--dry-run", env=home_env)
    assert result.returncode != 0
    assert result.stderr.strip() == (f"error: {conf}: `nodes: 3` needs 3 hosts that fit the resources: "
                                     "fleet pair has 2 hosts that fit")


def test_a_detached_cluster_is_stopped_on_every_node(tmp_path, home_env, fleet):
    conf = task(tmp_path, "cstop", "commands: [sleep 300]\n")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=home_env, timeout=300).returncode == 0
    assert [job["status"] for job in ps(home_env)["cstop"]["jobs"]] == ["running"] * 3
    assert run_cli("stop", "cstop", "-y", "-x", env=home_env, timeout=120).returncode == 0
    run = ps(home_env)["cstop"]
    assert (run["status"], [job["status"] for job in run["jobs"]]) == ("terminated", ["terminated"] * 3)
    assert no_job_left(fleet, "cstop")


# --- without hosts ---

def fleet_host(index: int):
    from provisioner.host.access import HostAccess

    return HostAccess(kind="ssh", hostname=f"10.251.{index}.2", user="root")  # never connected to here


def fleet_offer(hostname: str, fleet_name: str = "lab", cpus: int = 2):
    from offers.catalog import InstanceType
    from offers.offer import Offer

    return Offer("ssh", InstanceType(hostname, cpus, 4.0, "", "", 0, 0.0, "x86", False), fleet_name, (), False, 0.0,
                 50.0, 0.0)


def cluster_conf(nodes: int):
    from configuration.loader import parse_configuration

    return parse_configuration(f"type: task\nnodes: {nodes}\ncommands: [x]\n", "c.dstack.yml")


@pytest.mark.usefixtures("store_engine")  # both engines: SQLite, the team database
def test_fleet_hosts_of_a_cluster_are_claimed_all_or_none(dstack_home):
    from provisioner.backends.hosts import FleetBackend
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore
    from stacks.errors import StackFailure

    store = StateStore()
    hosts = {("lab", fleet_host(i).hostname): fleet_host(i) for i in (240, 241, 242)}
    for name in ("single", "pair", "trio"):
        store.create_run(RunRecord(name=name, status="provisioning", submitted_at=time.time(), backend="ssh"))
    backend = FleetBackend(store, hosts)
    assert backend.provision("single", fleet_offer("10.251.241.2"), cluster_conf(1), None) == [fleet_host(241)]
    with pytest.raises(StackFailure, match="fleet lab has fewer than 3 idle hosts that fit .*single"):
        backend.provision("trio", fleet_offer("10.251.240.2"), cluster_conf(3), None)
    assert store.list_jobs("trio") == [] and store.get_run("trio").host is None  # none of them was taken
    claimed = backend.provision("pair", fleet_offer("10.251.242.2"), cluster_conf(2), None)
    assert claimed == [fleet_host(242), fleet_host(240)]  # the offer's host is rank 0
    assert [(job.rank, job.host["hostname"], job.status) for job in store.list_jobs("pair")] == [
        (0, "10.251.242.2", "provisioning"), (1, "10.251.240.2", "provisioning")]
    store.update_run("single", status="done")
    with pytest.raises(StackFailure, match="busy with run pair"):  # a worker's host is held as the master's is
        backend.provision("trio", fleet_offer("10.251.240.2"), cluster_conf(1), None)


def test_offers_for_a_cluster_need_a_fleet_big_enough_and_never_this_machine():
    from configuration.errors import ConfigurationError
    from provisioner.jobs.nodes import node_offers

    small = [fleet_offer("a", "pair"), fleet_offer("b", "pair")]
    big = [fleet_offer("c", "trio"), fleet_offer("d", "trio"), fleet_offer("e", "trio")]
    local = dataclasses.replace(fleet_offer("localhost", "local"), backend="local")
    assert node_offers([local, *small, *big], 3, "c.dstack.yml") == big
    assert node_offers([local, *small], 1, "c.dstack.yml") == [local, *small]
    with pytest.raises(ConfigurationError) as refused:
        node_offers([local, *small], 3, "c.dstack.yml")
    assert str(refused.value) == ("c.dstack.yml: `nodes: 3` needs 3 hosts that fit the resources: this machine (the "
                                  "local backend) is one node: use an SSH fleet (`--fleet`) or a cloud; fleet pair "
                                  "has 2 hosts that fit")


def test_cluster_variables_and_single_node_values():
    from provisioner.host.access import HostAccess
    from provisioner.jobs.nodes import Cluster, cluster_env

    assert cluster_env(None, 2) == {"DSTACK_NODES_NUM": "1", "DSTACK_NODE_RANK": "0", "DSTACK_GPUS_PER_NODE": "2",
                                    "DSTACK_GPUS_NUM": "2"}  # the host adds its own address (provisioner.jobs.script)
    vm = HostAccess(kind="ssh", hostname="3.3.3.3", internal_ip="172.31.0.5")
    hosts = [vm, fleet_host(240)]
    assert cluster_env(Cluster(hosts, 1), 8) == {
        "DSTACK_NODES_NUM": "2", "DSTACK_NODE_RANK": "1", "DSTACK_GPUS_PER_NODE": "8", "DSTACK_GPUS_NUM": "16",
        "DSTACK_MASTER_NODE_IP": "172.31.0.5", "DSTACK_NODES_IPS": "172.31.0.5\n10.251.240.2"}


def test_startup_waves_and_the_run_outcome():
    from provisioner.jobs.layout import EndedByDstack
    from provisioner.jobs.nodes import startup_waves
    from provisioner.jobs.run_jobs import run_outcome

    assert startup_waves(None, 3) == startup_waves("any", 3) == [[0, 1, 2]]
    assert startup_waves("master-first", 3) == [[0], [1, 2]]
    assert startup_waves("workers-first", 3) == [[1, 2], [0]]
    assert startup_waves("workers-first", 1) == [[0]]
    assert run_outcome({1: 0}, 3, None) is None and run_outcome({0: 0}, 3, None) is None
    assert run_outcome({0: 0}, 3, "master-done") == ("done", None, 0)
    assert run_outcome({0: 0, 1: 0, 2: 0}, 3, "all-done") == ("done", None, 0)
    assert run_outcome({2: 3}, 3, None) == ("failed", "node 2: exit code 3", 3)
    assert run_outcome({0: 3}, 1, None) == ("failed", "exit code 3", 3)
    assert run_outcome({1: EndedByDstack(124)}, 2, None) == ("terminated", "node 1: max_duration reached", 124)
    assert run_outcome({1: 124}, 2, None) == ("failed", "node 1: exit code 124", 124)  # the commands' own 124


def test_node_output_gets_whole_lines_with_the_rank_in_front():
    from provisioner.jobs.node_logs import NodeLines, interleave

    written = []
    lines = NodeLines(2, written.append)
    lines.add(1, b"wor")
    lines.add(0, b"a\nb")
    lines.add(1, b"ld\n")
    lines.flush(0)
    assert b"".join(written) == b"[0] a\n[1] world\n[0] b\n"
    single = []
    NodeLines(1, single.append).add(0, b"as it is")
    assert single == [b"as it is"]
    assert interleave([b"a\nb\nc\n", b"x\n"]) == b"[0] a\n[1] x\n[0] b\n[0] c\n"


def test_a_backend_that_brings_up_fewer_hosts_than_nodes_fails_the_offer(dstack_home, monkeypatch):
    from configuration.backends import DstackConfig
    from provisioner.runs.failover import RunFailed, provision_with_failover
    from provisioner.runs.session import RunSession
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore
    from tests.test_failover import FakeCloud, offer

    cloud = FakeCloud("aws", {})  # one host per offer, whatever `nodes` says
    monkeypatch.setattr(RunSession, "backend", lambda self, name: cloud)
    session = RunSession(store=StateStore(), config=DstackConfig())
    session.store.create_run(RunRecord(name="few", status="submitted", submitted_at=time.time()))
    with pytest.raises(RunFailed, match="the aws backend brought up 1 host for `nodes: 2`"):
        provision_with_failover(session, "few", [offer("aws", "us-east-1", "us-east-1a", 1.0)], cluster_conf(2))
    assert session.store.get_run("few").price == 2.0 + 0.02  # the run's price is for both nodes
