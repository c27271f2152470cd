"""SSH fleets (`type: fleet` with `ssh_config`): hosts the user owns, their keys confirmed and recorded, each probed for
what it has and recorded as a fleet, whose hosts become offers at price 0 (provisioner.planning.host_offers)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from configuration.errors import ConfigurationError
from provisioner.host.access import HostAccess
from provisioner.host.liveness import liveness
from provisioner.host.probe import PROBE_COMMAND, HostFacts, parse_probe
from provisioner.host.known_hosts import describe_key, record_host_keys, recorded_host_keys
from provisioner.host.ssh import key_changed, scan_host_key
from provisioner.store.store import StateStore


def fleet_hosts(configuration) -> List[HostAccess]:
    ssh = configuration.ssh_config
    hosts = []
    for host in ssh.hosts:
        user = host.user or ssh.user or "root"
        identity = host.identity_file or ssh.identity_file
        proxy = host.proxy_jump or ssh.proxy_jump
        hosts.append(HostAccess(kind="ssh", hostname=host.hostname, port=host.port or ssh.port, user=user,
                                identity_file=str(Path(identity).expanduser()) if identity else None,
                                internal_ip=host.internal_ip,
                                proxy_jump=f"{proxy.user}@{proxy.hostname}:{proxy.port or 22}" if proxy else None,
                                proxy_identity_file=str(Path(proxy.identity_file).expanduser()) if proxy else None))
    return hosts


def internal_address(access: HostAccess, facts: HostFacts, network) -> HostAccess:
    """The host with the address the other hosts reach it at: its `internal_ip`, which must be one of its own, or
    its address in the fleet's `network`; neither given: as it was (its hostname serves)."""
    if access.internal_ip is not None:
        if access.internal_ip not in facts.addresses:
            raise ConfigurationError(f"internal_ip {access.internal_ip} is not one of the host's addresses "
                                     f"({', '.join(facts.addresses) or 'none found'})")
        return access
    if network is None:
        return access
    inside = [a for a in facts.addresses if ipaddress.ip_address(a) in ipaddress.ip_network(network, strict=False)]
    if not inside:
        raise ConfigurationError(f"none of the host's addresses is in network {network} "
                                 f"({', '.join(facts.addresses) or 'none found'})")
    return dataclasses.replace(access, internal_ip=inside[0])


def probe(access: HostAccess, total_wait: Optional[float] = None) -> HostFacts:
    """The host's facts; without `total_wait`, it waits for the host as its key's scan does."""
    transport = access.connect(total_wait=liveness().stop_wait if total_wait is None else total_wait)
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
    store.refuse_teammates_fleet(configuration.name, source)
    hosts = fleet_hosts(configuration)
    proxies = list(dict.fromkeys(p for p in (host.proxy_access() for host in hosts) if p is not None))
    for group in ([proxies] if proxies else []) + [hosts]:  # a proxy's key first: the hosts are scanned through it
        offered = _on_every_host(group, _offered_key, where)
        new = [(host, key) for host, (key, recorded) in zip(group, offered) if not recorded]
        if new:
            if not confirm([(host, describe_key(key)) for host, key in new]):
                raise ConfigurationError(f"{where}: not registered: its host keys were not trusted")
            record_host_keys([(host.ssh_target(), key) for host, key in new])

    if store.team is not None:  # a teammate's laptop has no known_hosts line: the confirmed key goes with the host
        hosts = [dataclasses.replace(host, host_key=f"{key.get_name()} {key.get_base64()}")
                 for host, (key, _) in zip(hosts, offered)]  # `offered`: the hosts', scanned last

    def probe_and_report(host: HostAccess) -> Tuple[HostAccess, HostFacts]:
        facts = probe(host)
        host = internal_address(host, facts, configuration.ssh_config.network)
        log(f"{host.description}: {describe_facts(facts)}"
            + (f", internal address {host.internal_ip}" if host.internal_ip else ""))
        return host, facts

    probed = _on_every_host(hosts, probe_and_report, where)
    hosts, facts = [h for h, _ in probed], [f for _, f in probed]
    store.save_fleet(configuration.name, source,
                     [{"access": h.to_json(), "facts": f.to_json()} for h, f in zip(hosts, facts)])
    return list(zip(hosts, facts))


def _offered_key(host: HostAccess):
    """(the key the host offers, whether known_hosts holds it); a key other than the recorded one is refused."""

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
