"""Fuzzing the zarr data layer with hypothesis: whatever happens to the bytes of a dataset's chunk
files and metadata JSON (bit flips, truncation, random bytes, random JSON values), opening and
reading it either works or raises DatasetError -- never another exception, never a crash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpolicy.data import replay_buffer
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer, verify

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two episodes, a few chunks per array (smooth values, so Blosc really compresses them)."""
    path = tmp_path_factory.mktemp("fuzz") / "base.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay_buffer, "CHUNK_BYTES", 512)
        with ReplayBuffer.create(path, attrs={"seeds": [1, 2]}) as buffer:
            first = 0
            for n in (30, 50):
                t = np.arange(first, first + n, dtype=np.float32)[:, None]
                buffer.append_episode({"action": t + np.arange(2, dtype=np.float32),
                                       "state": t * np.float32(0.5) + np.arange(5, dtype=np.float32),
                                       "img": (np.arange(n)[:, None, None, None] + np.zeros((1, 4, 4, 3)))
                                       .astype(np.uint8),
                                       "n_contacts": (t > 40).astype(np.int64)})
                first += n
    return path


def files_of(path: Path, metadata: bool) -> list[str]:
    names = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
    return [name for name in names if (name.rsplit("/", 1)[-1].startswith(".")) == metadata]


def read_everything(path: Path) -> None:
    """What training and `dpolicy data info` do: open, then read every array and an episode."""
    with ReplayBuffer.open(path) as buffer:
        for key in buffer.keys():
            buffer.load(key)
        if buffer.n_episodes:
            buffer.get_episode(-1)


def check_in_process(path: Path) -> None:
    try:
        read_everything(path)
    except DatasetError:
        pass
    try:
        report = verify(path)  # raises only for a store that is not a zarr group at all
    except DatasetError:
        return
    assert isinstance(report.all_problems, list)


# ---------------------------------------------------------------------------------- byte-level damage
def mutations(max_size: int = 64):
    """(kind, parameters): flips of (position fraction, bit), a truncation fraction, or bytes written at
    a position fraction (overwriting, or inserting)."""
    fraction = st.floats(0, 1, allow_nan=False)
    return st.one_of(
        st.tuples(st.just("flip"), st.lists(st.tuples(fraction, st.integers(0, 7)), min_size=1, max_size=8)),
        st.tuples(st.just("truncate"), fraction),
        st.tuples(st.just("overwrite"), st.tuples(fraction, st.binary(min_size=1, max_size=max_size))),
        st.tuples(st.just("insert"), st.tuples(fraction, st.binary(min_size=1, max_size=max_size))),
    )


def mutate(data: bytes, mutation) -> bytes:
    kind, parameters = mutation
    if kind == "flip":
        out = bytearray(data)
        for where, bit in parameters:
            if out:
                out[min(int(where * len(out)), len(out) - 1)] ^= 1 << bit
        return bytes(out)
    if kind == "truncate":
        return data[:int(parameters * len(data))]
    where, payload = parameters
    at = int(where * len(data))
    if kind == "overwrite":
        return data[:at] + payload + data[at + len(payload):]
    return data[:at] + payload + data[at:]


def damaged_copy(source: Path, work: Path, damage: dict[str, bytes]) -> Path:
    target = work / "damaged.zarr"
    shutil.copytree(source, target)
    for name, data in damage.items():
        (target / name).write_bytes(data)
    return target


@FUZZ
@given(data=st.data())
def test_damaged_chunk_files_open_or_raise_dataset_error(dataset, data):
    chunks = files_of(dataset, metadata=False)
    names = data.draw(st.lists(st.sampled_from(chunks), min_size=1, max_size=3, unique=True), label="files")
    damage = {name: mutate((dataset / name).read_bytes(), data.draw(mutations(), label=name)) for name in names}
    with tempfile.TemporaryDirectory() as work:
        check_in_process(damaged_copy(dataset, Path(work), damage))


