"""Multi-node tasks (`nodes: 3`) end to end on an SSH fleet of three namespace hosts joined by a switch
(tests.netns_hosts.Switch): the cluster variables, a rendezvous at the master's address, startup order, stop
criteria, a failing worker, Ctrl-C and a killed client, all through the `dstack` command."""

import json
import signal
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.netns_hosts import Switch
from tests.test_faults import add_fleet
from tests.test_runs import group_alive, home_env, ps, spawn, wait_for_output, wait_status, write  # noqa: F401

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


def no_job_left(hosts, name) -> bool:
    for host in hosts:
        pid = host.jobs_dir / name / "pid"
        if pid.exists() and group_alive(int(pid.read_text())):
            return False
    return True


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
    assert run_cli("logs", "rdv", "--node", "2", env=home_env).stdout == "variables ok\nconnected\n"
    verbose = run_cli("ps", "-a", "-v", env=home_env).stdout
    assert all(job["host"] in verbose for job in run["jobs"])


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


def test_ctrl_c_stops_every_node(tmp_path, home_env, fleet):
    conf = task(tmp_path, "cint", "commands: ['echo up $DSTACK_NODE_RANK', sleep 300]\n")
    process = spawn(["apply", "-f", conf, "-y"], home_env)
    wait_for_every_node(process, "up")
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
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
