"""Damaged datasets: a truncated, missing or relabelled chunk is a DatasetError naming the array and
the chunk -- found when the dataset is opened, before any codec sees the bytes -- in the dataset
factories, and one `error:` line with exit status 1 on the command line (never a segfault)."""

import json
import re
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from dpolicy.data import replay_buffer
from dpolicy.data.datasets import PUSHT_LOWDIM_OBS, WindowDataset, make_pusht_lowdim_dataset
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer, verify
from dpolicy.errors import UserError
from dpolicy.paths import EMBEDDED_PUSHT

LENGTHS = [20, 30, 25]  # 75 steps
#: With 256-byte chunks: data/action 32 rows a chunk (3 chunks), data/state 12 (7), data/keypoint 3 (25),
#: data/img 1 (75); meta/episode_ends one chunk.
SMALL_CHUNK_BYTES = 256


def make_episode(rng, n):
    return {
        "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
        "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
        "img": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
    }


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A small format-2 dataset written by the package, with several chunks per array."""
    path = tmp_path_factory.mktemp("integrity") / "clean.zarr"
    rng = np.random.default_rng(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay_buffer, "CHUNK_BYTES", SMALL_CHUNK_BYTES)
        with ReplayBuffer.create(path, attrs={"source": "integrity test"}) as buffer:
            for n in LENGTHS:
                buffer.append_episode(make_episode(rng, n))
    with ReplayBuffer.open(path) as buffer:
        assert buffer["action"].chunks == (32, 2) and buffer["state"].chunks == (12, 5)
    return path


@pytest.fixture
def copy_of(clean, tmp_path):
    def make(source=None):
        target = tmp_path / "damaged.zarr"
        shutil.copytree(source or clean, target)
        return target
    return make


# ---------------------------------------------------------------------------------- kinds of damage
def truncate(key, keep=0.5):
    def damage(path):
        file = path / key
        data = file.read_bytes()
        file.write_bytes(data[:int(len(data) * keep)])
    return damage


def delete(key):
    def damage(path):
        (path / key).unlink()
    return damage


def relabel(array, dtype):
    """Change the stored dtype in the array's metadata (format 2 ``.zarray`` "dtype", 3 ``zarr.json``
    "data_type"), leaving the chunks as they are."""
    def damage(path):
        for name, field in ((".zarray", "dtype"), ("zarr.json", "data_type")):
            file = path / array / name
            if file.exists():
                metadata = json.loads(file.read_text())
                assert field in metadata
                metadata[field] = dtype
                file.write_text(json.dumps(metadata))
                return
        raise AssertionError(f"no metadata file in {path / array}")
    return damage


# (damage, regex of the DatasetError message after the dataset path)
DAMAGE = {
    "truncated chunk": (truncate("data/action/1.0"),
                        r"data/action: chunk 1\.0 \(file data/action/1\.0\) is truncated: \d+ bytes, its Blosc "
                        r"header says \d+"),
    "chunk cut to 10 bytes": (truncate("data/keypoint/7.0.0", keep=0.03),
                              r"data/keypoint: chunk 7\.0\.0 \(file data/keypoint/7\.0\.0\) is truncated: \d+ "
                              r"bytes, shorter than the 16-byte Blosc header"),
    "empty chunk file": (truncate("data/img/74.0.0.0", keep=0),
                         r"data/img: chunk 74\.0\.0\.0 \(file data/img/74\.0\.0\.0\) is truncated: 0 bytes"),
    "deleted chunk": (delete("data/state/2.0"),
                      r"data/state: chunk 2\.0 is missing \(no file data/state/2\.0\); the array's shape "
                      r"\(75, 5\) in chunks of \(12, 5\) declares it, and zarr would read it as zeros"),
    "deleted episode_ends chunk": (delete("meta/episode_ends/0"),
                                   r"meta/episode_ends: chunk 0 is missing \(no file meta/episode_ends/0\)"),
    "dtype relabelled to int": (relabel("data/action", "<i4"),
                                r"data/action has shape \(75, 2\) and dtype int32; expected a floating-point "
                                r'dtype \(float16/32/64\) \(see "dtype" and "shape" in data/action/\.zarray\)'),
    "dtype relabelled to float64": (relabel("data/keypoint", "<f8"),
                                    r"data/keypoint: chunk 0\.0\.0 \(file data/keypoint/0\.0\.0\) decompresses to "
                                    r"216 bytes by its Blosc header; expected 432 for a chunk \(3, 9, 2\) of "
                                    r'float64 \(were "dtype" or "chunks" in data/keypoint/\.zarray changed\?\)'),
    "image dtype relabelled to int8": (relabel("data/img", "|i1"),
                                       r"data/img has shape \(75, 8, 8, 3\) and dtype int8; expected uint8 or a "
                                       r"floating-point dtype"),
    "episode_ends relabelled to float": (relabel("meta/episode_ends", "<f8"),
                                         r"meta/episode_ends has shape \(3,\) and dtype float64; expected a 1-D "
                                         r"integer array"),
    "episode_ends relabelled to int32": (relabel("meta/episode_ends", "<i4"),
                                         r"meta/episode_ends: chunk 0 \(file meta/episode_ends/0\) decompresses to "
                                         r"32768 bytes by its Blosc header; expected 16384"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_found_on_open_naming_the_array_and_chunk(copy_of, kind):
    damage, message = DAMAGE[kind]
    path = copy_of()
    damage(path)
    with pytest.raises(DatasetError, match=message) as err:
        ReplayBuffer.open(path)
    assert str(err.value).startswith(f"{path}: ")
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    # training reads through the same checks
    with pytest.raises(DatasetError, match=message):
        make_pusht_lowdim_dataset(path, val_ratio=0.0)
    with pytest.raises(DatasetError, match=message):
        WindowDataset(path, PUSHT_LOWDIM_OBS)
    # verify lists it among its problems instead of raising
    report = verify(path)
    assert not report.ok
    assert any(re.search(message, problem) for problem in report.all_problems), report.all_problems


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dpolicy", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("kind", ["truncated chunk", "deleted chunk", "dtype relabelled to int",
                                  "dtype relabelled to float64"])
@pytest.mark.parametrize("command", ["info", "verify"])
def test_command_line_reports_damage_in_one_error_line(copy_of, kind, command):
    damage, message = DAMAGE[kind]
    path = copy_of()
    damage(path)
    result = run_cli("data", command, path)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # not 139 (SIGSEGV), not 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert re.search(message, errors[0]), errors[0]
    assert errors[0].startswith(f"error: {path}: ")
    if command == "verify":  # the report is printed too, with the problem listed
        assert re.search(message, result.stdout), result.stdout


def test_clean_dataset_opens_verifies_and_trains(clean):
    report = verify(clean)
    assert report.ok, report.all_problems
    assert (report.n_episodes, report.n_steps) == (3, 75)
    chunks = {name: array.chunks for name, array in report.arrays.items()}
    assert chunks == {"meta/episode_ends": 1, "data/action": 3, "data/img": 75, "data/keypoint": 25,
                      "data/state": 7}
    assert all(array.decoded_chunks == array.chunks for array in report.arrays.values())
    assert report.arrays["data/action"].decoded_bytes == 75 * 2 * 4
    stored = sum(f.stat().st_size for f in (clean / "data" / "action").iterdir() if not f.name.startswith("."))
    assert report.arrays["data/action"].stored_bytes == stored
    result = run_cli("data", "verify", clean)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "ok: 111 chunks checked, 111 decoded" in result.stdout
    assert len(make_pusht_lowdim_dataset(clean, val_ratio=0.0)) > 0


def test_verify_lists_every_problem_and_open_names_the_first(copy_of):
    path = copy_of()
    truncate("data/action/2.0")(path)
    delete("data/state/0.0")(path)
    delete("data/state/6.0")(path)
    with pytest.raises(DatasetError, match=r"data/action: chunk 2\.0 .*`dpolicy data verify .*` lists every"):
        ReplayBuffer.open(path)
    report = verify(path)
    file = path / "data/action/2.0"
    assert report.arrays["data/action"].problems == [
        f"data/action: chunk 2.0 (file data/action/2.0) is truncated: {file.stat().st_size} bytes, its Blosc "
        f"header says {int.from_bytes(file.read_bytes()[12:16], 'little')}"]
    assert [p.split(" is ")[0] for p in report.arrays["data/state"].problems] == [
        "data/state: chunk 0.0", "data/state: chunk 6.0"]
    assert report.arrays["data/keypoint"].problems == []
    # the chunks that are fine were all decoded
    assert report.arrays["data/state"].decoded_chunks == 5
    result = run_cli("data", "verify", path)
    assert result.returncode == 1
    assert "3 problems" in result.stderr and result.stdout.count("\n  - ") == 3



def test_verify_caps_the_problems_listed_per_array(copy_of):
    path = copy_of()
    for i in range(75):
        delete(f"data/img/{i}.0.0.0")(path)
    report = verify(path)
    img = report.arrays["data/img"]
    assert len(img.problems) == replay_buffer.VERIFY_MAX_PROBLEMS and img.decoded_chunks == 0
    assert img.n_problems == 75 and not img.stopped
    assert report.all_problems[-1] == f"data/img: {75 - replay_buffer.VERIFY_MAX_PROBLEMS} more problems, not listed"
    assert report.arrays["data/action"].decoded_chunks == 3  # the other arrays are still checked


def test_corrupt_chunk_is_decoded_once_then_refused(tmp_path, monkeypatch):
    """A chunk whose header is plausible but whose payload is garbage fails in the codec once; the
    failure is a DatasetError naming the chunk, and neither this buffer nor a reopened one hands
    that file to the codec again."""
    path = tmp_path / "smooth.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay_buffer, "CHUNK_BYTES", SMALL_CHUNK_BYTES)
        with ReplayBuffer.create(path) as buffer:
            first = 0
            for n in LENGTHS:  # smooth values: Blosc compresses them (random ones it would store as is)
                t = np.arange(first, first + n, dtype=np.float32)[:, None]
                buffer.append_episode({"action": t + np.float32(0.5) * np.arange(2, dtype=np.float32),
                                       "state": t + np.arange(5, dtype=np.float32),
                                       "keypoint": (t[:, :, None] + np.zeros((1, 9, 2))).astype(np.float32)})
                first += n
    file = path / "data/state/1.0"
    data = file.read_bytes()
    assert not data[2] & 0x02  # compressed, not a plain copy
    file.write_bytes(data[:20] + bytes(len(data) - 20))  # keep the Blosc header, zero the payload
    message = r"data/state: chunk 1\.0 \(file data/state/1\.0\) cannot be decoded: RuntimeError: error during blosc"
    reads = []
    original = zarr.Array.__getitem__

    def spy(self, selection):
        reads.append((self.path, selection))
        return original(self, selection)

    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    buffer = ReplayBuffer.open(path)  # the header sizes are right: opening succeeds
    with pytest.raises(DatasetError, match=message):
        buffer.load("state")
    state_reads = [s for p, s in reads if p == "data/state"]
    assert state_reads == [(slice(0, 12),), (slice(12, 24),)]  # one chunk per read
    reads.clear()
    for attempt in (lambda: buffer.load("state"), lambda: buffer.get_episode(1),
                    lambda: buffer.check_values()):
        with pytest.raises(DatasetError, match=message):
            attempt()
    assert (slice(12, 24),) not in [s for p, s in reads if p == "data/state"]
    np.testing.assert_array_equal(buffer.get_episode(2)["action"], buffer["action"][50:75])  # others fine
    buffer.close()
    reads.clear()
    with pytest.raises(DatasetError, match=message):  # known bad in this process: refused at open
        ReplayBuffer.open(path)
    with pytest.raises(DatasetError, match=message):
        make_pusht_lowdim_dataset(path, val_ratio=0.0)
    assert not [s for p, s in reads if p == "data/state"]
    # in a fresh process: `info` marks the array INVALID, `verify` fails, both without a crash
    info = run_cli("data", "info", path)
    assert info.returncode == 1 and "Traceback" not in info.stderr
    assert re.search(r"state .*INVALID: .*" + message, info.stdout)
    checked = run_cli("data", "verify", path)
    assert checked.returncode == 1 and re.search(message, checked.stderr.splitlines()[-1])


def test_zip_stores_are_checked_too(clean, tmp_path):
    def zipped(source, target):
        with zipfile.ZipFile(target, "w") as archive:
            for file in sorted(source.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(source).as_posix())
        return target

    good = zipped(clean, tmp_path / "good.zarr.zip")
    with ReplayBuffer.open(good) as buffer:
        assert buffer.n_steps == 75
    assert verify(good).ok
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(clean, damaged)
    delete("data/keypoint/24.0.0")(damaged)
    truncate("data/action/0.0")(damaged)
    archive = zipped(damaged, tmp_path / "damaged.zarr.zip")
    with pytest.raises(DatasetError, match=r"data/action: chunk 0\.0 \(file data/action/0\.0\) is truncated"):
        ReplayBuffer.open(archive)
    problems = verify(archive).all_problems
    assert any(p.startswith("data/keypoint: chunk 24.0.0 is missing") for p in problems), problems
    broken = tmp_path / "broken.zarr.zip"
    broken.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="not a readable zip file"):
        ReplayBuffer.open(broken)


# ---------------------------------------------------------------------------------- zarr format 3
@pytest.fixture
def v3_dataset(tmp_path):
    """A format-3 dataset as other tools write it: Blosc-compressed action, Zstandard (zarr's default)
    compressed state, '/'-separated chunk keys."""
    path = tmp_path / "v3.zarr"
    rng = np.random.default_rng(1)
    root = zarr.open_group(LocalStore(path), mode="w", zarr_format=3)
    data = root.create_group("data")
    data.create_array("action", data=rng.uniform(0, 1, (75, 2)).astype(np.float32), chunks=(32, 2),
                      compressors=BloscCodec(cname="zstd", clevel=3))
    data.create_array("state", data=rng.uniform(0, 1, (75, 5)).astype(np.float32), chunks=(12, 5))
    root.create_group("meta").create_array("episode_ends", data=np.cumsum(LENGTHS).astype(np.int64))
    with ReplayBuffer.open(path) as buffer:
        assert buffer.zarr_format == 3 and buffer.n_steps == 75
    assert verify(path).ok
    return path


@pytest.mark.parametrize("damage, message", [
    (truncate("data/action/c/1/0"),
     r"data/action: chunk 1\.0 \(file data/action/c/1/0\) is truncated: \d+ bytes, its Blosc header says"),
    (delete("data/state/c/3/0"), r"data/state: chunk 3\.0 is missing \(no file data/state/c/3/0\)"),
    (relabel("data/action", "int32"),
     r'data/action has shape \(75, 2\) and dtype int32; expected a floating-point .*"data_type" .*'
     r"data/action/zarr\.json"),
    (relabel("data/state", "float64"),
     r"data/state: chunk 0\.0 \(file data/state/c/0/0\) decompresses to 240 bytes by its Zstd header; "
     r'expected 480 for a chunk \(12, 5\) of float64 \(were "data_type" or "chunk_grid" in data/state/zarr\.json'),
], ids=["truncated chunk", "deleted chunk", "data_type relabelled to int", "data_type relabelled to float64"])
def test_format_3_damage_is_found_on_open(v3_dataset, damage, message):
    damage(v3_dataset)
    with pytest.raises(DatasetError, match=message):
        ReplayBuffer.open(v3_dataset)
    assert any(re.search(message, p) for p in verify(v3_dataset).all_problems)


# ---------------------------------------------------------------------------------- not damage
def test_chunks_of_zeros_are_stored_so_they_are_not_taken_for_missing(tmp_path):
    """zarr leaves out chunks holding only the fill value unless told otherwise; the package stores
    every chunk, so a dataset with all-zero episodes (e.g. n_contacts) opens."""
    path = tmp_path / "zeros.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay_buffer, "CHUNK_BYTES", 64)
        with ReplayBuffer.create(path) as buffer:
            buffer.append_episode({"action": np.zeros((40, 2), np.float32),
                                   "n_contacts": np.zeros((40, 1), np.int64)})
            buffer.add_key("zeros", lambda episode: np.zeros((len(episode["action"]), 3), np.float32),
                           progress=False)
    assert sorted(f.name for f in (path / "data" / "n_contacts").iterdir() if not f.name.startswith(".")) == [
        "0.0", "1.0", "2.0", "3.0", "4.0"]
    with ReplayBuffer.open(path, mode="a") as buffer:
        buffer.append_episode({"action": np.zeros((5, 2), np.float32), "n_contacts": np.zeros((5, 1), np.int64),
                               "zeros": np.zeros((5, 3), np.float32)})
    with ReplayBuffer.open(path) as buffer:
        np.testing.assert_array_equal(buffer.load("n_contacts"), np.zeros((45, 1)))
    assert verify(path).ok


@pytest.mark.parametrize("key, dtype, accepted", [
    ("img", np.float32, True),  # the human dataset stores its images as float32
    ("img", np.int16, False),
    ("camera_rgb", np.uint8, True),
    ("camera_rgb", np.int32, False),
    ("state", np.float64, True),
    ("state", np.int64, False),
    ("n_contacts", np.int32, True),  # no expectation: any number
    ("flag", np.bool_, True),
])
def test_expected_dtypes(tmp_path, key, dtype, accepted):
    path = tmp_path / "kinds.zarr"
    with ReplayBuffer.create(path) as buffer:
        buffer.append_episode({key: np.ones((4, 3), dtype)})
    if accepted:
        ReplayBuffer.open(path).close()
    else:
        with pytest.raises(DatasetError, match=rf"data/{key} has shape \(4, 3\) and dtype {np.dtype(dtype)}; "
                                               "expected"):
            ReplayBuffer.open(path)


def test_unreadable_metadata_is_named(copy_of):
    path = copy_of()
    (path / "data" / "state" / ".zarray").write_text('{"zarr_format": 2, "shape": [75')
    with pytest.raises(DatasetError, match=r"cannot read the metadata of data/state \(data/state/\.zarray"):
        ReplayBuffer.open(path)
    assert any("data/state" in p for p in verify(path).all_problems)


def test_open_time_checks_are_fast(clean):
    """Opening lists and stats chunk files; it decodes only meta/episode_ends."""
    for path in (clean, EMBEDDED_PUSHT):
        start = time.perf_counter()
        ReplayBuffer.open(path).close()
        assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------- the human dataset
@pytest.mark.human_data
def test_human_dataset_opens_fast_and_verifies_clean(human_dataset_path):
    start = time.perf_counter()
    with ReplayBuffer.open(human_dataset_path) as buffer:
        assert buffer.n_steps == 25650 and buffer.zarr_format == 2
    assert time.perf_counter() - start < 1.0
    report = verify(human_dataset_path)
    assert report.ok, report.all_problems
    assert report.n_episodes == 206 and report.n_steps == 25650
    assert {name: array.chunks for name, array in report.arrays.items()} == {
        "meta/episode_ends": 1, **{f"data/{key}": 160 for key in ("action", "img", "keypoint", "n_contacts",
                                                                     "state")}}
    assert report.arrays["data/img"].decoded_bytes == 25650 * 96 * 96 * 3 * 4
