"""Provisioning with failover: offers in price order, each in every zone of its region, a capacity or quota failure
ruling out its zone, region or cloud (an SSH fleet's host: that host, or the fleet) for the tries after it; `retry` on
no-capacity tries the round again later."""

from __future__ import annotations

import dataclasses
import time
from typing import List, Optional, Sequence, Tuple

from configuration.errors import ConfigurationError
from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import node_count
from provisioner.runs.session import RunSession
from provisioner.store.statuses import STARTING, RunStatus
from stacks.errors import StackFailure

HOST_BACKENDS = ("ssh", "local")  # hosts that exist: claiming one creates nothing
MAX_OFFERS_TRIED = 5  # offers that create something; hosts that exist (SSH fleets', this machine) are all tried


RETRY_INTERVAL_S = 60


DEFAULT_RETRY_DURATION_S = 3600


class RunFailed(ConfigurationError):
    """The run could not be provisioned or started; the message says why, per offer tried."""


class NoCapacity(RunFailed):
    """Every offer tried failed for capacity or quota: `retry: {on_events: [no-capacity]}` tries again later."""


class StopRequested(Exception):
    """`dstack stop` claimed the run while its owner was starting it: the owner stops what it started."""


def _scope_key(offer: Offer, scope: str) -> tuple:
    """What a failure of `scope` rules out for the next tries: the cloud, a region (an SSH fleet), a zone, an
    instance type, or one host (of an SSH fleet: its region is the fleet, its instance the host)."""
    zone = offer.zones[0] if offer.zones else ""
    return {"cloud": (offer.backend,), "region": (offer.backend, offer.region),
            "zone": (offer.backend, offer.region, zone), "type": (offer.backend, "type", offer.instance.name),
            "host": (offer.backend, offer.region, "host", offer.instance.name)}[scope]


def _ruled_out(offer: Offer, blocked: set) -> Optional[str]:
    for why in ("cloud", "region", "zone", "type", "host"):
        key = _scope_key(offer, why)
        if key in blocked:
            return why
    return None


def zone_offers(offer: Offer) -> List[Offer]:
    """The offer once per zone of its region, in the catalogue's order: a capacity error in one zone moves to the
    next zone of the same region before the next offer."""
    if len(offer.zones) <= 1:
        return [offer]
    return [dataclasses.replace(offer, zones=(zone,)) for zone in offer.zones]


def provision_with_failover(session: RunSession, run_name: str, offers: Sequence[Offer], configuration
                            ) -> Tuple[Offer, List[HostAccess]]:
    """Tries offers in price order, each in every zone of its region: a capacity error rules out its zone, a quota
    error its region (or the cloud for a global GPU quota), a busy SSH fleet host that host; configuration and
    credential errors stop at once. At most MAX_OFFERS_TRIED offers that create something (their zones count as
    one), and every host that exists. Returns the offer and its hosts, one per node: a backend provisions all of
    them or none (it removes what it made when one fails)."""
    store, say = session.store, session.reporter.info
    attempts: List[dict] = []
    blocked: set = set()
    tried = creating = 0  # offers tried, and of them those that create something (MAX_OFFERS_TRIED)
    nodes = node_count(configuration)
    for whole_offer in offers:
        exists = whole_offer.backend in HOST_BACKENDS
        if creating >= MAX_OFFERS_TRIED and not exists:
            continue
        counted = False
        for offer in zone_offers(whole_offer):
            if _ruled_out(offer, blocked):
                continue
            if not counted:
                tried, creating, counted = tried + 1, creating + (not exists), True
            zone = offer.zones[0] if offer.zones else ""
            label = f"{offer.backend} {offer.region} {offer.instance.name}{' (spot)' if offer.spot else ''}"
            if not store.claim_run(run_name, STARTING, RunStatus.PROVISIONING, backend=offer.backend,
                                   region=offer.region,
                                   instance=offer.instance.name, price=offer.total_price * nodes,
                                   offer=offer.to_json()):
                raise StopRequested
            each = f"{nodes} x " if nodes > 1 else ""
            say(f"Provisioning {each}{label}{f' in {zone}' if zone else ''} at ${offer.total_price:.4f}/hour"
                + (f" each (${offer.total_price * nodes:.4f}/hour)" if nodes > 1 else ""))
            store.add_event(run_name, "offer", f"trying {label}{f' in {zone}' if zone else ''} "
                                               f"at ${offer.total_price:.4f}/hour")
            try:
                hosts = session.backend(offer.backend).provision(run_name, offer, configuration,
                                                                 session.reporter.step)
            except StackFailure as failure:
                attempts.append({"offer": label, "zone": zone, "kind": failure.kind, "error": failure.message})
                store.update_run(run_name, attempts=attempts)
                store.add_event(run_name, "offer-failed", f"{label}{f' in {zone}' if zone else ''}: "
                                                          f"{failure.kind}: {failure.message}")
                if not failure.retryable:
                    raise RunFailed(f"{label}: {failure.kind} error, not retrying: {failure.message}") from None
                blocked.add(_scope_key(offer, failure.scope))
                say(f"{label}: {failure.kind} ({failure.message}); trying the next "
                    f"{failure.scope if failure.scope in ('zone', 'host') else 'offer'}")
                continue
            store.add_event(run_name, "provisioned", ", ".join(host.description for host in hosts))
            if len(hosts) != nodes:  # never a smaller cluster than asked for; submit tears down what was made
                raise RunFailed(f"{label}: the {offer.backend} backend brought up {len(hosts)} "
                                f"host{'' if len(hosts) == 1 else 's'} for `nodes: {nodes}`")
            return offer, hosts
    lines = "\n".join(f"  {a['offer']}{' in ' + a['zone'] if a.get('zone') else ''}: {a['kind']}: {a['error']}"
                      for a in attempts) or "  (none could be tried)"
    raise NoCapacity(f"no offer could be provisioned; tried {tried}:\n{lines}")


def retry_deadline(configuration, event: str, since: float) -> Optional[float]:
    """When retrying for `event` (no-capacity, error) must stop, or None when the run does not retry on it."""
    retry = configuration.retry
    if retry is None or event not in retry.on_events:
        return None
    return since + (retry.duration if retry.duration is not None else DEFAULT_RETRY_DURATION_S)


def provision_with_retry(session: RunSession, run_name: str, offers: Sequence[Offer], configuration
                         ) -> Tuple[Offer, List[HostAccess]]:
    deadline = retry_deadline(configuration, "no-capacity", time.time())
    while True:
        try:
            return provision_with_failover(session, run_name, offers, configuration)
        except NoCapacity as e:
            if deadline is None or time.time() + RETRY_INTERVAL_S > deadline:
                raise
            session.store.add_event(run_name, "retry", f"no capacity; retrying in {RETRY_INTERVAL_S}s")
            session.reporter.info(f"{str(e).splitlines()[0]}; retrying in {RETRY_INTERVAL_S}s "
                                  f"(retry on no-capacity until {time.strftime('%H:%M:%S', time.localtime(deadline))})")
            time.sleep(RETRY_INTERVAL_S)
