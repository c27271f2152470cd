"""Provisioning a run with failover: offers in price order, each in every zone of its region, a capacity or quota
failure ruling out its zone, region or cloud for the tries after it (provisioner.backends.offer_failover, which cloud
fleets share); `retry` on no-capacity tries the round again later."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

from configuration.errors import ConfigurationError
from offers.offer import Offer
from provisioner.backends.offer_failover import MAX_OFFERS_TRIED, OffersExhausted, first_provisioned
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import GroupedOffer, cluster_price, node_count
from provisioner.runs.session import RunSession
from provisioner.store.statuses import STARTING, RunStatus
from stacks.errors import StackFailure

RETRY_INTERVAL_S = 60


DEFAULT_RETRY_DURATION_S = 3600


class RunFailed(ConfigurationError):
    """The run could not be provisioned or started; the message says why, per offer tried."""


class NoCapacity(RunFailed):
    """Every offer tried failed for capacity or quota: `retry: {on_events: [no-capacity]}` tries again later."""


class StopRequested(Exception):
    """`dstack stop` claimed the run while its owner was starting it: the owner stops what it started."""


def _label(offer: Offer) -> str:
    if isinstance(offer, GroupedOffer):  # each group's instance type (an SSH fleet's: its first host)
        types = " + ".join(f"{g.nodes} x {g.offer.instance.name}" for g in offer.groups)
        return f"{offer.backend} {offer.region} {types}{' (spot)' if offer.spot else ''}"
    return f"{offer.backend} {offer.region} {offer.instance.name}{' (spot)' if offer.spot else ''}"


def provision_with_failover(session: RunSession, run_name: str, offers: Sequence[Offer], configuration
                            ) -> Tuple[Offer, List[HostAccess]]:
    """Tries offers in price order, each in every zone of its region (provisioner.backends.offer_failover): a
    capacity error rules out its zone, a quota error its region (or the cloud for a global GPU quota), a VM that
    never answered its offer, a busy SSH fleet host that host; configuration and credential errors stop at once. At
    most MAX_OFFERS_TRIED offers that create something (their zones count as one), and every host that exists.
    Returns the offer and its hosts, one per node: a backend provisions all of them or none (it removes what it made
    when one fails)."""
    store, say = session.store, session.reporter.info
    attempts: List[dict] = []
    nodes = node_count(configuration)

    def attempt(offer: Offer) -> List[HostAccess]:
        zone = offer.zones[0] if offer.zones else ""
        label = _label(offer)
        if not store.claim_run(run_name, STARTING, RunStatus.PROVISIONING, backend=offer.backend, region=offer.region,
                               instance=offer.instance.name, price=cluster_price(offer, nodes), offer=offer.to_json()):
            raise StopRequested
        if isinstance(offer, GroupedOffer):
            say(f"Provisioning {label}{f' in {zone}' if zone else ''} at ${cluster_price(offer, nodes):.4f}/hour")
        else:
            each = f"{nodes} x " if nodes > 1 else ""
            say(f"Provisioning {each}{label}{f' in {zone}' if zone else ''} at ${offer.total_price:.4f}/hour"
                + (f" each (${offer.total_price * nodes:.4f}/hour)" if nodes > 1 else ""))
        store.add_event(run_name, "offer", f"trying {label}{f' in {zone}' if zone else ''} "
                                           f"at ${offer.total_price:.4f}/hour")
        hosts = session.backend(offer.backend).provision(run_name, offer, configuration, session.reporter.step)
        store.add_event(run_name, "provisioned", ", ".join(host.description for host in hosts))
        if len(hosts) != nodes:  # never a smaller cluster than asked for; submit tears down what was made
            raise RunFailed(f"{label}: the {offer.backend} backend brought up {len(hosts)} "
                            f"host{'' if len(hosts) == 1 else 's'} for `nodes: {nodes}`")
        return hosts

    def failed(offer: Offer, failure: StackFailure) -> None:
        zone = offer.zones[0] if offer.zones else ""
        label = _label(offer)
        attempts.append({"offer": label, "zone": zone, "kind": failure.kind, "error": failure.message})
        store.update_run(run_name, attempts=attempts)
        store.add_event(run_name, "offer-failed", f"{label}{f' in {zone}' if zone else ''}: "
                                                  f"{failure.kind}: {failure.message}")
        if not failure.retryable:
            raise RunFailed(f"{label}: {failure.kind} error, not retrying: {failure.message}") from None
        say(f"{label}: {failure.kind} ({failure.message}); trying the next "
            f"{failure.scope if failure.scope in ('zone', 'host') else 'offer'}")

    try:
        return first_provisioned(offers, attempt, failed, MAX_OFFERS_TRIED)
    except OffersExhausted as e:
        lines = "\n".join(f"  {a['offer']}{' in ' + a['zone'] if a.get('zone') else ''}: {a['kind']}: {a['error']}"
                          for a in attempts) or "  (none could be tried)"
        raise NoCapacity(f"no offer could be provisioned; tried {e.tried}:\n{lines}") from None


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
