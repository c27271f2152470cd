"""offers.resource_flags (the resource flags read without pydantic) against configuration.resources (the
models): on every input, either the same value (fields, `str()`, `describe()`, JSON dump) or a refusal (NotPlain) that
sends the command to the models; never a value where the models give an error."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.run_options import override_resources
from configuration.resources import ResourcesSpec
from offers.resource_flags import NotPlain, parse_resource_flags

FLAGS = ("gpu", "cpu", "memory", "disk")
# Inputs of every shape the grammar has, and its errors: each is tried as each of the four flags.
CORPUS = [
    "H100:8", "H100", "A100:2", "a100:2", "A100,H100:1..4", "24GB..", "24GB..:1..4", "nvidia:H100:8", "NVIDIA:8",
    "tpu:v5litepod-16", "v5litepod-16", "tpu-v5litepod-16", "google:v6e-8", "amd:MI300X:8", "intel", "40GB..80GB:4",
    "L4:1", "T4:0..2", "0", "1", "8", "16..", "..8", "2..8", "8..2", "..", "...", "1...3", "1..3..5", "", " ", ":",
    "A100:", ":A100", "A100::2", "A100:2:4", "nvidia:amd", "A100:H100", "24GB:40GB", "A100,", ",A100", "A100,,H100",
    "A100 : 2", " A100", "A100\t", "A100\t:2", "tpu-", "8GB", "512MB", "1TB", "1.5TB", "0.5", "16", "64GB..",
    "..512GB", "100GB..1TB", "1TB..100GB", "-1", "-8GB", "1e3", "1e3GB", "inf", "nan", "infGB", "nanGB", "1_000",
    "1_0GB", "007", "08", "+8", "8.0", "2.5", "１", "²", "8 GB", "8 gb", "8gb", "8Gb", "8GiB", "8G", "8KB",
    "x86", "arm", "ARM", "arm64", "aarch64", "amd64", "x86_64", "arm:8", "arm:16..", "16..:arm", "x86:arm", "8:16",
    "riscv", "arm:", "99999999999", "1234567890", "123456789", "0..0", "0:A100", "A100:0", "GB", "gb..",
    "1..2GB", "2GB..1", "A1OO", "H100:8GB", "H100:8:80GB", "80GB:H100:8", "H100:80GB..:8..", "4x", "x4",
]


def models(flag: str, text: str):
    """The models' value for one flag (through the CLI's own override, as `dstack offers` reads it), or None on an
    error."""
    try:
        return override_resources(ResourcesSpec(), **{f: (text if f == flag else None) for f in FLAGS})
    except Exception as e:  # typer.BadParameter: the one error the CLI gives for a flag
        assert type(e).__name__ == "BadParameter", e
        return None


def assert_agree(flag: str, text: str) -> bool:
    """Checks one input; True when the plain reader took it."""
    expected = models(flag, text)
    try:
        plain = parse_resource_flags(**{f: (text if f == flag else None) for f in FLAGS})
    except NotPlain:
        return False
    assert expected is not None, f"--{flag} {text!r}: the models refuse it, the plain reader gave {plain}"
    assert plain.model_dump(mode="json") == expected.model_dump(mode="json"), (flag, text)
    assert plain.describe() == expected.describe(), (flag, text)
    for field in FLAGS:
        assert str(getattr(plain, field)) == str(getattr(expected, field)), (flag, text, field)
    return True


@pytest.mark.parametrize("flag", FLAGS)
def test_the_corpus_agrees_with_the_models(flag):
    taken = [text for text in CORPUS if assert_agree(flag, text)]
    assert len(taken) >= 10, taken  # not a reader that refuses everything


@pytest.mark.parametrize("flag, text", [
    ("gpu", "H100:8"), ("gpu", "A100,H100:1..4"), ("gpu", "24GB..:1..4"), ("gpu", "nvidia:H100:8"), ("gpu", "tpu"),
    ("gpu", "v5litepod-16"), ("gpu", "40GB..80GB:4"), ("gpu", "0"), ("cpu", "16.."), ("cpu", "arm:8"), ("cpu", "8"),
    ("memory", "64GB.."), ("memory", "512MB"), ("memory", "1.5TB"), ("disk", "500GB"), ("disk", "100GB..1TB"),
])
def test_common_flags_are_read_without_the_models(flag, text):
    assert assert_agree(flag, text)


def test_flags_together_agree():
    """Several flags at once, each from a small set of common and wrong values."""
    values = {"gpu": [None, "A100:2", "24GB..", "bad::"], "cpu": [None, "arm:8", "4..2"],
              "memory": [None, "64GB..", "-1"], "disk": [None, "200GB", "x"]}
    for combination in itertools.product(*values.values()):
        given_flags = dict(zip(values, combination))
        try:
            expected = override_resources(ResourcesSpec(), **given_flags)
        except Exception:
            expected = None
        try:
            plain = parse_resource_flags(**given_flags)
        except NotPlain:
            continue
        assert expected is not None, given_flags
        assert plain.model_dump() == expected.model_dump(mode="json") and plain.describe() == expected.describe()


GRAMMAR_TEXT = st.text(alphabet="0123456789.:,GBMTgbmtAHLVvx-_ +e\tnaridpu", max_size=14)


@settings(max_examples=400, deadline=None)
@given(flag=st.sampled_from(FLAGS), text=GRAMMAR_TEXT)
def test_any_text_agrees_with_the_models(flag, text):
    assert_agree(flag, text)


@settings(max_examples=200, deadline=None)
@given(flag=st.sampled_from(FLAGS), text=st.text(max_size=10))
def test_any_unicode_text_agrees_with_the_models(flag, text):
    assert_agree(flag, text)


def test_the_default_resources_dump_as_the_models():
    plain = parse_resource_flags(None, None, None, None)
    assert plain.model_dump() == ResourcesSpec().model_dump(mode="json")
    assert plain.describe() == ResourcesSpec().describe()

