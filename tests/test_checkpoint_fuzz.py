"""Fuzzing the checkpoint loader: damaged or hostile bytes either load or raise CheckpointError."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpolicy.bench.realtime import untrained_checkpoint
from dpolicy.training.checkpoint import CheckpointError, load_policy

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> bytes:
    path = untrained_checkpoint(tmp_path_factory.mktemp("fuzz") / "tiny.safetensors", overrides=(
        "policy.down_dims=[8,16]", "policy.step_embed_dim=8", "policy.num_inference_steps=2",
        "policy.n_groups=4"))
    return path.read_bytes()


def _loads_or_refuses(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(data)
    try:
        load_policy(path, device="cpu")
    except CheckpointError as exc:
        assert str(path) in str(exc) or "checkpoint" in str(exc)


@SETTINGS
@given(data=st.data())
def test_bit_flips_and_truncations(tmp_path, blob, data):
    damaged = bytearray(blob)
    (header_len,) = struct.unpack("<Q", blob[:8])
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        # most flips land in the header, where the structure is
        index = data.draw(st.integers(0, min(len(blob), 8 + header_len) - 1), label="index")
        damaged[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    cut = data.draw(st.one_of(st.just(len(damaged)), st.integers(0, len(damaged))), label="cut")
    _loads_or_refuses(tmp_path, bytes(damaged[:cut]))


@SETTINGS
@given(raw=st.binary(max_size=512))
def test_random_bytes(tmp_path, raw):
    _loads_or_refuses(tmp_path, raw)


def _reheader(blob: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    document = json.loads(header["__metadata__"]["dpolicy"])
    edit(document)
    header["__metadata__"]["dpolicy"] = json.dumps(document)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + blob[8 + n:]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=12)


@SETTINGS
@given(key=st.sampled_from(["step", "shape_meta", "config", "has_ema", "extra_state", "format"]), value=JSON_VALUES)
def test_hostile_metadata_values(tmp_path, blob, key, value):
    _loads_or_refuses(tmp_path, _reheader(blob, lambda d: d.__setitem__(key, value)))


@SETTINGS
@given(shape=st.lists(st.integers(-5, 2**40), min_size=0, max_size=10))
def test_extreme_declared_shapes(tmp_path, blob, shape):
    _loads_or_refuses(tmp_path, _reheader(blob, lambda d: d["shape_meta"]["obs"]["obs"].__setitem__("shape", shape)))