# ---------------------------------------------------------------------------------- metadata damage
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.sampled_from([0, 1, -1, 2**31, 10**12]),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
              st.sampled_from(["<f4", "<f8", "<i4", "|u1", "|O", "<U4", ">f4", "blosc", "zstd", "C", "F", "/"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def json_mutations():
    """Replace or delete one top-level field, replace one list item, or add a field."""
    return st.one_of(
        st.tuples(st.just("set"), st.integers(0, 20), json_values),
        st.tuples(st.just("delete"), st.integers(0, 20), st.none()),
        st.tuples(st.just("item"), st.integers(0, 20), st.tuples(st.integers(0, 3), json_values)),
        st.tuples(st.just("add"), st.text(max_size=12), json_values),
    )


def mutate_json(text: str, mutation) -> bytes:
    document = json.loads(text)
    kind, which, value = mutation
    if kind == "add" or not isinstance(document, dict) or not document:
        if isinstance(document, dict):
            document[str(which)] = value
        return json.dumps(document).encode()
    key = sorted(document)[which % len(document)]
    if kind == "set":
        document[key] = value
    elif kind == "delete":
        del document[key]
    elif isinstance(document[key], list) and document[key]:
        index, item = value
        document[key][index % len(document[key])] = item
    else:
        document[key] = value[1]
    return json.dumps(document, allow_nan=True).encode()


@FUZZ
@given(data=st.data())
def test_damaged_metadata_opens_or_raises_dataset_error(dataset, data):
    metadata = files_of(dataset, metadata=True)
    names = data.draw(st.lists(st.sampled_from(metadata), min_size=1, max_size=2, unique=True), label="files")
    damage = {}
    for name in names:
        text = (dataset / name).read_text()
        if data.draw(st.booleans(), label=f"{name} as JSON"):
            damage[name] = mutate_json(text, data.draw(json_mutations(), label=name))
        else:
            damage[name] = mutate(text.encode(), data.draw(mutations(16), label=name))
    with tempfile.TemporaryDirectory() as work:
        check_in_process(damaged_copy(dataset, Path(work), damage))


def test_the_fuzzed_dataset_is_clean_and_mutations_change_it(dataset):
    """The base of the fuzzing reads as it was written, so the properties above start from a valid store."""
    read_everything(dataset)
    assert verify(dataset).ok
    assert mutate(b"abcd", ("flip", [(0.0, 0)])) == b"`bcd"
    assert mutate(b"abcd", ("truncate", 0.5)) == b"ab"
    assert mutate(b"abcd", ("insert", (0.5, b"X"))) == b"abXcd"
    assert json.loads(mutate_json('{"a": [1, 2], "b": 3}', ("item", 0, (1, None)))) == {"a": [1, None], "b": 3}


# ---------------------------------------------------------------------------------- in a subprocess
CHECK = """
import sys
from dpolicy.data.replay_buffer import DatasetError
sys.path.insert(0, sys.argv[2])
from test_data_fuzz import read_everything
from pathlib import Path
try:
    read_everything(Path(sys.argv[1]))
except DatasetError as err:
    print("DatasetError:", str(err).splitlines()[0])
"""


@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damage_never_crashes_the_process(dataset, data):
    """The same damage in a child process: a segfault there (exit -11) fails this test instead of
    killing the test run. The command line must give exit 0 or 1 with at most one error line."""
    chunk_files = files_of(dataset, metadata=False)
    name = data.draw(st.sampled_from(chunk_files), label="file")
    damage = {name: mutate((dataset / name).read_bytes(), data.draw(mutations(), label="mutation"))}
    with tempfile.TemporaryDirectory() as work:
        path = damaged_copy(dataset, Path(work), damage)
        child = subprocess.run([sys.executable, "-c", CHECK, str(path), str(Path(__file__).parent)],
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, (child.returncode, child.stderr[-3000:])
        cli = subprocess.run([sys.executable, "-m", "dpolicy", "data", "verify", str(path)],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode in (0, 1), (cli.returncode, cli.stderr[-3000:])
        assert "Traceback" not in cli.stderr
        assert len([line for line in cli.stderr.splitlines() if line.startswith("error:")]) == cli.returncode
