"""A cloud fleet's idle_duration: dstack's 3-day default unless `off`, shown in the plan with the fleet's hourly cost,
armed on its instances and expired after it (the stand-in cloud of tests/test_fleets.py)."""

import json
import time

import pytest

from tests.helpers import run_cli, write
from tests.test_fleets import OFFER, cloud, parse_fleet  # noqa: F401 (cloud: a fixture)


@pytest.mark.parametrize("value, kept", [(None, 3 * 24 * 3600), ("true", 3 * 24 * 3600), ("2h", 7200), ("0", 0),
                                         ("'off'", None), ("false", None), ("-1", None)])
def test_a_cloud_fleet_is_kept_idle_3_days_unless_told_otherwise(value, kept):
    """dstack 0.22.5's default for a fleet's idle_duration is 3 days; `off`, `false` or a negative number keep it
    until `dstack fleet delete`; `true` asks for the default."""
    import yaml

    from provisioner.backends.cloud_fleets import kept_seconds

    data = {"nodes": 1} if value is None else {"nodes": 1, "idle_duration": yaml.safe_load(value)}
    assert kept_seconds(parse_fleet(data)) == kept


def test_the_fleet_plan_shows_its_idle_policy_and_hourly_cost(tmp_path):
    pytest.importorskip("pulumi_aws")
    plain = write(tmp_path, "fleet.dstack.yml", "type: fleet\nname: trainers\nnodes: 2\nbackends: [aws]\n"
                  "regions: [us-east-1]\ninstance_types: [t3.large]\n")
    result = run_cli("apply", "-f", plain, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["idle_duration"] == 3 * 24 * 3600
    assert plan["idle_policy"] == "destroyed once every instance has been idle 3d (the default)"
    assert plan["price"] == pytest.approx(2 * plan["price_per_instance"])
    text = run_cli("apply", "-f", plain, "--dry-run")
    assert text.returncode == 0, text.stderr
    hourly = f"${plan['price']:.4f}/hour in all"
    assert hourly in text.stderr and "idle: destroyed once every instance has been idle 3d (the default" in text.stderr
    kept = write(tmp_path, "kept.dstack.yml", "type: fleet\nname: kept\nnodes: 1\nbackends: [aws]\n"
                 "idle_duration: 'off'\n")
    plan = json.loads(run_cli("apply", "-f", kept, "--dry-run", "--json").stdout)
    assert (plan["idle_duration"], plan["idle_policy"]) == (None, "kept until `dstack fleet delete` "
                                                                  "(idle_duration: off)")


def test_a_fleet_without_idle_duration_arms_3_days_and_expires_after_them(cloud, monkeypatch):
    from configuration.backends import load_config
    from provisioner.backends.cloud_fleets import create_cloud_fleet, expire_idle_fleets
    from provisioner.store.store import StateStore

    prepared = []
    monkeypatch.setattr("provisioner.backends.cloud_fleets.prepare_instance", lambda host, idle: prepared.append(idle))
    store = StateStore()
    instances = create_cloud_fleet(parse_fleet({"nodes": 1}), "fleet.dstack.yml", [OFFER], load_config(), store,
                                   lambda p: None, lambda m: None)
    assert [i.idle_duration for i in instances] == [3 * 24 * 3600] and prepared == [3 * 24 * 3600]
    assert expire_idle_fleets(store, load_config(), lambda p: None, lambda m: None, now=time.time() + 3600) == []
    assert expire_idle_fleets(store, load_config(), lambda p: None, lambda m: None,
                              now=time.time() + 3 * 24 * 3600 + 1) == ["gpus"]
    assert cloud["destroyed"] == ["gpus"]
