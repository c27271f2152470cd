"""The resources grammar, case by case against dstack's behaviour, and by property."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from configuration.resources import CPUSpec, DiskSpec, GPUSpec, Memory, Range, ResourcesSpec


@pytest.mark.parametrize("text, low, high", [
    ("2", 2, 2), ("2..8", 2, 8), ("16..", 16, None), ("..8", None, 8), (" 2 .. 8 ", 2, 8), (4, 4, 4),
    ({"min": 1, "max": 3}, 1, 3), ({"min": 1}, 1, None),
])
def test_int_range(text, low, high):
    r = Range[int].model_validate(text)
    assert (r.min, r.max) == (low, high)


@pytest.mark.parametrize("text, message", [
    ("..", "Invalid empty range"), ("8..2", "Invalid range order"), ("1..2..3", "Invalid range"),
    ("two", "valid integer"), ("-1", "negative"),
])
def test_int_range_errors(text, message):
    with pytest.raises(ValidationError, match=message):
        Range[int].model_validate(text)


@pytest.mark.parametrize("text, gb", [
    ("16GB", 16), ("16gb", 16), ("16 GB", 16), ("512MB", 0.5), ("1TB", 1024), ("1.5TB", 1536), (8, 8), (0.5, 0.5),
    ("24", 24),
])
def test_memory_units(text, gb):
    assert Memory.parse(text) == gb


@pytest.mark.parametrize("text", ["16XB", "GB", "nanGB", "infGB", "-1GB", True])
def test_memory_errors(text):
    with pytest.raises(ValueError):
        Memory.parse(text)


def test_defaults_match_dstack():
    dumped = ResourcesSpec().model_dump(mode="json")
    assert dumped["cpu"] == {"arch": None, "count": {"min": 2, "max": None}}
    assert dumped["memory"] == {"min": 8.0, "max": None}
    assert dumped["disk"] == {"size": {"min": 100.0, "max": None}}
    assert dumped["gpu"]["count"] == {"min": 0, "max": None}
    assert dumped["shm_size"] is None


def test_gpu_given_without_count_means_at_least_one():
    assert GPUSpec.model_validate("A100").count.model_dump() == {"min": 1, "max": None}
    assert GPUSpec.model_validate({"name": "A100"}).count.model_dump() == {"min": 1, "max": None}


@pytest.mark.parametrize("text, expected", [
    ("A100:2", {"name": ["A100"], "count": {"min": 2, "max": 2}}),
    ("40GB..80GB:4", {"memory": {"min": 40.0, "max": 80.0}, "count": {"min": 4, "max": 4}}),
    ("4:40GB..80GB", {"memory": {"min": 40.0, "max": 80.0}, "count": {"min": 4, "max": 4}}),
    ("A10,A10G", {"name": ["A10", "A10G"]}),
    ("nvidia:24GB..:1..2", {"vendor": "nvidia", "memory": {"min": 24.0, "max": None}, "count": {"min": 1, "max": 2}}),
    ("tpu:v5litepod", {"vendor": "google", "name": ["v5litepod"]}),
    ("AMD:MI300X:8", {"vendor": "amd", "name": ["MI300X"], "count": {"min": 8, "max": 8}}),
    (2, {"count": {"min": 2, "max": 2}}),
    ("1..2", {"count": {"min": 1, "max": 2}}),
    ({"name": "H100", "count": "8", "compute_capability": "9.0"},
     {"name": ["H100"], "count": {"min": 8, "max": 8}, "compute_capability": [9, 0]}),
    ({"total_memory": "160GB.."}, {"total_memory": {"min": 160.0, "max": None}}),
])
def test_gpu_spec(text, expected):
    dumped = GPUSpec.model_validate(text).model_dump(mode="json")
    for key, value in expected.items():
        assert dumped[key] == value, key


@pytest.mark.parametrize("text, message", [
    ("A100:2:3", "GPU spec count conflict: A100:2:3"),
    ("A100::2", "GPU spec contains empty token: A100::2"),
    ("nvidia:amd", "GPU spec vendor conflict"),
    ("A100:H100", "GPU spec name conflict"),
    ("24GB:80GB", "GPU spec memory conflict"),
    ("A100,:2", "GPU name can not be empty"),
    ("A100:..", "Invalid empty range"),
])
def test_gpu_spec_errors(text, message):
    with pytest.raises(ValidationError, match=message):
        GPUSpec.model_validate(text)


@pytest.mark.parametrize("text, arch, low, high", [
    ("16..", None, 16, None), ("x86:2", "x86", 2, 2), ("2..:arm", "arm", 2, None), (8, None, 8, 8),
    ({"min": 4, "max": 8}, None, 4, 8), ("aarch64:4", "arm", 4, 4), ({"arch": "x86_64", "count": "2.."}, "x86", 2, None),
])
def test_cpu_spec(text, arch, low, high):
    spec = CPUSpec.model_validate(text)
    assert (spec.arch and spec.arch.value, spec.count.min, spec.count.max) == (arch, low, high)


@pytest.mark.parametrize("text, message", [
    ("x86:arm", "CPU spec arch conflict"), ("2:4", "CPU spec count conflict"), ("sparc:2", "Invalid CPU architecture"),
    ("2::", "CPU spec contains empty token"),
])
def test_cpu_spec_errors(text, message):
    with pytest.raises(ValidationError, match=message):
        CPUSpec.model_validate(text)


def test_disk_forms():
    assert DiskSpec.model_validate("500GB").size.min == 500
    assert DiskSpec.model_validate({"size": "200GB.."}).size.max is None
    assert DiskSpec.model_validate(100).size.max == 100


def test_reference_resources_example():
    spec = ResourcesSpec.model_validate(
        {"cpu": "16..", "memory": "200GB..", "gpu": "40GB..80GB:4", "shm_size": "16GB", "disk": "500GB"})
    assert spec.cpu.count.min == 16 and spec.memory.min == 200 and spec.shm_size == 16
    assert (spec.gpu.memory.min, spec.gpu.memory.max, spec.gpu.count.min, spec.gpu.count.max) == (40, 80, 4, 4)
    assert (spec.disk.size.min, spec.disk.size.max) == (500, 500)


def test_unknown_resource_field_is_rejected():
    with pytest.raises(ValidationError, match="gpus"):
        ResourcesSpec.model_validate({"gpus": 2})


# --- properties -------------------------------------------------------------------------------------------------

ints = st.integers(min_value=0, max_value=10**6)
sizes = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(float),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def int_ranges(draw):
    low, high = draw(st.one_of(st.none(), ints)), draw(st.one_of(st.none(), ints))
    if low is None and high is None:
        low = 0
    if low is not None and high is not None and low > high:
        low, high = high, low
    return Range[int](min=low, max=high)


@st.composite
def memory_ranges(draw):
    low, high = draw(st.one_of(st.none(), sizes)), draw(st.one_of(st.none(), sizes))
    if low is None and high is None:
        low = 1.0
    if low is not None and high is not None and low > high:
        low, high = high, low
    return Range[Memory](min=None if low is None else Memory(low), max=None if high is None else Memory(high))


@given(int_ranges())
def test_int_range_round_trips(r):
    assert Range[int].model_validate(str(r)) == r


@given(memory_ranges())
def test_memory_range_round_trips(r):
    again = Range[Memory].model_validate(str(r))
    assert (again.min, again.max) == (r.min, r.max)


@given(st.builds(
    lambda vendor, names, memory, count: GPUSpec(vendor=vendor, name=names, memory=memory, count=count),
    st.sampled_from([None, "nvidia", "amd", "intel"]),
    st.one_of(st.none(), st.lists(st.sampled_from(["A100", "H100", "L4", "A10G", "MI300X"]), min_size=1, max_size=3)),
    st.one_of(st.none(), memory_ranges()),
    int_ranges(),
))
def test_gpu_spec_round_trips(spec):
    assert GPUSpec.model_validate(str(spec)) == spec


@given(st.builds(lambda arch, count: CPUSpec(arch=arch, count=count), st.sampled_from([None, "x86", "arm"]), int_ranges()))
def test_cpu_spec_round_trips(spec):
    assert CPUSpec.model_validate(str(spec)) == spec


GRAMMAR_ALPHABET = st.text(alphabet="0123456789.:,ABGHMTabgkmnrtvx -e", max_size=24)


@settings(max_examples=400)
@given(st.one_of(GRAMMAR_ALPHABET, st.text(max_size=16)))
@pytest.mark.parametrize("model", [GPUSpec, CPUSpec, DiskSpec, Range[int], Range[Memory]])
def test_any_string_gives_a_value_or_a_validation_error(model, text):
    try:
        value = model.model_validate(text)
    except ValidationError:
        return
    for number in (getattr(value, "min", None), getattr(value, "max", None)):
        assert number is None or (math.isfinite(number) and number >= 0)


@settings(max_examples=200)
@given(st.text(max_size=16))
def test_memory_parse_raises_only_value_error(text):
    try:
        Memory.parse(text)
    except ValueError:
        pass
