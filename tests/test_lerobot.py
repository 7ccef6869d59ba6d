"""`dpolicy data import-lerobot | export-lerobot`: LeRobotDataset v3.0 folders to and from zarr.

lerobot itself cannot be installed beside this machine's torch (lerobot 0.4.4 pins torch<2.11 and
pulls torchvision and torchcodec), so the exported folders are checked against the v3.0 layout that
lerobot's documentation and its dataset code describe (see dpolicy/data/lerobot.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpolicy.cli import main
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer

av = pytest.importorskip("av")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from dpolicy.data.lerobot import export_lerobot, import_lerobot  # noqa: E402 (after the skips)

REPO_ROOT = Path(__file__).resolve().parent.parent
FPS = 10
LENGTHS = [12, 17, 9]
LOWDIM = ("action", "state", "keypoint", "reward", "flag")
#: Per-frame PSNR the smooth synthetic frames must keep through yuv420p video: h264 at crf 18 (and
#: av1 at lerobot's crf 30) keep them above 39 dB; a frame off by one scores about 20 dB (checked
#: below), so the bound separates codec loss from a wrong frame.
SYNTHETIC_MIN_PSNR = 35.0
#: Per-frame PSNR of the human Push-T frames: their sharp coloured edges lose chroma detail to
#: yuv420p whatever the bit rate (~39 dB at crf 10); the full set measured min 36.4 dB, mean 38.6 dB.
PUSHT_MIN_PSNR, PUSHT_MEAN_PSNR = 34.0, 36.0
DEFAULT_COLUMNS = {"timestamp": pa.float32(), "frame_index": pa.int64(), "episode_index": pa.int64(),
                   "index": pa.int64(), "task_index": pa.int64()}


def _smooth_frames(first: int, length: int, size: int = 32) -> np.ndarray:
    """RGB frames of slowly varying sinusoids whose phase moves by half a radian per frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    t = np.arange(first, first + length)[:, None, None]
    base = 128 + 70 * np.sin(xx / 5 + 0.5 * t) * np.cos(yy / 6 - 0.3 * t)
    return np.clip(base[..., None] + np.array([0.0, 25.0, -25.0]), 0, 255).astype(np.uint8)


