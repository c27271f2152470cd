"""The install split: the core (this machine, SSH hosts, offers, every command) works without any cloud SDK; cloud
use without its extra names the extra to install; `[aws]`, `[gcp]`, `[all]` hold the SDKs."""

import json
import subprocess
import sys

import tomllib

from tests.helpers import ROOT

CLOUD_SDKS = ("pulumi", "pulumi_aws", "pulumi_gcp", "boto3", "botocore", "google")


def without_sdks(*args, env=None, cwd=ROOT):
    """The CLI as in a core install: importing any cloud SDK fails as if it were not installed."""
    import os

    code = ("import sys, runpy\n"
            f"for name in {CLOUD_SDKS!r}:\n    sys.modules[name] = None\n"
            f"sys.argv = ['dstack', *{list(args)!r}]\n"
            "runpy.run_module('cli.main', run_name='__main__')\n")
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=120)


def test_the_core_depends_on_no_cloud_sdk_and_extras_hold_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for sdk in ("pulumi", "boto3", "google-cloud", "psycopg"):
        assert sdk not in core
    extras = project["optional-dependencies"]
    assert {"pulumi-aws", "boto3"} <= {d.split(">")[0].split("<")[0] for d in extras["aws"]}
    assert {"pulumi-gcp", "google-auth", "requests"} <= {d.split(">")[0].split("<")[0] for d in extras["gcp"]}
    assert extras["postgresql"] == ["psycopg[binary]>=3.1"]  # a team database
    assert extras["all"] == ["dstack-pulumi[aws,gcp,postgresql]"]
    assert "-e '.[all,test]'" in (ROOT / ".ci" / "run").read_text()
    assert "pip install -e . &&" in (ROOT / "README.md").read_text()


def test_offers_and_a_local_run_work_without_cloud_sdks(tmp_path, dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    offers = without_sdks("offer", "--gpu", "H100:8", "-b", "aws", "--json", "--max-offers", "1", env=env)
    assert offers.returncode == 0, offers.stderr
    assert json.loads(offers.stdout)["offers"][0]["backend"] == "aws"
    (tmp_path / ".dstack.yml").write_text("type: task\ncommands: ['echo core']\n")
    run = without_sdks("apply", "-y", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "core\n"


def test_a_cloud_dry_run_without_the_extra_shows_the_offer_and_says_what_rendering_needs(tmp_path, dstack_home):
    conf = tmp_path / "gpu.dstack.yml"
    conf.write_text("type: task\ncommands: [nvidia-smi]\nresources: {gpu: A10G}\n")
    env = {"DSTACK_HOME": str(dstack_home)}
    result = without_sdks("apply", "-f", str(conf), "-b", "aws", "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["offer"]["backend"] == "aws" and plan["resources"] == []
    assert plan["stack"]["rendered"] is False
    assert "pip install -e '.[aws]'" in plan["stack"]["reason"]  # runnable as written from the checkout
    assert "warning: the stack's resources are not shown: rendering the aws stack of the plan needs the [aws] " \
           "extra of dstack-pulumi" in result.stderr


def test_the_install_hint_runs_as_written_from_any_folder(tmp_path, dstack_home):
    """From another folder the hint names the checkout by its path; that command installs the extra there."""
    result = without_sdks("gc", env={"DSTACK_HOME": str(dstack_home)}, cwd=tmp_path)
    assert result.returncode == 1
    assert f"pip install -e '{ROOT}[" in result.stderr, result.stderr


def test_a_cloud_run_without_the_extra_names_it(tmp_path, dstack_home):
    conf = tmp_path / "gpu.dstack.yml"
    conf.write_text("type: task\ncommands: [nvidia-smi]\nresources: {gpu: L4}\n")
    env = {"DSTACK_HOME": str(dstack_home)}
    for backend, extra in (("aws", "aws"), ("gcp", "gcp")):
        result = without_sdks("apply", "-f", str(conf), "-b", backend, "-y", "-n", f"no-{backend}", env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"needs the [{extra}] extra of dstack-pulumi" in result.stderr
        assert f"pip install -e '.[{extra}]'" in result.stderr
    for command in (["gc"], ["stacks"], ["setup", "pulumi"]):
        result = without_sdks(*command, env=env)
        assert result.returncode == 1 and "pip install -e '.[" in result.stderr, command


def test_a_team_database_without_psycopg_names_the_extra(dstack_home):
    code = ("import sys, runpy\nsys.modules['psycopg'] = None\nsys.argv = ['dstack', 'ps']\n"
            "runpy.run_module('cli.main', run_name='__main__')\n")
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT), DSTACK_DATABASE_URL="postgresql://u@db.example/team")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=120)
    assert (result.returncode, result.stderr) == (1, "error: a team database (DSTACK_DATABASE_URL) needs psycopg: "
                                                     "pip install -e '.[postgresql]'\n")
