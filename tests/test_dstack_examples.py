"""Issue 20: dstack's own example task files (tests/data/dstack_examples, sources in its README) plan here as dstack
means them: `dstack apply --dry-run` on AWS and GCP exits 0 for every file those clouds can serve, and names the
accelerator for those they cannot (AMD, Tenstorrent, Gaudi). One process runs every file (tests.dry_run_many), once
per test session, shared by the xdist workers through a file under a lock."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import DATA, ROOT

EXAMPLES = DATA / "dstack_examples"
# The variables the files name without a value (`env: [HF_TOKEN]`): dstack takes them from the environment.
ENV = {name: "x" for name in ("HF_TOKEN", "WANDB_API_KEY", "WANDB_PROJECT", "HUB_MODEL_ID", "SPARK_CLUSTER_IP")}
# file -> None (planned: exit 0), or the accelerator named in the refusal
EXPECTED = {
    "docs__docs__concepts__tasks.md__apply.dstack.yml": None,
    "docs__docs__concepts__tasks.md__distributed.dstack.yml": None,
    "docs__docs__concepts__tasks.md__docker-in-docker.dstack.yml": None,
    "docs__docs__concepts__tasks.md__resources.dstack.yml": None,  # the seed page's shm_size with python:
    "examples__accelerators__intel__README.md__trl-train.dstack.yml": "gpu=gaudi2:8",
    "examples__accelerators__tenstorrent__tt-smi.dstack.yml": "gpu=n150:1",
    "examples__clusters__nccl-tests__.dstack.yml": None,
    "examples__clusters__rccl-tests__.dstack.yml": "gpu=MI300X:8",
    "examples__deployment__vllm__serve-task.dstack.yml": None,
    "examples__distributed-training__axolotl__.dstack.yml": None,
    "examples__distributed-training__ray-ragen__.dstack.yml": None,
    "examples__distributed-training__torchrun__.dstack.yml": None,
    "examples__distributed-training__trl__fsdp.dstack.yml": None,
    "examples__misc__airflow__dags__dstack-repo__task.dstack.yml": None,
    "examples__misc__docker-compose__task.dstack.yml": None,
    "examples__misc__http.server__task.dstack.yml": None,
    "examples__misc__nccl-tests__.dstack.yml": None,
    "examples__misc__ray__cluster.dstack.yaml": None,
    "examples__misc__rccl-tests__.dstack.yml": "gpu=MI300X:8",
    "examples__misc__spark__task.dstack.yaml": None,
    "examples__misc__streamlit__task.dstack.yml": None,
    "examples__single-node-training__axolotl__.dstack.yml": None,
    "examples__single-node-training__optimum-tpu__llama31__.dstack.yml": None,
    "examples__single-node-training__trl__amd__.dstack.yml": "gpu=MI300X:1..",
    "examples__single-node-training__trl__train.dstack.yml": None,
}


def test_every_example_file_has_an_expectation():
    files = sorted(p.name for p in EXAMPLES.iterdir() if p.name != "README.md")
    assert files == sorted(EXPECTED)


@pytest.fixture(scope="session")
def planned(tmp_path_factory):
    """Every file's dry run, by file name: computed by the first worker that asks, read by the others."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # popen-gwN's parent: this session's folder, the same for every worker
    results = shared / "dstack_examples.json"
    with open(shared / "dstack_examples.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not results.exists():
            cases = shared / "dstack_examples.cases.json"
            cases.write_text(json.dumps([["apply", "-f", str(EXAMPLES / name), "--dry-run", "-b", "aws", "-b", "gcp"]
                                         for name in EXPECTED]))
            home = shared / "dstack_examples.home"
            done = subprocess.run([sys.executable, "-m", "tests.dry_run_many", str(cases), str(results) + ".tmp"],
                                  cwd=ROOT, env=dict(os.environ, DSTACK_HOME=str(home), **ENV),
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr
            os.replace(str(results) + ".tmp", results)
    return {Path(r["args"][2]).name: r for r in json.loads(results.read_text())}


@pytest.mark.parametrize("name, refused", [pytest.param(name, refused, id=name)
                                            for name, refused in EXPECTED.items()])
def test_dstack_example_plans_or_is_refused_naming_the_accelerator(planned, name, refused):
    result = planned[name]
    assert "Traceback" not in result["stderr"]
    if refused is None:
        assert result["code"] == 0, result["stderr"]
    else:
        assert result["code"] == 1
        assert result["stderr"].startswith("error: no offers match: ") and refused in result["stderr"], \
            result["stderr"]