def _write_synthetic(path: Path, lengths=LENGTHS, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.create(path, attrs={"fps": FPS})
    first = 0
    for length in lengths:
        buffer.append_episode({
            "action": rng.normal(size=(length, 2)).astype(np.float32),
            "state": rng.normal(size=(length, 5)).astype(np.float32),
            "keypoint": rng.normal(size=(length, 9, 2)).astype(np.float32),
            "reward": rng.normal(size=length),  # float64, one value per step
            "flag": rng.integers(0, 2, size=(length, 1)).astype(bool),
            "img": _smooth_frames(first, length, size),
        })
        first += length
    buffer.close()


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frame stacks."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))


def _assert_same_arrays(original: ReplayBuffer, restored: ReplayBuffer, keys) -> None:
    for key in keys:
        a, b = original[key][:], restored[key][:]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), key
        assert a.tobytes() == b.tobytes(), f"{key} differs"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(zarr dataset, its LeRobot export)."""
    root = tmp_path_factory.mktemp("lerobot")
    source = root / "synthetic.zarr"
    _write_synthetic(source)
    out = root / "synthetic_lerobot"
    export_lerobot(source, out, task="move the block", progress=False)
    return source, out


def test_round_trip_keeps_low_dim_arrays_bit_exact_and_video_close(exported, tmp_path):
    source, folder = exported
    back = tmp_path / "back.zarr"
    summary = import_lerobot(folder, back, progress=False)
    assert summary.n_episodes == len(LENGTHS) and summary.tasks == ["move the block"]
    with ReplayBuffer.open(source) as original, ReplayBuffer.open(back) as restored:
        assert restored.keys() == original.keys()
        np.testing.assert_array_equal(restored.episode_ends, original.episode_ends)
        _assert_same_arrays(original, restored, LOWDIM)
        frames, decoded = original["img"][:], restored["img"][:]
        assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
        psnr = _psnr(frames, decoded)
        assert psnr.min() >= SYNTHETIC_MIN_PSNR, psnr
        assert _psnr(frames[1:], decoded[:-1]).max() < SYNTHETIC_MIN_PSNR  # a shifted frame would fail
        assert restored.attrs["fps"] == FPS and restored.attrs["lerobot"]["tasks"] == ["move the block"]


def test_exported_folder_follows_the_v3_layout(exported):
    _, folder = exported
    info = json.loads((folder / "meta/info.json").read_text())
    total = sum(LENGTHS)
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (len(LENGTHS), total, 1)
    assert info["splits"] == {"train": f"0:{len(LENGTHS)}"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert {"chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "robot_type"} <= set(info)
    features = info["features"]
    expected = {"action": ("float32", [2]), "observation.state": ("float32", [5]),
                "observation.keypoint": ("float32", [9, 2]), "observation.reward": ("float64", [1]),
                "observation.flag": ("bool", [1]), "observation.images.img": ("video", [32, 32, 3]),
                **{name: (str(kind), [1]) for name, kind in
                   {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                    "task_index": "int64"}.items()}}
    assert {name: (f["dtype"], f["shape"]) for name, f in features.items()} == expected
    assert all("names" in f for f in features.values())
    video = features["observation.images.img"]
    assert video["names"] == ["height", "width", "channels"]
    assert video["info"]["video.codec"] in ("h264", "av1") and video["info"]["video.pix_fmt"] == "yuv420p"
    assert (video["info"]["video.height"], video["info"]["video.width"], video["info"]["video.fps"]) == (32, 32, FPS)

    data = pq.read_table(folder / "data/chunk-000/file-000.parquet")
    assert set(data.column_names) == {name for name, f in features.items() if f["dtype"] != "video"}
    for name, kind in DEFAULT_COLUMNS.items():
        assert data.schema.field(name).type == kind, name
    assert data.schema.field("action").type == pa.list_(pa.float32(), 2)
    assert data.schema.field("observation.keypoint").type == pa.list_(pa.list_(pa.float32()))
    assert data.schema.field("observation.reward").type == pa.float64()
    column = {name: data.column(name).to_numpy() for name in DEFAULT_COLUMNS}
    np.testing.assert_array_equal(column["index"], np.arange(total))
    np.testing.assert_array_equal(column["episode_index"], np.repeat(np.arange(len(LENGTHS)), LENGTHS))
    np.testing.assert_array_equal(column["frame_index"], np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_array_equal(column["timestamp"], (column["frame_index"] / FPS).astype(np.float32))
    np.testing.assert_array_equal(column["task_index"], 0)

    episodes = pq.read_table(folder / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    key = "videos/observation.images.img"
    for name in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                 "dataset_to_index", f"{key}/chunk_index", f"{key}/file_index", f"{key}/from_timestamp",
                 f"{key}/to_timestamp", "meta/episodes/chunk_index", "meta/episodes/file_index"):
        assert name in episodes, name
    for name in expected:
        for stat in ("min", "max", "mean", "std", "count"):
            assert f"stats/{name}/{stat}" in episodes, (name, stat)
    assert episodes["episode_index"] == list(range(len(LENGTHS))) and episodes["length"] == LENGTHS
    assert episodes["tasks"] == [["move the block"]] * len(LENGTHS)
    ends = np.cumsum(LENGTHS)
    assert episodes["dataset_from_index"] == [0, *ends[:-1]] and episodes["dataset_to_index"] == list(ends)
    np.testing.assert_allclose(episodes[f"{key}/from_timestamp"], np.array([0, *ends[:-1]]) / FPS, atol=1e-9)
    np.testing.assert_allclose(episodes[f"{key}/to_timestamp"], ends / FPS, atol=1e-9)

    with av.open(str(folder / "videos/observation.images.img/chunk-000/file-000.mp4")) as container:
        times = [frame.time for frame in container.decode(video=0)]
    assert len(times) == total
    np.testing.assert_allclose(times, np.arange(total) / FPS, atol=1e-4)  # lerobot's tolerance_s

    tasks = pq.read_table(folder / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["move the block"] and tasks.column("task_index").to_pylist() == [0]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    stats = json.loads((folder / "meta/stats.json").read_text())
    assert set(stats) == set(expected)
    for name, (dtype, shape) in expected.items():
        entry = stats[name]
        assert {"min", "max", "mean", "std", "count"} <= set(entry)
        assert entry["count"] == [total if dtype != "video" else sum(min(n, 100) for n in LENGTHS)]
        want = (3, 1, 1) if dtype == "video" else tuple(shape)
        assert np.array(entry["mean"]).shape == want, name
    state = data.column("observation.state").to_numpy(zero_copy_only=False)
    state = np.stack(state)
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(axis=0))
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(axis=0), rtol=1e-5)
    image = np.array(stats["observation.images.img"]["mean"])
    assert ((image >= 0) & (image <= 1)).all()


def _write_handmade_v3(folder: Path) -> dict[str, np.ndarray]:
    """A v3.0 folder written without the exporter: PNG image features, two data files, two tasks,
    a string feature; returns the arrays it holds."""
    import cv2

    rng = np.random.default_rng(1)
    lengths, total = [4, 6], 10
    cam = rng.integers(0, 256, size=(total, 8, 10, 3), dtype=np.uint8)
    state = rng.normal(size=(total, 3)).astype(np.float32)
    action = rng.normal(size=(total, 2))
    features = {"observation.images.cam": {"dtype": "image", "shape": [8, 10, 3],
                                           "names": ["height", "width", "channel"]},
                "observation.state": {"dtype": "float32", "shape": [3], "names": None},
                "action": {"dtype": "float64", "shape": [2], "names": None},
                "language": {"dtype": "string", "shape": [1], "names": None},
                **{name: {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
                   for name in DEFAULT_COLUMNS}}
    info = {"codebase_version": "v3.0", "fps": 5, "features": features, "robot_type": "handmade",
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None}
    (folder / "meta/episodes/chunk-000").mkdir(parents=True)
    (folder / "data/chunk-000").mkdir(parents=True)
    (folder / "meta/info.json").write_text(json.dumps(info))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    start = 0
    for episode, length in enumerate(lengths):
        rows = slice(start, start + length)
        pngs = [{"bytes": cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes(), "path": None}
                for image in cam[rows]]
        frame_index = np.arange(length)
        table = pa.table({"observation.images.cam": pa.array(pngs, image_type),
                          "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state[rows].ravel()), 3),
                          "action": pa.array(action[rows].tolist(), pa.list_(pa.float64())),
                          "language": pa.array(["go"] * length),
                          "timestamp": pa.array((frame_index / 5).astype(np.float32)),
                          "frame_index": pa.array(frame_index), "episode_index": pa.array([episode] * length),
                          "index": pa.array(np.arange(start, start + length)),
                          "task_index": pa.array([episode] * length)})
        pq.write_table(table, folder / f"data/chunk-000/file-{episode:03d}.parquet")
        start += length
    pq.write_table(pa.table({"episode_index": [0, 1], "tasks": [["pick"], ["place"]], "length": lengths,
                             "data/chunk_index": [0, 0], "data/file_index": [0, 1], "dataset_from_index": [0, 4],
                             "dataset_to_index": [4, 10]}), folder / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1], "task": ["pick", "place"]}), folder / "meta/tasks.parquet")
    return {"cam": cam, "state": state, "action": action}


def test_import_of_a_handmade_folder_with_image_features(tmp_path):
    folder = tmp_path / "handmade"
    expected = _write_handmade_v3(folder)
    summary = import_lerobot(folder, tmp_path / "out.zarr", progress=False)
    assert summary.skipped == {"language": "dtype 'string' is not numeric"}
    with ReplayBuffer.open(tmp_path / "out.zarr") as buffer:
        assert sorted(buffer.keys()) == ["action", "cam", "state"]
        np.testing.assert_array_equal(buffer.episode_ends, [4, 10])
        for key, values in expected.items():
            assert buffer[key].dtype == values.dtype
            np.testing.assert_array_equal(buffer[key][:], values)  # PNG is lossless
        lerobot = buffer.attrs["lerobot"]
        assert buffer.attrs["fps"] == 5 and lerobot["tasks"] == ["pick", "place"]
        assert lerobot["episode_tasks"] == [["pick"], ["place"]] and lerobot["robot_type"] == "handmade"
        assert lerobot["features"] == {"cam": "observation.images.cam", "state": "observation.state",
                                       "action": "action"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "dpolicy", "data", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def _drop_last_video_frame(path: Path) -> None:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "libsvtav1", rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, image in enumerate(frames[:-1]):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _without_column(path: Path, column: str) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([column]), path)


BAD_INPUTS = {
    # case: (damage to the folder, file the error names relative to it, words it must contain)
    "no info.json": (lambda d: shutil.rmtree(d / "meta"), "", "no meta/info.json"),
    "v2.1": (lambda d: (d / "meta/info.json").write_text(json.dumps(
        {**json.loads((d / "meta/info.json").read_text()), "codebase_version": "v2.1"})), "meta/info.json",
        "only LeRobotDataset v3.0 is supported"),
    "missing video": (lambda d: (d / "videos/observation.images.img/chunk-000/file-000.mp4").unlink(),
                      "videos/observation.images.img/chunk-000/file-000.mp4", "no such file"),
    "short video": (lambda d: _drop_last_video_frame(d / "videos/observation.images.img/chunk-000/file-000.mp4"),
                    "videos/observation.images.img/chunk-000/file-000.mp4",
                    f"{LENGTHS[-1] - 1} frames between"),
    "data column": (lambda d: _without_column(d / "data/chunk-000/file-000.parquet", "observation.state"),
                    "data/chunk-000/file-000.parquet", "missing column observation.state"),
    "episodes column": (lambda d: _without_column(d / "meta/episodes/chunk-000/file-000.parquet",
                                                  "dataset_to_index"),
                        "meta/episodes/chunk-000/file-000.parquet", "missing column dataset_to_index"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(exported, tmp_path, case):
    damage, named, words = BAD_INPUTS[case]
    folder = tmp_path / "broken"
    shutil.copytree(exported[1], folder)
    damage(folder)
    result = _cli("import-lerobot", "broken", "out.zarr", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(Path("broken") / named).rstrip("/") in lines[0] and words in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no out.zarr, no partial folder


def test_existing_output_is_refused_unless_overwrite(exported, tmp_path, capsys):
    source, folder = exported
    out = tmp_path / "out.zarr"
    _write_synthetic(out, lengths=[3])
    assert main(["data", "import-lerobot", str(folder), str(out)]) == 1
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main(["data", "import-lerobot", str(folder), str(out), "--overwrite"]) == 0
    assert "3 episodes" in capsys.readouterr().out
    with ReplayBuffer.open(out) as buffer:
        assert buffer.n_episodes == len(LENGTHS)
    target = tmp_path / "folder"
    assert main(["data", "export-lerobot", str(source), str(target), "--fps", "5", "--task", "t"]) == 0
    assert json.loads((target / "meta/info.json").read_text())["fps"] == 5
    assert main(["data", "export-lerobot", str(source), str(out), "--overwrite"]) == 1  # a zarr store, kept
    assert "not a LeRobot dataset folder" in capsys.readouterr().err
    assert ReplayBuffer.open(out).n_episodes == len(LENGTHS)


def test_missing_libraries_give_the_install_hint(monkeypatch):
    from dpolicy.data import lerobot
    from dpolicy.errors import UserError

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(UserError, match=r'pip install "dpolicy\[lerobot\]"'):
        lerobot.import_lerobot("anywhere", "out.zarr")


def test_killed_import_leaves_nothing_at_the_output(tmp_path):
    source, n_episodes = tmp_path / "many.zarr", 40
    buffer = ReplayBuffer.create(source)
    for episode in range(n_episodes):
        buffer.append_episode({"action": np.full((5, 2), episode, np.float32),
                               "img": _smooth_frames(5 * episode, 5, size=16)})
    buffer.close()
    folder = tmp_path / "many_lerobot"
    export_lerobot(source, folder, progress=False)
    out = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "dpolicy", "data", "import-lerobot", str(folder), str(out)],
                               env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    written = 0
    try:
        deadline = time.monotonic() + 60
        while written < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
            for partial in tmp_path.glob(".out.zarr.partial-*"):
                try:
                    written = ReplayBuffer.open(partial).n_episodes
                except DatasetError:
                    written = 0  # between two files of a write
        assert process.poll() is None, f"the import ended before it could be killed: {process.stderr.read()}"
        assert written >= 2
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    assert list(tmp_path.glob(".out.zarr.partial-*"))  # what the killed run left, beside the output
    import_lerobot(folder, out, progress=False)  # a new run removes it and completes
    assert not list(tmp_path.glob(".out.zarr.partial-*"))
    with ReplayBuffer.open(out) as restored, ReplayBuffer.open(source) as original:
        assert restored.n_episodes == n_episodes
        _assert_same_arrays(original, restored, ["action"])


@pytest.mark.human_data
def test_human_pusht_round_trip(human_dataset_path, tmp_path):
    subset = tmp_path / "human3.zarr"
    with ReplayBuffer.open(human_dataset_path) as human:
        copy = ReplayBuffer.create(subset)
        for episode in range(3):
            copy.append_episode(human.get_episode(episode))
        copy.close()
    export_lerobot(subset, tmp_path / "human_lerobot", progress=False)
    import_lerobot(tmp_path / "human_lerobot", tmp_path / "back.zarr", progress=False)
    with ReplayBuffer.open(subset) as original, ReplayBuffer.open(tmp_path / "back.zarr") as restored:
        np.testing.assert_array_equal(restored.episode_ends, original.episode_ends)
        _assert_same_arrays(original, restored, ["state", "keypoint", "action", "n_contacts"])
        psnr = _psnr(original.load("img", dtype=np.uint8), restored["img"][:])
        assert psnr.min() >= PUSHT_MIN_PSNR and psnr.mean() >= PUSHT_MEAN_PSNR, (psnr.min(), psnr.mean())
