"""The simulated cloud's fixtures (tests/conftest.py registers them): `cloudsim`, a simulated AWS and GCP for one
test, with this test's $DSTACK_HOME configured for both (every VM and server it made is gone after the test), and
the warm interpreter its `dstack` processes are forked from; `wait_until`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cloudsim_zygote():
    """The warm interpreter the scenarios' `dstack` processes are forked from (tests.cloudsim.zygote), one per
    worker; its socket's path."""
    import os

    from stacks.extras import installed
    from tests.helpers import dstack_zygote

    missing = [m for m in ("pulumi_aws", "pulumi_gcp", "boto3", "google.auth", "moto") if not installed(m)]
    if missing:  # the [all] and [test] extras
        message = f"the simulated cloud needs {', '.join(missing)} (pip install -e '.[all,test]')"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    return dstack_zygote(preloaded=True)  # the one tests.helpers.run_cli forks from


@pytest.fixture
def cloudsim(cloudsim_zygote, tmp_path, moto_endpoint, dstack_home):
    import os

    from tests.cloudsim.simulator import CloudSim
    from tests.netns_hosts import require_namespaces

    require_namespaces()
    _require_overlay()
    # moto runs in this worker: each scenario starts from a fresh account (default VPCs, no resources), without the
    # 1,200 default images moto would load for each region (the simulator never lists images)
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    _reset(moto_endpoint)
    simulator = CloudSim(tmp_path / "cloudsim", moto_endpoint, cloudsim_zygote)
    simulator.write_config(dstack_home)
    try:
        yield simulator
    finally:
        simulator.close()
        del os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"]
        _reset(moto_endpoint)  # the next test of this worker gets moto as it was


def _reset(moto_endpoint: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=30)


_overlay: list = []


def _require_overlay() -> None:
    """A VM's root is an overlay (tests.cloudsim.guest): skip where the kernel has none, fail under CI."""
    import os
    import subprocess
    import tempfile

    if not _overlay:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
            for name in ("lower", "upper", "work", "merged"):
                os.mkdir(f"{folder}/{name}")
            probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "overlay",
                                    "cloudsim-probe", "-o", f"lowerdir={folder}/lower,upperdir={folder}/upper,"
                                    f"workdir={folder}/work", f"{folder}/merged"], capture_output=True, text=True)
        _overlay.append(probe.stderr.strip() if probe.returncode else "")
    if _overlay[0]:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the simulated cloud's VMs need overlayfs under CI: {_overlay[0]}")
        pytest.skip(f"overlayfs is not available: {_overlay[0]}")


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


def output_of(process) -> str:
    """All a `CloudSim.start`ed dstack has written so far (its stdout and stderr, one file)."""
    process.stdout.seek(0)
    return process.stdout.read()


def wait_exit(process, seconds: float) -> int:
    """The process's exit code; killed first (and the test failed) if it runs longer: it waits on the cloud."""
    try:
        return process.wait(seconds)
    except Exception:
        process.kill()
        process.wait(30)
        raise AssertionError(f"dstack did not end within {seconds}s: {output_of(process)[-2000:]}") from None


def instances_of(cloudsim, home, fleet: str = "pool") -> dict:
    """`fleet get FLEET --json`'s instances by number."""
    import json

    got = cloudsim.dstack("fleet", "get", fleet, "--json", home=home)
    assert got.returncode == 0, got.stdout + got.stderr
    return {i["instance_num"]: i for i in json.loads(got.stdout)["fleet"]["instances"]}


def retried_after_an_ec2_notice(cloudsim, process, instance, window_s: float) -> str:
    """EC2's notice for `instance` once its job's first attempt has begun (it touches /tmp/started and says `attempt
    1`); the attached `process` must then finish its second attempt and show the notice's line with EC2's time and
    no end of the first attempt. Its output."""
    wait_until(lambda: instance.vm is not None and instance.vm.file("/tmp/started") is not None, process=process)
    wait_until(lambda: "attempt 1" in output_of(process), process=process)
    cloudsim.aws.reclaim(instance, notice_s=window_s)
    code = wait_exit(process, 240)
    output = output_of(process)
    assert code == 0, output
    at = instance.extra["spot_notice"]["time"]
    assert f"dstack: spot interruption notice from AWS: terminate at {at}" in output
    assert "finished attempt 2" in output and "finished attempt 1" not in output
    return output



def ec2_notice_seen_on_the_host(cloudsim, instance, run_name: str, window_s: float) -> str:
    """EC2's notice for `instance` (taken back `window_s` later), waited for in run `run_name`'s log on the VM, where
    the host's watcher writes it: the line, with EC2's time."""
    cloudsim.aws.reclaim(instance, notice_s=window_s)
    line = f"dstack: spot interruption notice from AWS: terminate at {instance.extra['spot_notice']['time']}"
    wait_until(lambda: line in (instance.vm.file(f"/home/ubuntu/.dstack-jobs/{run_name}/output.log") or ""),
               timeout=30)
    return line


def ended_interrupted(cloudsim, home) -> None:
    """`dstack ps` (the only run of `home`): `terminated (interrupted)`."""
    import json

    ps = cloudsim.dstack("ps", "-a", "--json", home=home)
    [record] = json.loads(ps.stdout)["runs"]
    assert (record["status"], record["reason"]) == ("terminated", "interrupted"), ps.stdout + ps.stderr


def two_gcp_nodes_begun(cloudsim, process) -> list:
    """The two GCP instances of an attached 2-node run (by id), once both jobs have touched /tmp/started."""
    first = wait_until(lambda: len(cloudsim.world.live("Instance", "gcp")) == 2 and sorted(
        cloudsim.world.live("Instance", "gcp"), key=lambda r: r.id), process=process)
    wait_until(lambda: all(i.vm is not None and i.vm.file("/tmp/started") is not None for i in first),
               process=process)
    return first
