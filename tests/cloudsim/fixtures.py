"""The `cloudsim` fixture (a test module imports it): a simulated AWS and GCP for one test, with this test's
$DSTACK_HOME configured for both; every VM and server it made is gone after the test."""

from __future__ import annotations

import pytest


@pytest.fixture
def cloudsim(tmp_path, moto_endpoint, dstack_home):
    import urllib.request

    from tests.cloudsim.simulator import CloudSim
    from tests.netns_hosts import require_namespaces

    require_namespaces()
    # moto's state is this worker's: each scenario starts from a fresh account (default VPCs, no resources)
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=30)
    simulator = CloudSim(tmp_path / "cloudsim", moto_endpoint)
    simulator.write_config(dstack_home)
    try:
        yield simulator
    finally:
        simulator.close()


def wait_until(predicate, timeout: float = 60, interval: float = 0.1, process=None):
    """`predicate()` once it is true (its value), polling; fails the test after `timeout` seconds, or as soon as
    `process` (a `CloudSim.start`ed dstack) has ended, with its output."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            process.stdout.seek(0)
            raise AssertionError(f"dstack exited {process.returncode} first: {process.stdout.read()[-2000:]}")
        try:
            value = predicate()
        except AssertionError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {getattr(predicate, '__doc__', None) or predicate}")
        time.sleep(interval)
