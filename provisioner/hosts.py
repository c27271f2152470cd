"""Hosts that are not bought from a catalogue: SSH fleets the user owns, and this machine (the `local` backend).
Both become offers at price 0 that the solver matches like any other."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from configuration.errors import ConfigurationError
from configuration.home import dstack_home
from offers.offer import Offer
from provisioner.access import HostAccess
from provisioner.host_probe import PROBE_COMMAND, HostFacts, parse_probe
from provisioner.state import StateStore

LOCAL_REGION = "local"


def fleet_hosts(configuration) -> List[HostAccess]:
    ssh = configuration.ssh_config
    hosts = []
    for host in ssh.hosts:
        user = host.user or ssh.user or "root"
        identity = host.identity_file or ssh.identity_file
        hosts.append(HostAccess(kind="ssh", hostname=host.hostname, port=host.port or ssh.port, user=user,
                                identity_file=str(Path(identity).expanduser()) if identity else None))
    return hosts


def probe(access: HostAccess, total_wait: float = 30.0) -> HostFacts:
    transport = access.connect(total_wait=total_wait)
    try:
        result = transport.run(PROBE_COMMAND, timeout=60)
    finally:
        transport.close()
    return parse_probe(result.text)


def apply_fleet(configuration, source: str, store: StateStore,
                log: Callable[[str], None] = lambda _: None) -> List[Tuple[HostAccess, HostFacts]]:
    """Connects to every host at once, probes it and records the fleet; any host that fails fails the apply, with
    every host's error listed."""
    hosts = fleet_hosts(configuration)
    results: List[Tuple[HostAccess, Optional[HostFacts], Optional[str]]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        futures = {pool.submit(probe, host): host for host in hosts}
        for future in concurrent.futures.as_completed(futures):
            host = futures[future]
            try:
                facts = future.result()
                results.append((host, facts, None))
                log(f"{host.description}: {describe_facts(facts)}")
            except Exception as e:  # one unreachable host must not hide the others' errors
                results.append((host, None, str(e)))
    failures = [f"{host.description}: {error}" for host, _, error in results if error]
    if failures:
        raise ConfigurationError(f"{source}: fleet {configuration.name}: cannot use every host:\n" + "\n".join(failures))
    order = {h: i for i, h in enumerate(hosts)}
    ok = sorted(((h, f) for h, f, _ in results), key=lambda pair: order[pair[0]])
    store.save_fleet(configuration.name, source,
                     [{"access": h.to_json(), "facts": f.to_json()} for h, f in ok])
    return ok


def describe_facts(facts: HostFacts) -> str:
    gpus = ""
    if facts.gpus:
        vendor, name, memory = facts.gpus[0]
        gpus = f"{len(facts.gpus)}x{name} ({memory:g}GB), "
    return (f"{gpus}{facts.cpus} CPU ({facts.arch}), {facts.memory_gib:g}GB RAM, {facts.disk_free_gb:g}GB disk free, "
            f"docker {'yes' if facts.docker else 'no'}")


def fleet_offers(store: StateStore) -> List[Tuple[Offer, HostAccess]]:
    offers = []
    for fleet in store.list_fleets():
        for host in fleet["hosts"]:
            access = HostAccess.from_json(host["access"])
            facts = HostFacts.from_json(host["facts"])
            offers.append((Offer("ssh", facts.instance_type(access.hostname), fleet["name"], (), False, 0.0,
                                 facts.disk_free_gb, 0.0), access))
    return offers


def local_facts() -> HostFacts:
    """This machine, probed in-process (no shell round trip: `dstack offers` stays fast); GPU tools run only when
    installed."""
    import platform
    import shutil
    import subprocess

    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else "MemTotal: 0 kB"
    home = dstack_home()
    home.mkdir(parents=True, exist_ok=True)
    sections = {
        "nproc": str(os.cpu_count() or 1),
        "arch": platform.machine(),
        "meminfo": meminfo,
        "df": f"- - - {shutil.disk_usage(home).free}",
        "docker": shutil.which("docker") or "",
    }
    for name, argv in (("nvidia", ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]),
                       ("amd", ["amd-smi", "static", "--asic", "--vram", "--json"])):
        sections[name] = ""
        if shutil.which(argv[0]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            sections[name] = done.stdout if done.returncode == 0 else ""
    return parse_probe("".join(f"---{k}\n{v}\n" for k, v in sections.items()) + "---end\n")


def local_offer() -> Tuple[Offer, HostAccess]:
    facts = local_facts()
    return (Offer("local", facts.instance_type("localhost"), LOCAL_REGION, (), False, 0.0, facts.disk_free_gb, 0.0),
            HostAccess(kind="local"))
