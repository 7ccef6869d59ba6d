"""The zarr replay buffer: reading, validation, writing, and atomic writes under crashes."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from dpolicy.data.replay_buffer import PENDING_ATTR, DatasetError, ReplayBuffer
from dpolicy.data.synthetic import synthetic_pusht_episode, write_synthetic_pusht

LENGTHS = [20, 30, 25]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "demo.zarr"
    write_synthetic_pusht(path, LENGTHS, image_size=8).close()
    return path


def snapshot(path):
    """Everything a reader sees: episode ends, attrs and the committed rows of every key."""
    with ReplayBuffer.open(path) as buffer:
        return {"episode_ends": buffer.episode_ends.tolist(), "attrs": dict(buffer.attrs),
                "data": {key: buffer.load(key) for key in buffer.keys()}}


def assert_same(actual, expected):
    assert actual["episode_ends"] == expected["episode_ends"]
    assert actual["attrs"] == expected["attrs"]
    assert sorted(actual["data"]) == sorted(expected["data"])
    for key, values in expected["data"].items():
        assert actual["data"][key].dtype == values.dtype, key
        np.testing.assert_array_equal(actual["data"][key], values, err_msg=key)


def open_root(path):
    return zarr.open_group(LocalStore(path), mode="r+")


# ---------------------------------------------------------------------------------- reading and writing
def test_written_dataset_reopens_identically(dataset):
    episodes = [synthetic_pusht_episode(start, n, image_size=8)
                for start, n in zip(np.cumsum([0, *LENGTHS[:-1]]), LENGTHS, strict=True)]
    with ReplayBuffer.open(dataset) as buffer:
        assert buffer.n_episodes == 3 and buffer.n_steps == 75
        assert buffer.episode_ends.dtype == np.int64
        np.testing.assert_array_equal(buffer.episode_ends, np.cumsum(LENGTHS))
        np.testing.assert_array_equal(buffer.episode_lengths, LENGTHS)
        assert buffer.keys() == ["action", "img", "keypoint", "state"]
        assert dict(buffer.attrs) == {"synthetic": True}
        assert buffer.zarr_format == 2
        for i, expected in enumerate(episodes):
            got = buffer.get_episode(i)
            for key, values in expected.items():
                assert got[key].dtype == values.dtype
                np.testing.assert_array_equal(got[key], values)
        np.testing.assert_array_equal(buffer.get_episode(-1)["state"], episodes[2]["state"])
        assert isinstance(buffer["img"], zarr.Array) and buffer["img"].shape == (75, 8, 8, 3)
        with pytest.raises(IndexError, match="episode 3 out of range"):
            buffer.get_episode(3)
        with pytest.raises(KeyError, match="no array data/velocity"):
            buffer["velocity"]
    # Format 2 on disk, time-only chunks, Blosc zstd compression.
    assert (dataset / ".zgroup").is_file() and (dataset / "meta" / "episode_ends" / ".zarray").is_file()
    array = zarr.open_array(LocalStore(dataset / "data" / "img"), mode="r")
    assert array.chunks[1:] == (8, 8, 3) and array.compressors[0].cname == "zstd"


def test_attrs_persist_and_read_only_mode_refuses_writes(dataset):
    with ReplayBuffer.open(dataset, mode="a") as buffer:
        buffer.attrs["seeds"] = [3, 4, 5]
    with ReplayBuffer.open(dataset) as buffer:
        assert buffer.attrs["seeds"] == [3, 4, 5]
        with pytest.raises(DatasetError, match="read-only"):
            buffer.append_episode(synthetic_pusht_episode(75, 5, image_size=8))
        with pytest.raises(DatasetError, match="read-only"):
            buffer.drop_last_episode()


def test_append_and_drop_last_episode(dataset):
    before = snapshot(dataset)
    with ReplayBuffer.open(dataset, mode="a") as buffer:
        episode = synthetic_pusht_episode(75, 12, image_size=8)
        buffer.append_episode(episode)
        assert buffer.n_episodes == 4 and buffer.n_steps == 87
    with ReplayBuffer.open(dataset, mode="a") as buffer:
        np.testing.assert_array_equal(buffer.get_episode(3)["img"], episode["img"])
        buffer.drop_last_episode()
        assert buffer.n_steps == 75
        assert all(buffer[key].shape[0] == 75 for key in buffer.keys())
    assert_same(snapshot(dataset), before)


def test_create_defines_keys_with_the_first_episode_and_converts_safely(tmp_path):
    path = tmp_path / "new.zarr"
    with ReplayBuffer.create(path, attrs={"source": "test"}) as buffer:
        assert buffer.n_episodes == 0 and buffer.keys() == []
        buffer.append_episode({"action": np.zeros((4, 2), np.float32), "flag": np.ones((4,), bool)})
        buffer.append_episode({"action": np.ones((3, 2), np.float64), "flag": np.zeros((3,), bool)})
    with ReplayBuffer.open(path) as buffer:
        assert buffer["action"].dtype == np.float32 and buffer["flag"].dtype == bool
        np.testing.assert_array_equal(buffer.episode_ends, [4, 7])
        np.testing.assert_array_equal(buffer.load("action")[4:], np.ones((3, 2)))
    with pytest.raises(DatasetError, match="already exists"):
        ReplayBuffer.create(path)
    ReplayBuffer.create(path, overwrite=True).close()
    assert snapshot(path)["episode_ends"] == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a zarr store"):
        ReplayBuffer.create(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").exists()


@pytest.mark.parametrize("spoil, message", [
    (lambda good: {"action": good["action"]}, r"missing \['img', 'keypoint', 'state'\]"),
    (lambda good: good | {"action": np.zeros((5, 3), np.float32)}, r"shape \(3,\); data/action expects"),
    (lambda good: good | {"img": np.zeros((5, 8, 8, 3), np.float32)}, "float32, which does not convert"),
    (lambda good: good | {"state": np.full((5, 5), np.nan, np.float32)}, "'state' contains NaN or inf"),
    (lambda good: good | {"state": np.zeros((4, 5), np.float32)}, "same number of steps"),
    (lambda good: good | {"note": np.array(["a"] * 5)}, "unexpected \\['note'\\]"),
])
def test_append_rejects_bad_episodes_without_touching_the_dataset(dataset, spoil, message):
    before = snapshot(dataset)
    with ReplayBuffer.open(dataset, mode="a") as buffer:
        with pytest.raises(DatasetError, match=message) as err:
            buffer.append_episode(spoil(synthetic_pusht_episode(75, 5, image_size=8)))
        assert str(dataset) in str(err.value)
    assert_same(snapshot(dataset), before)


def test_a_write_that_raises_is_rolled_back_in_process(dataset, monkeypatch):
    before = snapshot(dataset)
    original = zarr.Array.__setitem__

    def fail_on_images(self, selection, value):
        if self.path == "data/img":
            raise OSError("disk full")
        return original(self, selection, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", fail_on_images)
    with ReplayBuffer.open(dataset, mode="a") as buffer:
        with pytest.raises(OSError, match="disk full"):
            buffer.append_episode(synthetic_pusht_episode(75, 10, image_size=8))
        assert buffer.n_episodes == 3
    monkeypatch.undo()
    assert_same(snapshot(dataset), before)
    with ReplayBuffer.open(dataset) as buffer:
        assert all(buffer[key].shape[0] == 75 for key in buffer.keys())


def test_add_key_computes_per_episode(dataset):
    with ReplayBuffer.open(dataset, mode="a") as buffer:
        buffer.add_key("speed", lambda ep: np.linalg.norm(ep["action"], axis=1, keepdims=True),
                       inputs=["action"], progress=False)
        with pytest.raises(DatasetError, match="data/speed already exists"):
            buffer.add_key("speed", lambda ep: ep["action"], progress=False)
        with pytest.raises(DatasetError, match="expected 20 rows"):
            buffer.add_key("broken", lambda ep: ep["action"][:-1], progress=False)
        assert "broken" not in buffer
    with ReplayBuffer.open(dataset) as buffer:
        assert "broken" not in buffer and "speed" in buffer
        np.testing.assert_allclose(buffer.load("speed")[:, 0], np.linalg.norm(buffer.load("action"), axis=1))


def test_load_selects_episodes_and_converts_dtype(tmp_path):
    path = tmp_path / "float_images.zarr"
    write_synthetic_pusht(path, LENGTHS, image_size=8, image_dtype="float32").close()
    with ReplayBuffer.open(path) as buffer:
        assert buffer["img"].dtype == np.float32
        images = buffer.load("img", dtype=np.uint8)
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(images, buffer["img"][:].astype(np.uint8))
        part = buffer.load("state", episodes=[2, 0])
        np.testing.assert_array_equal(part, np.concatenate([buffer.get_episode(0)["state"],
                                                            buffer.get_episode(2)["state"]]))


def test_loading_floats_as_integers_rounds_and_checks_the_range(tmp_path):
    with ReplayBuffer.create(tmp_path / "x.zarr") as buffer:
        buffer.append_episode({"x": np.array([[0.4], [1.6], [254.6]], np.float32)})
        np.testing.assert_array_equal(buffer.load("x", dtype=np.uint8)[:, 0], [0, 2, 255])
        buffer.append_episode({"x": np.array([[300.0]], np.float32)})
        with pytest.raises(DatasetError, match=r"data/x has values in .*300.*outside the range of uint8"):
            buffer.load("x", dtype=np.uint8)


def test_zip_stores_are_read_only(dataset, tmp_path):
    archive = tmp_path / "demo.zarr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in dataset.rglob("*"):
            if file.is_file():
                zf.write(file, file.relative_to(dataset).as_posix())
    with ReplayBuffer.open(archive) as buffer:
        assert_same({"episode_ends": buffer.episode_ends.tolist(), "attrs": dict(buffer.attrs),
                     "data": {k: buffer.load(k) for k in buffer.keys()}}, snapshot(dataset))
    with pytest.raises(DatasetError, match="zip stores are read-only"):
        ReplayBuffer.open(archive, mode="a")


def test_zarr_format_3_datasets_are_read(tmp_path):
    path = tmp_path / "v3.zarr"
    root = zarr.open_group(LocalStore(path), mode="w", zarr_format=3)
    root.create_group("data").create_array("action", data=np.arange(10, dtype=np.float32).reshape(5, 2))
    root.create_group("meta").create_array("episode_ends", data=np.array([2, 5], dtype=np.int64))
    with ReplayBuffer.open(path) as buffer:
        assert buffer.zarr_format == 3 and buffer.n_episodes == 2
        np.testing.assert_array_equal(buffer.get_episode(1)["action"], [[4, 5], [6, 7], [8, 9]])


# ---------------------------------------------------------------------------------- validation
def _drop_episode_ends(path):
    del open_root(path)["meta"]["episode_ends"]


def _set_episode_ends(values):
    def corrupt(path):
        ends = open_root(path)["meta"]["episode_ends"]
        ends.resize((len(values),))
        ends[:] = np.array(values, dtype=np.int64)
    return corrupt


def _shorten_state(path):
    state = open_root(path)["data"]["state"]
    state.resize((70, 5))


def _add_text_array(path):
    open_root(path)["data"].create_array("notes", shape=(75,), dtype="<U8", fill_value="")


def _two_dimensional_episode_ends(path):
    meta = open_root(path)["meta"]
    del meta["episode_ends"]
    meta.create_array("episode_ends", data=np.array([[20, 50, 75]], dtype=np.int64))


def _float_episode_ends(path):
    meta = open_root(path)["meta"]
    del meta["episode_ends"]
    meta.create_array("episode_ends", data=np.array([20.0, 50.0, 75.0]))


@pytest.mark.parametrize("corrupt, message", [
    (_drop_episode_ends, "missing array meta/episode_ends"),
    (_set_episode_ends([20, 10, 75]), "meta/episode_ends must be strictly increasing.*entry 1 is 10 after"),
    (_set_episode_ends([0, 50, 75]), "entry 0 is 0 after 0"),
    (_set_episode_ends([20, 50, 80]), r"80 in all \(meta/episode_ends\[-1\]\); found data/action: 75"),
    (_shorten_state, r"75 in all .* data/keypoint: 75, data/state: 70"),
    (_add_text_array, "data/notes has shape .* expected a numeric"),
    (_two_dimensional_episode_ends, r"meta/episode_ends has shape \(1, 3\).*expected a 1-D integer"),
    (_float_episode_ends, "meta/episode_ends has shape .* float64; expected a 1-D integer"),
])
def test_malformed_datasets_are_rejected_with_path_key_and_expectation(dataset, corrupt, message):
    corrupt(dataset)
    with pytest.raises(DatasetError, match=message) as err:
        ReplayBuffer.open(dataset)
    assert str(dataset) in str(err.value)


def test_nan_and_inf_are_reported_with_the_step(dataset):
    state = open_root(dataset)["data"]["state"]
    state[33, 2] = np.inf
    with ReplayBuffer.open(dataset) as buffer:  # structure is fine; values are checked when read
        with pytest.raises(DatasetError, match=r"data/state contains NaN or inf at step 33 \(episode 1\)"):
            buffer.check_values()
        with pytest.raises(DatasetError, match="data/state contains NaN or inf"):
            buffer.load("state")
        with pytest.raises(DatasetError, match="at step 33"):
            buffer.value_range("state")
        buffer.load("action")


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such dataset"),
    (lambda p: (p.mkdir(), p)[1], "not a zarr store: no group at its root"),
    (lambda p: (p.write_text("hello"), p)[1], "not a zarr store"),
    (lambda p: p.with_suffix(".zip"), "no such file"),
])
def test_paths_that_are_not_zarr_stores(tmp_path, make, message):
    path = make(tmp_path / "thing")
    with pytest.raises(DatasetError, match=message) as err:
        ReplayBuffer.open(path)
    assert str(path) in str(err.value)


def test_missing_groups_are_named(tmp_path):
    path = tmp_path / "bare.zarr"
    zarr.open_group(LocalStore(path), mode="w", zarr_format=2)
    with pytest.raises(DatasetError, match="missing group meta/"):
        ReplayBuffer.open(path)


# ---------------------------------------------------------------------------------- crash safety
def _record_every_intermediate_state(monkeypatch, path, tmp_path, operation):
    """Run ``operation`` and copy the store before each file it writes: each copy is what a crash leaves."""
    states = []
    original = LocalStore._set

    async def copy_then_set(self, key, value, exclusive=False):
        copy = tmp_path / f"state{len(states):03d}.zarr"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*.partial"))
        states.append((copy, key))
        await original(self, key, value, exclusive)

    monkeypatch.setattr(LocalStore, "_set", copy_then_set)
    with ReplayBuffer.open(path, mode="a") as buffer:
        operation(buffer)
    monkeypatch.undo()
    return states


def _check_reopens_as(copy, expected):
    """A crashed copy reads as ``expected``; opening it to write repairs it, and it takes appends again."""
    assert_same(snapshot(copy), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ReplayBuffer.open(copy, mode="a").close()
    root = open_root(copy)
    n_steps = expected["episode_ends"][-1] if expected["episode_ends"] else 0
    assert PENDING_ATTR not in root["meta"].attrs
    assert sorted(root["data"].array_keys()) == sorted(expected["data"])
    assert all(array.shape[0] == n_steps for _, array in root["data"].arrays())
    with ReplayBuffer.open(copy, mode="a") as buffer:
        buffer.append_episode({key: values[:3] for key, values in expected["data"].items()})
    with ReplayBuffer.open(copy) as buffer:
        assert buffer.episode_ends.tolist() == [*expected["episode_ends"], n_steps + 3]
        for key, values in expected["data"].items():
            np.testing.assert_array_equal(buffer.load(key)[:n_steps], values)


def test_append_crashing_at_any_write_leaves_the_dataset_as_before(dataset, tmp_path, monkeypatch):
    before = snapshot(dataset)
    states = _record_every_intermediate_state(
        monkeypatch, dataset, tmp_path,
        lambda buffer: buffer.append_episode(synthetic_pusht_episode(75, 40, image_size=8),
                                             attrs={"episode_seeds": [7, 8, 9, 10]}))
    written = [key for _, key in states]
    assert any(k.startswith("data/img/") for k in written) and "meta/episode_ends/0" in written
    assert ".zattrs" in written  # the metadata update is part of the same write
    for copy, _ in states:
        _check_reopens_as(copy, before)
    after = snapshot(dataset)
    assert after["episode_ends"] == [20, 50, 75, 115]
    assert after["attrs"] == {"synthetic": True, "episode_seeds": [7, 8, 9, 10]}


def test_drop_crashing_at_any_write_is_all_or_nothing(dataset, tmp_path, monkeypatch):
    before = snapshot(dataset)
    states = _record_every_intermediate_state(monkeypatch, dataset, tmp_path, ReplayBuffer.drop_last_episode)
    after = snapshot(dataset)
    assert after["episode_ends"] == [20, 50]
    outcomes = []
    for copy, _ in states:
        seen = snapshot(copy)
        outcomes.append(seen["episode_ends"] == before["episode_ends"])
        _check_reopens_as(copy, before if outcomes[-1] else after)
    assert outcomes[0] and not outcomes[-1] and outcomes == sorted(outcomes, reverse=True)


def test_add_key_crashing_at_any_write_leaves_no_trace(dataset, tmp_path, monkeypatch):
    before = snapshot(dataset)
    states = _record_every_intermediate_state(
        monkeypatch, dataset, tmp_path,
        lambda buffer: buffer.add_key("doubled", lambda ep: ep["state"] * 2, inputs=["state"],
                                      progress=False))
    for copy, _ in states:
        _check_reopens_as(copy, before)
    assert "doubled" in snapshot(dataset)["data"]


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from zarr.storage import LocalStore
    from dpolicy.data.replay_buffer import ReplayBuffer
    from dpolicy.data.synthetic import synthetic_pusht_episode

    path, flag = sys.argv[1], Path(sys.argv[3])
    pause_key, pause_occurrence = sys.argv[2].split("#")
    seen = 0
    original = LocalStore._set

    async def pausing_set(self, key, value, exclusive=False):
        global seen
        if key == pause_key:
            seen += 1
            if seen == int(pause_occurrence):
                flag.write_text(key)
                time.sleep(120)  # the test kills us here, in the middle of the append
        await original(self, key, value, exclusive)

    LocalStore._set = pausing_set
    buffer = ReplayBuffer.open(path, mode="a")
    buffer.append_episode(synthetic_pusht_episode(buffer.n_steps, 40, image_size=8), attrs={"seed": 4})
""")


@pytest.mark.parametrize("pause_before", [
    "data/img/0.0.0.0#1",     # image rows not written yet, other arrays already grown
    "meta/episode_ends/0#1",  # episode_ends grown to 4 entries, the new end not yet written
    "meta/.zgroup#2",         # everything written, metadata updated, the commit not yet done
])
def test_append_killed_with_sigkill_leaves_the_dataset_as_before(dataset, tmp_path, pause_before):
    before = snapshot(dataset)
    flag = tmp_path / "paused"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(dataset), pause_before, str(flag)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert writer.poll() is None, writer.stdout.read().decode()
            assert time.monotonic() < deadline, "the writer never reached the pause point"
            time.sleep(0.02)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    with pytest.warns(UserWarning, match="rolling back a write that did not finish"):
        ReplayBuffer.open(dataset, mode="a").close()
    _check_reopens_as(dataset, before)
