"""Provisioning a run with failover: offers in price order, each in every zone of its region, a capacity or quota
failure ruling out its zone, region or cloud for the tries after it (provisioner.backends.offer_failover, which cloud
fleets share); `retry` on no-capacity tries the round again later."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

from configuration.errors import ConfigurationError
from offers.offer import Offer
from provisioner.backends.base import Backend
from provisioner.backends.offer_failover import MAX_OFFERS_TRIED, OffersExhausted, first_provisioned
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import GroupedOffer, cluster_price, node_count
from provisioner.runs.session import RunSession
from provisioner.store.statuses import STARTING, RunStatus
from stacks.errors import StackFailure

RETRY_INTERVAL_S = 60


DEFAULT_RETRY_DURATION_S = 3600


TRANSIENT_RETRIES = 2  # a transient failure (scope "attempt") tries the same zone again this many times
TRANSIENT_WAIT_S = 15.0


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


def provision_with_failover(session: RunSession, run_name: str, offers: Sequence[Offer], configuration,
                            backends: Optional[Dict[str, Backend]] = None) -> Tuple[Offer, List[HostAccess]]:
    """Tries offers in price order, each in every zone of its region (provisioner.backends.offer_failover): a
    capacity error rules out its zone, a quota error its region (or the cloud for a global GPU quota), a VM that
    never answered its offer, a busy SSH fleet host that host; a transient one (IAM's eventual consistency) tries the
    same zone again after TRANSIENT_WAIT_S, TRANSIENT_RETRIES times; configuration and credential errors stop at
    once. At most MAX_OFFERS_TRIED offers that create something (their zones count as one), and every host that
    exists. Returns the offer and its hosts, one per node: a backend provisions all of them or none (it removes what
    it made when one fails). `backends` keeps each backend across the run's tries (what it settles once per run
    stays settled); the warnings its tries record as the run's events are said as they come."""
    store, say = session.store, session.reporter.info
    backends = {} if backends is None else backends
    attempts: List[dict] = []
    nodes = node_count(configuration)

    def attempt(offer: Offer) -> List[HostAccess]:
        zone = offer.zones[0] if offer.zones else ""
        label = _label(offer)
        where = f"{label}{f' in {zone}' if zone else ''}"
        if offer.backend not in backends:
            backends[offer.backend] = session.backend(offer.backend)
        transient_retries_left = TRANSIENT_RETRIES
        while True:
            if not store.claim_run(run_name, STARTING, RunStatus.PROVISIONING, backend=offer.backend,
                                   region=offer.region, instance=offer.instance.name,
                                   price=cluster_price(offer, nodes), offer=offer.to_json()):
                raise StopRequested
            if isinstance(offer, GroupedOffer):
                say(f"Provisioning {where} at ${cluster_price(offer, nodes):.4f}/hour")
            else:
                per_node = nodes > 1 and not offer.tpu_slice  # a TPU slice's price is all its nodes'
                each = f"{nodes} x " if per_node else ""
                say(f"Provisioning {each}{where} at ${offer.total_price:.4f}/hour"
                    + (f" each (${cluster_price(offer, nodes):.4f}/hour)" if per_node else ""))
            store.add_event(run_name, "offer", f"trying {where} at ${offer.total_price:.4f}/hour")
            seen = _last_event_id(store, run_name)
            try:
                hosts = backends[offer.backend].provision(run_name, offer, configuration, session.reporter.step)
            except StackFailure as failure:
                _say_warnings(session, run_name, seen)
                if failure.scope != "attempt" or not transient_retries_left:
                    raise
                transient_retries_left -= 1
                record_failure(offer, failure)
                say(f"{label}: {failure.kind} ({failure.message}); trying it again in {TRANSIENT_WAIT_S:g}s")
                time.sleep(TRANSIENT_WAIT_S)
                continue
            _say_warnings(session, run_name, seen)
            store.add_event(run_name, "provisioned", ", ".join(host.description for host in hosts))
            if len(hosts) != nodes:  # never a smaller cluster than asked for; submit tears down what was made
                raise RunFailed(f"{label}: the {offer.backend} backend brought up {len(hosts)} "
                                f"host{'' if len(hosts) == 1 else 's'} for `nodes: {nodes}`")
            return hosts

    def record_failure(offer: Offer, failure: StackFailure) -> None:
        zone = offer.zones[0] if offer.zones else ""
        label = _label(offer)
        attempts.append({"offer": label, "zone": zone, "kind": failure.kind, "error": failure.message})
        store.update_run(run_name, attempts=attempts)
        store.add_event(run_name, "offer-failed", f"{label}{f' in {zone}' if zone else ''}: "
                                                  f"{failure.kind}: {failure.message}")

    def failed(offer: Offer, failure: StackFailure) -> None:
        record_failure(offer, failure)
        if not failure.retryable:
            raise RunFailed(f"{_label(offer)}: {failure.kind} error, not retrying: {failure.message}") from None
        say(f"{_label(offer)}: {failure.kind} ({failure.message}); trying the next "
            f"{failure.scope if failure.scope in ('zone', 'host') else 'offer'}")

    try:
        return first_provisioned(offers, attempt, failed, MAX_OFFERS_TRIED)
    except OffersExhausted as e:
        lines = "\n".join(f"  {a['offer']}{' in ' + a['zone'] if a.get('zone') else ''}: {a['kind']}: {a['error']}"
                          for a in attempts) or "  (none could be tried)"
        raise NoCapacity(f"no offer could be provisioned; tried {e.tried}:\n{lines}") from None


def _last_event_id(store, run_name: str) -> int:
    events = store.list_events(run_name)
    return events[-1]["id"] if events else 0


def _say_warnings(session: RunSession, run_name: str, after_id: int) -> None:
    """The warnings a try recorded as the run's events (a backend's `note`), said to the person watching."""
    for event in session.store.list_events(run_name, after_id=after_id):
        if event["kind"] == "warning":
            session.reporter.info(f"warning: {event['message']}")


def retry_deadline(configuration, event: str, since: float) -> Optional[float]:
    """When retrying for `event` (no-capacity, error) must stop, or None when the run does not retry on it."""
    retry = configuration.retry
    if retry is None or event not in retry.on_events:
        return None
    return since + (retry.duration if retry.duration is not None else DEFAULT_RETRY_DURATION_S)


def provision_with_retry(session: RunSession, run_name: str, offers: Sequence[Offer], configuration
                         ) -> Tuple[Offer, List[HostAccess]]:
    deadline = retry_deadline(configuration, "no-capacity", time.time())
    backends: Dict[str, Backend] = {}  # kept across the rounds: the run's, once
    while True:
        try:
            return provision_with_failover(session, run_name, offers, configuration, backends)
        except NoCapacity as e:
            if deadline is None or time.time() + RETRY_INTERVAL_S > deadline:
                raise
            session.store.add_event(run_name, "retry", f"no capacity; retrying in {RETRY_INTERVAL_S}s")
            session.reporter.info(f"{str(e).splitlines()[0]}; retrying in {RETRY_INTERVAL_S}s "
                                  f"(retry on no-capacity until {time.strftime('%H:%M:%S', time.localtime(deadline))})")
            time.sleep(RETRY_INTERVAL_S)
