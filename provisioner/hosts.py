"""Hosts that are not bought from a catalogue: SSH fleets the user owns, and this machine (the `local` backend).
Both become offers at price 0 that the solver matches like any other."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Callable, List, Tuple

from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_dir
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


# Given the hosts whose keys are not recorded yet, with their fingerprints, says whether to trust them.
ConfirmKeys = Callable[[List[Tuple[HostAccess, str]]], bool]


def apply_fleet(configuration, source: str, store: StateStore, confirm: ConfirmKeys,
                log: Callable[[str], None] = lambda _: None) -> List[Tuple[HostAccess, HostFacts]]:
    """Reads every host's key (before logging in), has the user confirm those not recorded yet and records them,
    then probes every host and records the fleet. Any host that fails fails the apply, with every host's error
    listed; a key that differs from the recorded one is such an error."""
    where = f"{source}: fleet {configuration.name}"
    hosts = fleet_hosts(configuration)
    offered = _on_every_host(hosts, _offered_key, where)
    new = [(host, key) for host, (key, recorded) in zip(hosts, offered) if not recorded]
    if new:
        from provisioner.ssh import describe_key, record_host_keys

        if not confirm([(host, describe_key(key)) for host, key in new]):
            raise ConfigurationError(f"{where}: not registered: its host keys were not trusted")
        record_host_keys([(host.ssh_target(), key) for host, key in new])

    def probe_and_report(host: HostAccess) -> HostFacts:
        facts = probe(host)
        log(f"{host.description}: {describe_facts(facts)}")
        return facts

    facts = _on_every_host(hosts, probe_and_report, where)
    store.save_fleet(configuration.name, source,
                     [{"access": h.to_json(), "facts": f.to_json()} for h, f in zip(hosts, facts)])
    return list(zip(hosts, facts))


def _offered_key(host: HostAccess):
    """(the key the host offers, whether known_hosts holds it); a key other than the recorded one is refused."""
    from provisioner.ssh import key_changed, recorded_host_keys, scan_host_key

    target = host.ssh_target()
    key = scan_host_key(target)
    recorded = recorded_host_keys(target)
    if recorded and recorded.get(key.get_name()) != key:
        raise key_changed(target, key, recorded.get(key.get_name()) or next(iter(recorded.values())))
    return key, bool(recorded)


def _on_every_host(hosts: List[HostAccess], action: Callable, where: str) -> list:
    """`action(host)` on every host at once; the results in the hosts' order, or one error naming each host that
    failed."""
    results: dict = {}
    errors: dict = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        futures = {pool.submit(action, host): host for host in hosts}
        for future in concurrent.futures.as_completed(futures):
            host = futures[future]
            try:
                results[host] = future.result()
            except Exception as e:  # one unreachable host must not hide the others' errors
                errors[host] = str(e)
    if errors:
        raise ConfigurationError(f"{where}: cannot use every host:\n" +
                                 "\n".join(f"{h.description}: {errors[h]}" for h in hosts if h in errors))
    return [results[host] for host in hosts]


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
    home = private_dir(dstack_home())
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
