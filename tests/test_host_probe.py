"""The host probe's parsing, on what a real H200 host printed (tests/data/gpu-hosts, copied from shared/fixtures)."""

import re

import pytest

from configuration.resources import ResourcesSpec
from offers.offer import Offer
from offers.requirements import Requirements
from offers.solver import find_offers
from provisioner.host.probe import nvidia_gpu_name, parse_nvidia, parse_probe
from tests.helpers import DATA

H200 = DATA / "gpu-hosts" / "h200-1x"


def fixture_probe_output() -> str:
    """Assembles the probe's sections from the real outputs captured on the H200 host."""
    host = (H200 / "host.txt").read_text()
    meminfo = host.split("---")[0]
    df = re.search(r"df -B1 /\n(.*?)\necho", host, re.S).group(1)
    nproc = re.search(r"^nproc\n(\d+)", host, re.M).group(1)
    arch = re.search(r"^Architecture:\s+(\S+)", (H200 / "lscpu.txt").read_text(), re.M).group(1)
    nvidia = (H200 / "nvidia-smi-query-noheader.csv").read_text()
    docker = "" if "docker: command not found" in host else "/usr/bin/docker"
    return (f"---nproc\n{nproc}\n---arch\n{arch}\n---meminfo\n{meminfo}\n---df\n{df}\n---nvidia\n{nvidia}\n"
            f"---amd\n---docker\n{docker}\n---end\n")


def test_h200_host_facts():
    facts = parse_probe(fixture_probe_output())
    assert facts.cpus == 16 and facts.arch == "x86"
    assert facts.memory_gib == round(131981020 / 1024 / 1024, 2)
    assert facts.disk_free_gb == round(68702412800 / 1024 ** 3, 1)
    assert facts.gpus == (("nvidia", "H200", 141.0),)  # 143771 MiB = 140.4 GiB, the marketed 141GB
    assert facts.docker is False


def test_h200_host_is_matched_as_an_offer():
    facts = parse_probe(fixture_probe_output())
    host = Offer("ssh", facts.instance_type("10.0.0.5"), "lab", (), False, 0.0, facts.disk_free_gb, 0.0)

    def match(spec):
        return find_offers(Requirements(ResourcesSpec.model_validate(spec), spot=False), [], [host]).total

    assert match({"gpu": "H200"}) == 1 and match({"gpu": "141GB.."}) == 1 and match({"gpu": "H100"}) == 0
    assert match({"gpu": {"compute_capability": "9.0"}}) == 1 and match({"cpu": "32.."}) == 0
    assert match({"gpu": "H200", "disk": "50GB"}) == 1 and match({"gpu": "H200", "disk": "80GB.."}) == 0
    assert match({"gpu": "H200"}) == 1  # the default disk request does not exclude a host with 64GB free


@pytest.mark.parametrize("raw, name", [
    ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"), ("Tesla T4", "T4"), ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA L40S", "L40S"), ("NVIDIA RTX A6000", "A6000"),
    ("NVIDIA GeForce RTX 4090", "RTX4090"), ("Tesla V100-SXM2-16GB", "V100"),
])
def test_nvidia_names(raw, name):
    assert nvidia_gpu_name(raw) == name


def test_nvidia_query_with_units_and_several_gpus():
    assert parse_nvidia("NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\n") == [
        ("nvidia", "A100", 80.0), ("nvidia", "A100", 80.0)]
    assert parse_nvidia("") == []


def test_unfinished_probe_is_an_error():
    with pytest.raises(ValueError, match="did not finish"):
        parse_probe("---nproc\n4\n")
