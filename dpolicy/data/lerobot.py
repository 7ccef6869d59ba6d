"""LeRobotDataset v3.0 folders to and from the package's zarr layout.

The v3.0 layout, as LeRobot's documentation (``lerobot-dataset-v3``) describes it and lerobot 0.4.4
(``lerobot/datasets``) writes and reads it:

- ``meta/info.json``: ``codebase_version`` ("v3.0"), ``fps``, ``features`` (per key: ``dtype``,
  ``shape``, ``names``, and ``info`` for videos), totals, and the path templates ``data_path``
  (``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet``) and ``video_path``
  (``videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4``);
- ``data/chunk-XXX/file-XXX.parquet``: one row per frame, many episodes per file, with the
  columns ``index`` (global frame index, the row's position over all files in order),
  ``episode_index``, ``frame_index``, ``timestamp`` (``frame_index / fps``, float32),
  ``task_index`` and one column per non-video feature (a scalar for shape ``[1]``, a fixed-size
  list for 1-D shapes, nested lists for more dimensions, a ``{bytes, path}`` struct for
  ``image`` features);
- ``meta/episodes/chunk-XXX/file-XXX.parquet``: one row per episode: ``episode_index``,
  ``tasks``, ``length``, ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``,
  ``dataset_to_index`` (rows ``[from, to)`` of ``index``), per video key
  ``videos/<key>/chunk_index``, ``file_index``, ``from_timestamp`` and ``to_timestamp`` (the
  episode's span in that mp4, which holds several episodes one after the other), the
  episode's ``stats/<feature>/<stat>`` and ``meta/episodes/chunk_index``/``file_index``;
- ``meta/tasks.parquet``: the task strings (pandas index named ``task``) and ``task_index``;
- ``meta/stats.json``: per feature ``min``, ``max``, ``mean``, ``std``, ``count`` (and the
  quantiles ``q01`` ... ``q99`` lerobot 0.4 adds); image statistics are per channel, shape
  (3, 1, 1), on a [0, 1] scale, from a sample of frames.

A frame of a video feature is the frame of its mp4 shown at ``from_timestamp + timestamp``.

Names. ``action`` stays ``action``; ``observation.images.<cam>`` (video or image) becomes
``<cam>`` and ``observation.<name>`` becomes ``<name>``; other numeric features keep their name.
``timestamp``, ``frame_index``, ``episode_index``, ``index`` and ``task_index`` are bookkeeping:
the episode boundaries become ``meta/episode_ends``, and the fps, the task strings and the name
each array had go into the root attributes (``fps``, ``lerobot``). Export reverses the names
(the attributes' names first, for a dataset that came from LeRobot) and records each array's
zarr name, shape and dtype in the data files' parquet metadata (``dpolicy`` key, which LeRobot
ignores), so that a round trip gives the same arrays back.

Both directions write to a hidden sibling of the target (``.<name>.partial-<pid>``) and rename
it into place at the end: a process killed midway leaves no half-written dataset at the target
(a later run removes what it left).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from dpolicy.data.replay_buffer import ReplayBuffer, is_image_name
from dpolicy.errors import DatasetError, UsageError, UserError

__all__ = ["CODEBASE_VERSION", "ExportSummary", "ImportSummary", "available_codecs", "export_lerobot",
           "import_lerobot", "lerobot_to_zarr_name", "zarr_to_lerobot_name"]

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
#: lerobot's defaults: files per chunk folder, and the size at which a new data or video file starts.
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_IN_MB = 100
VIDEO_FILE_SIZE_IN_MB = 200
#: Per-frame columns every v3.0 data file has (lerobot's DEFAULT_FEATURES), with their dtypes.
BOOKKEEPING = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
               "task_index": "int64"}
#: Quantiles lerobot 0.4 records in stats (q01 ... q99).
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
#: Video encoders in order of preference for ``codec="auto"``: h264 (libx264) keeps more detail than
#: lerobot's default AV1 (libsvtav1) at these settings and every decoder reads it.
CODEC_PREFERENCE = ("libx264", "libsvtav1")
#: Constant-quality setting per encoder (lerobot uses crf 30 for libsvtav1).
DEFAULT_CRF = {"libx264": 18, "libsvtav1": 30}
MAX_CRF = {"libx264": 51, "libsvtav1": 63}
#: Keyframe interval: lerobot's choice, so that reading any frame decodes at most one other.
GOP = 2
#: Zarr keys the data layer needs as floating point (EXPECTED_DTYPES in replay_buffer.py).
FLOAT_KEYS = ("action", "state", "keypoint")
INSTALL_HINT = 'pip install "dpolicy[lerobot]"'
_PARQUET_META_KEY = b"dpolicy"


def _libraries():
    """``(pyarrow, pyarrow.parquet, av)``, or a one-line error saying how to install them."""
    try:
        import av
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise UserError(f"LeRobot import/export needs pyarrow and PyAV ({err.name or err} is missing): "
                        f"{INSTALL_HINT}") from None
    return pa, pq, av


# ---------------------------------------------------------------------------------- names
def lerobot_to_zarr_name(key: str) -> str:
    """``action`` -> ``action``, ``observation.images.<cam>`` -> ``<cam>``, ``observation.<x>`` -> ``<x>``."""
    for prefix in ("observation.images.", "observation."):
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix):]
    return key


def zarr_to_lerobot_name(key: str, video: bool) -> str:
    """The reverse of :func:`lerobot_to_zarr_name` for an array of this package."""
    if key == "action":
        return key
    return f"observation.images.{key}" if video else f"observation.{key}"


# ---------------------------------------------------------------------------------- atomic output
@contextmanager
def _atomic_dir(target: Path, overwrite: bool, is_kind: Callable[[Path], bool], kind: str) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``target`` to write into; rename it to ``target`` on success.

    An existing ``target`` is refused unless ``overwrite`` (and then only if it is a ``kind`` or an
    empty folder). On an exception the partial folder is removed; after a SIGKILL the next run does.
    """
    _check_target(target, overwrite, is_kind, kind)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(target)
    partial = parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        # Between these two renames a kill leaves the old dataset at `.old-<pid>`; _clean_leftovers
        # puts it back.
        old = parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, target)


def _check_target(target: Path, overwrite: bool, is_kind: Callable[[Path], bool], kind: str) -> None:
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise DatasetError(f"{target}: already exists (pass --overwrite to replace it)")
        if not target.is_dir() or target.is_symlink() or not (is_kind(target) or not any(target.iterdir())):
            raise DatasetError(f"{target}: refusing to overwrite something that is not a {kind}")


def _clean_leftovers(target: Path) -> None:
    """Remove the partial folders of killed runs for ``target``; restore a replaced one a kill orphaned."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(partial|old)-(\d+)$")
    for entry in sorted(target.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or _process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not target.exists():
            os.rename(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had this pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_lerobot_dir(path: Path) -> bool:
    return (path / INFO_PATH).is_file()


def _is_zarr_dir(path: Path) -> bool:
    return (path / ".zgroup").is_file() or (path / "zarr.json").is_file()


# ---------------------------------------------------------------------------------- import
@dataclass
class ImportSummary:
    """What :func:`import_lerobot` wrote."""

    path: Path
    n_episodes: int
    n_steps: int
    fps: float
    #: zarr key -> LeRobot feature it came from.
    keys: dict[str, str]
    tasks: list[str]
    #: LeRobot features not imported (non-numeric dtypes such as strings), with the reason.
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class _Feature:
    """A LeRobot feature as imported: its zarr key, kind ("video", "image", "array"), shape and dtype."""

    name: str
    key: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype | None = None
    channels: int = 3


def import_lerobot(source: str | Path, out: str | Path, *, overwrite: bool = False,
                   progress: bool = True) -> ImportSummary:
    """Convert the LeRobotDataset v3.0 folder ``source`` into a zarr dataset at ``out``.

    Videos and images become uint8 (N, H, W, C) arrays; numeric features keep their dtype (the
    data layer's float keys -- action, state, keypoint -- are stored as float32 when the feature is
    not floating point). Raises :class:`DatasetError` naming the file for input that is not a
    readable v3.0 dataset; ``out`` is then left as it was.
    """
    pa, pq, av = _libraries()
    source, out = Path(source), Path(out)
    _check_target(out, overwrite, _is_zarr_dir, "zarr store")
    info = _read_info(source)
    fps = info["fps"]
    features, skipped = _import_features(source, info)
    episodes = _read_episodes(source, info, features)
    tasks = _read_tasks(source)
    for episode in episodes:  # every file is checked before anything is written
        for feature in features:
            if feature.kind == "video":
                path = _video_file(source, info, episode, feature.name)
                if not path.is_file():
                    raise DatasetError(f"{path}: no such file (the video of {feature.name} for episode "
                                       f"{episode['episode_index']}, named by {_rel(source, episode['_meta_file'])})")
        path = _data_file(source, info, episode)
        if not path.is_file():
            raise DatasetError(f"{path}: no such file (the data of episode {episode['episode_index']}, named by "
                               f"{_rel(source, episode['_meta_file'])})")
    restored = _restored_layout(source, info, episodes, features)
    attrs = {"fps": _json_number(fps),
             "lerobot": {"source": str(source.resolve()), "codebase_version": info["codebase_version"],
                         "robot_type": info.get("robot_type"), "tasks": tasks,
                         "features": {f.key: f.name for f in features}}}
    episode_tasks = [list(map(str, e.get("tasks") or [])) for e in episodes]
    if len({tuple(t) for t in episode_tasks}) > 1:
        attrs["lerobot"]["episode_tasks"] = episode_tasks
    if skipped:
        attrs["lerobot"]["skipped"] = skipped
    from tqdm import tqdm

    reader = _Reader(source, info, features, restored, fps, pa, pq, av)
    n_steps = 0
    with _atomic_dir(out, overwrite, _is_zarr_dir, "zarr store") as partial:
        try:
            buffer = ReplayBuffer.create(partial, attrs=attrs, overwrite=True)
            with buffer:
                for episode in tqdm(episodes, desc=f"import {source.name}", unit="episode", disable=not progress):
                    arrays = reader.episode(episode)
                    buffer.append_episode(arrays)
                n_steps = buffer.n_steps
        finally:
            reader.close()
    return ImportSummary(out, len(episodes), n_steps, fps, {f.key: f.name for f in features}, tasks, skipped)


def _rel(root: Path, path: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _json_number(value):
    return int(value) if float(value).is_integer() else float(value)


def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeError, ValueError) as err:
        raise DatasetError(f"{path}: not readable JSON ({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_info(source: Path) -> dict:
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder (expected a LeRobot dataset folder with meta/info.json)")
    path = source / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{source}: not a LeRobot dataset folder (no {INFO_PATH})")
    info = _read_json(path, "LeRobot dataset metadata")
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version is {version!r}; only LeRobotDataset {CODEBASE_VERSION} is "
                           "supported (convert older datasets with lerobot's convert_dataset_v21_to_v30)")
    for name, test, expected in (("features", lambda v: isinstance(v, dict) and v, "a non-empty object"),
                                 ("fps", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                                  and v > 0 and math.isfinite(v), "a positive number"),
                                 ("data_path", lambda v: isinstance(v, str) and v, "a path template")):
        if not test(info.get(name)):
            raise DatasetError(f"{path}: {name!r} is {info.get(name)!r}; expected {expected}")
    for name, feature in info["features"].items():
        if not isinstance(feature, dict) or not isinstance(feature.get("dtype"), str) or not _is_shape(
                feature.get("shape")):
            raise DatasetError(f"{path}: feature {name!r} needs a 'dtype' string and a 'shape' list of "
                               f"positive integers; got {_shorten(feature)}")
    templates = [("data_path", {})]
    if any(f["dtype"] == "video" for f in info["features"].values()):
        if not isinstance(info.get("video_path"), str):
            raise DatasetError(f"{path}: has video features but no 'video_path' template")
        templates.append(("video_path", {"video_key": "key"}))
    for name, extra in templates:
        try:
            info[name].format(chunk_index=0, file_index=0, **extra)
        except (KeyError, IndexError, ValueError) as err:
            raise DatasetError(f"{path}: {name} {info[name]!r} is not a v3.0 template (placeholders "
                               f"{{chunk_index}}, {{file_index}}{', {video_key}' if extra else ''}; "
                               f"{type(err).__name__}: {err})") from None
    return info


def _is_shape(value) -> bool:
    return (isinstance(value, list | tuple) and len(value) >= 1
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value))


def _shorten(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _numeric_dtype(name: str) -> np.dtype | None:
    try:
        dtype = np.dtype(name)
    except TypeError:
        return None
    return dtype if dtype.kind in "biuf" else None


def _import_features(source: Path, info: dict) -> tuple[list[_Feature], dict[str, str]]:
    """The features to import, with their zarr keys, and those skipped (with why)."""
    path = source / INFO_PATH
    features, skipped = [], {}
    for name, spec in info["features"].items():
        if name in BOOKKEEPING:
            continue
        dtype, shape = spec["dtype"], tuple(spec["shape"])
        key = lerobot_to_zarr_name(name)
        if dtype in ("video", "image"):
            height, width, channels = _image_layout(path, name, spec)
            features.append(_Feature(name, key, dtype, (height, width, channels), np.dtype(np.uint8), channels))
            continue
        numeric = _numeric_dtype(dtype)
        if numeric is None:
            skipped[name] = f"dtype {dtype!r} is not numeric"
            continue
        if key in FLOAT_KEYS and numeric.kind != "f":
            numeric = np.dtype(np.float32)
        features.append(_Feature(name, key, "array", shape, numeric))
    if not features:
        raise DatasetError(f"{path}: no numeric, image or video features to import (features: "
                           f"{sorted(info['features'])})")
    seen: dict[str, str] = {}
    for feature in features:
        if feature.key in seen:
            raise DatasetError(f"{path}: features {seen[feature.key]!r} and {feature.name!r} would both become "
                               f"data/{feature.key}")
        if not feature.key or feature.key.startswith(".") or "/" in feature.key:
            raise DatasetError(f"{path}: feature {feature.name!r} does not make a valid zarr array name")
        seen[feature.key] = feature.name
    return features, skipped


def _image_layout(info_path: Path, name: str, spec: dict) -> tuple[int, int, int]:
    """(height, width, channels) of an image/video feature, from its shape and names."""
    shape = tuple(spec["shape"])
    if len(shape) != 3:
        raise DatasetError(f"{info_path}: feature {name!r} ({spec['dtype']}) has shape {list(shape)}; expected 3 "
                           "dimensions (height, width, channels in some order)")
    names = spec.get("names")
    first = str(names[0]).lower() if isinstance(names, list | tuple) and len(names) == 3 else None
    channels_first = first in ("c", "channel", "channels") if first is not None else (
        shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4))
    height, width, channels = (shape[1], shape[2], shape[0]) if channels_first else shape
    if channels not in (1, 3):
        raise DatasetError(f"{info_path}: feature {name!r} has {channels} channels; only 1 (gray) or 3 (RGB) "
                           "are supported")
    return height, width, channels


_EPISODE_COLUMNS = ("episode_index", "data/chunk_index", "data/file_index", "dataset_from_index",
                    "dataset_to_index")


def _read_episodes(source: Path, info: dict, features: list[_Feature]) -> list[dict]:
    """Rows of meta/episodes (without stats), sorted by episode_index, each with ``_meta_file``."""
    _, pq, _ = _libraries()
    folder = source / EPISODES_DIR
    files = sorted(folder.glob("*/*.parquet"))
    if not files:
        raise DatasetError(f"{folder}: no episode metadata (expected {EPISODES_DIR}/chunk-XXX/file-XXX.parquet)")
    required = list(_EPISODE_COLUMNS)
    for feature in features:
        if feature.kind == "video":
            required += [f"videos/{feature.name}/{c}" for c in ("chunk_index", "file_index", "from_timestamp",
                                                               "to_timestamp")]
    rows = []
    for path in files:
        table = _read_parquet(pq, path, None, lambda names: [c for c in names if not c.startswith("stats/")])
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise DatasetError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(missing)} (LeRobot v3.0 episode metadata)")
        wanted = [c for c in (*required, "tasks", "length") if c in table.column_names]
        columns = {c: table.column(c).to_pylist() for c in wanted}
        for i in range(table.num_rows):
            row = {c: columns[c][i] for c in wanted}
            nulls = [c for c in required if row[c] is None]
            if nulls:
                raise DatasetError(f"{path}: episode row {i} has no value for {', '.join(nulls)}")
            row["_meta_file"] = path
            rows.append(row)
    rows.sort(key=lambda r: r["episode_index"])
    for i, row in enumerate(rows):
        start, stop = int(row["dataset_from_index"]), int(row["dataset_to_index"])
        where = _rel(source, row["_meta_file"])
        if stop <= start:
            raise DatasetError(f"{row['_meta_file']}: episode {row['episode_index']} spans rows [{start}, {stop}); "
                               "expected dataset_to_index > dataset_from_index")
        if row.get("length") is not None and int(row["length"]) != stop - start:
            raise DatasetError(f"{row['_meta_file']}: episode {row['episode_index']} has length {row['length']} but "
                               f"spans rows [{start}, {stop})")
        if i and row["episode_index"] == rows[i - 1]["episode_index"]:
            raise DatasetError(f"{row['_meta_file']}: episode {row['episode_index']} is listed twice ({where})")
    return rows


def _read_parquet(pq, path: Path, columns: Sequence[str] | None, select: Callable | None = None):
    """A parquet table (only ``columns``, or those ``select(names)`` keeps), or a DatasetError naming the file."""
    try:
        if select is not None:
            columns = select(_parquet_names(pq, path))
        return pq.read_table(path, columns=None if columns is None else list(columns))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, ValueError, TypeError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{path}: not a readable parquet file ({type(err).__name__}: {_first_line(err)})") from None


def _parquet_names(pq, path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, ValueError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable parquet file ({type(err).__name__}: {_first_line(err)})") from None


def _read_tasks(source: Path) -> list[str]:
    """Task strings by task_index ([] when the dataset has no tasks file)."""
    _, pq, _ = _libraries()
    path = source / TASKS_PATH
    if not path.is_file():
        return []
    table = _read_parquet(pq, path, None)
    names = table.column_names
    text = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if text is None or "task_index" not in names:
        raise DatasetError(f"{path}: expected columns 'task' (the task strings, pandas index) and 'task_index'; "
                           f"found {names}")
    by_index = dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist(), strict=True))
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"{path}: task_index must run 0..{len(by_index) - 1}; found {sorted(by_index)[:10]}")
    return [str(by_index[i]) for i in range(len(by_index))]


def _data_file(source: Path, info: dict, episode: dict) -> Path:
    return source / info["data_path"].format(chunk_index=int(episode["data/chunk_index"]),
                                             file_index=int(episode["data/file_index"]))


def _video_file(source: Path, info: dict, episode: dict, name: str) -> Path:
    return source / info["video_path"].format(video_key=name,
                                              chunk_index=int(episode[f"videos/{name}/chunk_index"]),
                                              file_index=int(episode[f"videos/{name}/file_index"]))


def _restored_layout(source: Path, info: dict, episodes: list[dict],
                     features: list[_Feature]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """LeRobot feature -> (zarr key, step shape) recorded by :func:`export_lerobot`, when present."""
    _, pq, _ = _libraries()
    try:
        metadata = pq.read_schema(_data_file(source, info, episodes[0])).metadata or {}
        recorded = json.loads(metadata.get(_PARQUET_META_KEY, b"{}")).get("arrays", {})
    except (OSError, ValueError, AttributeError):
        return {}
    restored = {}
    by_name = {f.name: f for f in features}
    for name, entry in recorded.items() if isinstance(recorded, dict) else ():
        feature = by_name.get(name)
        try:
            key, shape = str(entry["key"]), tuple(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError):
            continue
        if feature is not None and int(np.prod(shape)) == int(np.prod(feature.shape)):
            restored[name] = (key, shape)
    keys = [restored.get(f.name, (f.key,))[0] for f in features]
    if len(set(keys)) != len(keys) or any(not k or k.startswith(".") or "/" in k for k in keys):
        return {}
    for feature in features:
        if feature.name in restored:
            feature.key = restored[feature.name][0]
    return restored


class _Reader:
    """Reads the episodes of a v3.0 folder one after the other (data files and videos kept open)."""

    def __init__(self, source, info, features, restored, fps, pa, pq, av):
        self.source, self.info, self.features, self.restored = source, info, features, restored
        self.fps, self.pa, self.pq, self.av = fps, pa, pq, av
        self._data_path: Path | None = None
        self._data: dict[str, object] = {}
        self._videos: dict[str, _VideoReader] = {}

    def close(self) -> None:
        for video in self._videos.values():
            video.close()
        self._videos.clear()

    def episode(self, episode: dict) -> dict[str, np.ndarray]:
        index = int(episode["episode_index"])
        start, stop = int(episode["dataset_from_index"]), int(episode["dataset_to_index"])
        path = _data_file(self.source, self.info, episode)
        data = self._load_data(path)
        rows = self._episode_rows(path, data, index, start, stop)
        arrays = {}
        for feature in self.features:
            if feature.kind == "video":
                arrays[feature.key] = self._video_frames(feature, episode, data["timestamp"][rows])
            elif feature.kind == "image":
                arrays[feature.key] = self._decode_images(path, feature, data[feature.name], rows)
            else:
                values = data[feature.name][rows]
                shape = self.restored.get(feature.name, (None, feature.shape))[1]
                arrays[feature.key] = values.reshape(len(values), *shape)
        return arrays

    def _load_data(self, path: Path) -> dict:
        if path == self._data_path:
            return self._data
        columns = ["index", "episode_index", "frame_index", "timestamp"]
        columns += [f.name for f in self.features if f.kind != "video"]
        names = _parquet_names(self.pq, path)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(meta/info.json lists {'them' if len(missing) > 1 else 'it'} as per-frame "
                               "features)")
        table = _read_parquet(self.pq, path, columns)
        data: dict[str, object] = {}
        for name in ("index", "episode_index", "frame_index"):
            data[name] = _column_values(self.pa, path, table, name, (1,), np.dtype(np.int64)).reshape(-1)
        data["timestamp"] = _column_values(self.pa, path, table, "timestamp", (1,), np.dtype(np.float64)).reshape(-1)
        for feature in self.features:
            if feature.kind == "array":
                data[feature.name] = _column_values(self.pa, path, table, feature.name, feature.shape, feature.dtype)
            elif feature.kind == "image":
                data[feature.name] = table.column(feature.name).combine_chunks()
        self._data_path, self._data = path, data
        return data

    def _episode_rows(self, path: Path, data: dict, episode: int, start: int, stop: int) -> np.ndarray:
        index = data["index"]
        rows = np.flatnonzero((index >= start) & (index < stop))
        rows = rows[np.argsort(index[rows], kind="stable")]
        length = stop - start
        if len(rows) != length or not np.array_equal(index[rows], np.arange(start, stop)):
            raise DatasetError(f"{path}: episode {episode} needs the rows with index {start}..{stop - 1} "
                               f"(dataset_from_index..dataset_to_index in meta/episodes); found {len(rows)} of "
                               f"{length}")
        if not (data["episode_index"][rows] == episode).all():
            raise DatasetError(f"{path}: rows with index {start}..{stop - 1} are not all episode_index {episode}")
        if not np.array_equal(data["frame_index"][rows], np.arange(length)):
            raise DatasetError(f"{path}: frame_index of episode {episode} is not 0..{length - 1}")
        return rows

    def _video_frames(self, feature: _Feature, episode: dict, timestamps: np.ndarray) -> np.ndarray:
        path = _video_file(self.source, self.info, episode, feature.name)
        reader = self._videos.get(feature.name)
        if reader is None or reader.path != path:
            if reader is not None:
                reader.close()
            reader = self._videos[feature.name] = _VideoReader(path, self.fps, feature.channels, self.av)
        start = float(episode[f"videos/{feature.name}/from_timestamp"])
        stop = float(episode[f"videos/{feature.name}/to_timestamp"])
        index = int(episode["episode_index"])
        frames = reader.read(start, stop)
        if len(frames) != len(timestamps):
            raise DatasetError(f"{path}: {len(frames)} frames between {start:.4f} s and {stop:.4f} s "
                               f"(from_timestamp..to_timestamp of episode {index}); the tables have "
                               f"{len(timestamps)} for it")
        height, width, channels = feature.shape
        stacked = np.stack(frames) if frames else np.zeros((0, height, width, channels), np.uint8)
        if stacked.shape[1:] != feature.shape:
            raise DatasetError(f"{path}: frames are {stacked.shape[2]}x{stacked.shape[1]}; meta/info.json gives "
                               f"{feature.name} {width}x{height} with {channels} channels")
        return stacked

    def _decode_images(self, path: Path, feature: _Feature, column, rows: np.ndarray) -> np.ndarray:
        import cv2

        out = np.empty((len(rows), *feature.shape), dtype=np.uint8)
        flag = cv2.IMREAD_GRAYSCALE if feature.channels == 1 else cv2.IMREAD_COLOR
        for i, row in enumerate(rows):
            value = column[int(row)].as_py()
            data = value.get("bytes") if isinstance(value, dict) else value
            if data is None and isinstance(value, dict) and value.get("path"):
                image_path = Path(value["path"])
                image_path = image_path if image_path.is_absolute() else self.source / image_path
                try:
                    data = image_path.read_bytes()
                except OSError as err:
                    raise DatasetError(f"{image_path}: cannot read the image of {feature.name} at row {row} of "
                                       f"{path} ({err.strerror or err})") from None
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
            if image is None:
                raise DatasetError(f"{path}: row {row} of {feature.name} is not a decodable image")
            image = image[:, :, None] if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            if image.shape != feature.shape:
                raise DatasetError(f"{path}: row {row} of {feature.name} is {image.shape[1]}x{image.shape[0]}x"
                                   f"{image.shape[2]}; meta/info.json gives {feature.shape[1]}x{feature.shape[0]}x"
                                   f"{feature.shape[2]}")
            out[i] = image
        return out


def _column_values(pa, path: Path, table, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A numeric column as (rows, *shape) of ``dtype``: scalars, fixed-size or nested lists alike."""
    array = table.column(name).combine_chunks()
    rows = len(array)
    while True:
        if isinstance(array.type, pa.ExtensionType):
            array = array.storage
        if array.null_count:
            raise DatasetError(f"{path}: column {name!r} has missing (null) values")
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(
                array.type):
            array = array.flatten()
        else:
            break
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        raise DatasetError(f"{path}: column {name!r} holds {array.type}; expected numbers")
    values = array.to_numpy(zero_copy_only=False)
    per_row = int(np.prod(shape))
    if values.size != rows * per_row:
        raise DatasetError(f"{path}: column {name!r} holds {values.size} values for {rows} rows; meta/info.json "
                           f"gives shape {list(shape)} ({per_row} per row)")
    if dtype.kind in "iu" and values.dtype.kind == "f":
        raise DatasetError(f"{path}: column {name!r} holds floats; meta/info.json says {dtype}")
    return values.astype(dtype, copy=False).reshape(rows, *shape)


class _VideoReader:
    """Decodes one mp4 front to back, handing out the frames of one time span at a time."""

    def __init__(self, path: Path, fps: float, channels: int, av):
        self.path, self.fps, self.av = path, float(fps), av
        self.format = "gray" if channels == 1 else "rgb24"
        self._container = None
        self._frames = None
        self._pending = None
        self._count = 0
        self._last_start = -math.inf

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _open(self) -> None:
        self.close()
        try:
            self._container = self.av.open(str(self.path))
            stream = self._container.streams.video[0]
        except IndexError:
            raise DatasetError(f"{self.path}: no video stream") from None
        except (self.av.FFmpegError, OSError, ValueError) as err:
            raise DatasetError(f"{self.path}: not a readable video ({_first_line(err)})") from None
        stream.thread_type = "AUTO"
        self._frames = self._container.decode(stream)
        self._pending, self._count = None, 0

    def _next(self):
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except (self.av.FFmpegError, OSError, ValueError) as err:
            raise DatasetError(f"{self.path}: cannot decode frame {self._count} ({_first_line(err)})") from None
        time = frame.time if frame.time is not None else self._count / self.fps
        self._count += 1
        return time, frame

    def read(self, start: float, stop: float) -> list[np.ndarray]:
        """RGB (or gray) frames shown at times in [start, stop), within half a frame."""
        half = 0.5 / self.fps
        if self._container is None or start < self._last_start:
            self._open()
        self._last_start = start
        frames = []
        while (item := self._next()) is not None:
            time, frame = item
            if time < start - half:
                continue
            if time >= stop - half:
                self._pending = item
                break
            image = frame.to_ndarray(format=self.format)
            frames.append(image[:, :, None] if image.ndim == 2 else image)
        return frames


# ---------------------------------------------------------------------------------- export
@dataclass
class ExportSummary:
    """What :func:`export_lerobot` wrote."""

    path: Path
    n_episodes: int
    n_frames: int
    fps: float
    #: zarr key -> LeRobot feature.
    features: dict[str, str]
    codec: str | None
    task: str


@dataclass
class _Export:
    """One zarr array as exported."""

    key: str
    name: str
    video: bool
    step_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The LeRobot feature shape ([1] for one value per step)."""
        return self.step_shape if self.step_shape else (1,)


def available_codecs() -> list[str]:
    """The encoders of :data:`CODEC_PREFERENCE` this PyAV build provides."""
    _, _, av = _libraries()
    found = []
    for name in CODEC_PREFERENCE:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 (any failure means: not usable here)
            continue
        found.append(name)
    return found


def _resolve_codec(codec: str) -> str:
    available = available_codecs()
    if codec == "auto":
        if not available:
            raise UserError(f"PyAV here has none of the video encoders {', '.join(CODEC_PREFERENCE)}")
        return available[0]
    if codec not in CODEC_PREFERENCE:
        raise UsageError(f"--codec must be auto or one of {', '.join(CODEC_PREFERENCE)}; got {codec!r}")
    if codec not in available:
        raise UserError(f"PyAV here has no {codec} encoder (it has: {', '.join(available) or 'none of them'})")
    return codec


def _export_plan(buffer: ReplayBuffer) -> list[_Export]:
    attrs = buffer.attrs
    lerobot = attrs.get("lerobot") if isinstance(attrs.get("lerobot"), dict) else {}
    recorded = lerobot.get("features") if isinstance(lerobot.get("features"), dict) else {}
    plan = []
    for key in buffer.keys():
        array = buffer[key]
        step_shape, dtype = tuple(int(d) for d in array.shape[1:]), np.dtype(array.dtype).newbyteorder("=")
        video = len(step_shape) == 3 and step_shape[2] == 3 and (
            dtype == np.uint8 or (dtype.kind == "f" and is_image_name(key)))
        name = recorded.get(key)
        if not isinstance(name, str) or not name or "/" in name or name in BOOKKEEPING or (
                video != name.startswith("observation.images.")):
            name = zarr_to_lerobot_name(key, video)
        plan.append(_Export(key, name, video, step_shape, np.dtype(np.uint8) if video else dtype))
    names = [p.name for p in plan]
    for item in plan:
        if names.count(item.name) > 1 or item.name in BOOKKEEPING:
            raise DatasetError(f"{buffer.path}: data/{item.key} would become LeRobot feature {item.name!r}, "
                               "which another array or a bookkeeping column already is")
    plan.sort(key=lambda p: (p.name != "action", p.name))
    return plan


def export_lerobot(source: str | Path, out: str | Path, *, fps: float | None = None, task: str | None = None,
                   codec: str = "auto", crf: int | None = None, robot_type: str | None = None,
                   overwrite: bool = False, progress: bool = True) -> ExportSummary:
    """Write the zarr dataset ``source`` as a LeRobotDataset v3.0 folder ``out``.

    uint8 (H, W, 3) arrays (and float ones with an image name, read as uint8) become video
    features ``observation.images.<key>``, encoded with ``codec`` (``auto``: libx264 when PyAV has
    it, else libsvtav1) as yuv420p; ``action`` stays ``action``; every other array becomes
    ``observation.<key>`` with its dtype and shape. ``fps`` defaults to the dataset's ``fps``
    attribute, else 10; ``task`` to the single task recorded by an import, else the dataset's name.
    """
    pa, pq, av = _libraries()
    source, out = Path(source), Path(out)
    _check_target(out, overwrite, _is_lerobot_dir, "LeRobot dataset folder")
    with ReplayBuffer.open(source) as buffer:
        if buffer.n_episodes == 0:
            raise DatasetError(f"{source}: has no episodes to export")
        attrs = dict(buffer.attrs)
        lerobot = attrs.get("lerobot") if isinstance(attrs.get("lerobot"), dict) else {}
        if fps is None:
            stored = attrs.get("fps")
            fps = stored if isinstance(stored, int | float) and not isinstance(stored, bool) and stored > 0 else 10
        if not (isinstance(fps, int | float) and fps > 0 and math.isfinite(fps)):
            raise UsageError(f"--fps must be a positive number, got {fps!r}")
        fps = _json_number(fps)
        if task is None:
            tasks = lerobot.get("tasks")
            task = tasks[0] if isinstance(tasks, list) and len(tasks) == 1 else source.name.split(".")[0]
        if robot_type is None and isinstance(lerobot.get("robot_type"), str):
            robot_type = lerobot["robot_type"]
        plan = _export_plan(buffer)
        videos = [p for p in plan if p.video]
        codec_name = _resolve_codec(codec) if videos else None
        odd = [p for p in videos if p.step_shape[0] % 2 or p.step_shape[1] % 2]
        if codec_name == "libsvtav1" and odd:
            raise DatasetError(f"{source}: libsvtav1 needs even image sizes and data/{odd[0].key} is "
                               f"{odd[0].step_shape[1]}x{odd[0].step_shape[0]}; use --codec libx264")
        crf = DEFAULT_CRF.get(codec_name, 0) if crf is None else int(crf)
        if codec_name is not None and not 0 <= crf <= MAX_CRF[codec_name]:
            raise UsageError(f"--crf for {codec_name} must be in 0..{MAX_CRF[codec_name]}, got {crf}")
        from tqdm import tqdm

        with _atomic_dir(out, overwrite, _is_lerobot_dir, "LeRobot dataset folder") as partial:
            writer = _Writer(partial, plan, fps, codec_name, crf, task, pa, pq, av)
            try:
                for index in tqdm(range(buffer.n_episodes), desc=f"export {source.name}", unit="episode",
                                  disable=not progress):
                    arrays = buffer.get_episode(index, [p.key for p in plan if not p.video])
                    for item in videos:
                        arrays[item.key] = buffer.load(item.key, episodes=[index], dtype=np.uint8)
                    writer.add_episode(index, arrays)
                writer.finish(robot_type)
            finally:
                writer.close()
        return ExportSummary(out, buffer.n_episodes, buffer.n_steps, fps, {p.key: p.name for p in plan},
                             _codec_label(codec_name), task)


def _codec_label(codec: str | None) -> str | None:
    return {"libx264": "h264 (libx264)", "libsvtav1": "av1 (libsvtav1)"}.get(codec, codec)


def _arrow_type(pa, dtype: np.dtype):
    return pa.from_numpy_dtype(np.dtype(dtype).newbyteorder("="))


def _arrow_column(pa, values: np.ndarray, step_shape: tuple[int, ...]):
    """The parquet column lerobot writes: a scalar, a fixed-size list (1-D) or nested lists (n-D)."""
    n = len(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=_arrow_type(pa, values.dtype))
    if len(step_shape) == 0 or step_shape == (1,):
        return flat
    if len(step_shape) == 1:
        return pa.FixedSizeListArray.from_arrays(flat, step_shape[0])
    inner, count = flat, len(flat)
    for size in reversed(step_shape):
        count //= size
        inner = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * size), inner)
    assert len(inner) == n
    return inner


def _episode_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """lerobot's per-episode statistics of a low-dim feature: reduced over frames."""
    data = values.reshape(len(values), 1) if values.ndim == 1 else values
    as_float = data.astype(np.float64)
    stats = {"min": data.min(axis=0), "max": data.max(axis=0), "mean": as_float.mean(axis=0),
             "std": as_float.std(axis=0), "count": np.array([len(data)])}
    if data.dtype == np.bool_:
        stats["min"], stats["max"] = stats["min"].astype(np.int64), stats["max"].astype(np.int64)
    for key, value in zip(_quantile_keys(), np.quantile(as_float, QUANTILES, axis=0), strict=True):
        stats[key] = value
    return stats


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """lerobot's per-episode image statistics: per channel over sampled frames, on [0, 1], shape (3, 1, 1).

    Computed from each channel's histogram of uint8 values, which gives the same numbers as numpy's
    reductions (quantiles interpolated linearly) at a fraction of the cost."""
    sample = frames[_sample_indices(len(frames))]
    height, width = sample.shape[1:3]
    if max(height, width) >= 300:  # lerobot's auto_downsample_height_width
        step = int(width / 150) if width > height else int(height / 150)
        sample = sample[:, ::step, ::step]
    levels = np.arange(256, dtype=np.float64)
    rows = {name: [] for name in ("min", "max", "mean", "std", *_quantile_keys())}
    for channel in range(sample.shape[3]):
        counts = np.bincount(sample[..., channel].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        present = np.flatnonzero(counts)
        mean = (levels * counts).sum() / total
        rows["min"].append(present[0])
        rows["max"].append(present[-1])
        rows["mean"].append(mean)
        rows["std"].append(np.sqrt((counts * (levels - mean) ** 2).sum() / total))
        cumulative = np.cumsum(counts)
        for key, q in zip(_quantile_keys(), QUANTILES, strict=True):
            position = q * (total - 1)
            below = math.floor(position)
            low = np.searchsorted(cumulative, below, side="right")
            high = np.searchsorted(cumulative, min(below + 1, total - 1), side="right")
            rows[key].append(low + (position - below) * (high - low))
    stats = {key: (np.asarray(values, dtype=np.float64) / 255.0).reshape(-1, 1, 1) for key, values in rows.items()}
    stats["count"] = np.array([len(sample)])
    return stats


def _quantile_keys() -> list[str]:
    return [f"q{round(q * 100):02d}" for q in QUANTILES]


def _sample_indices(length: int) -> np.ndarray:
    """lerobot's frame sample for image statistics (estimate_num_samples, sample_indices)."""
    low = min(100, length)
    count = max(low, min(int(length ** 0.75), 10_000))
    return np.round(np.linspace(0, length - 1, count)).astype(int)


def _aggregate(stats_list: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """lerobot's aggregate_feature_stats: count-weighted means and quantiles, pooled variance."""
    counts = np.array([int(s["count"][0]) for s in stats_list], dtype=np.float64)
    total = counts.sum()
    means = np.stack([s["mean"] for s in stats_list])
    weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * weights).sum(axis=0) / total
    variance = ((np.stack([s["std"] for s in stats_list]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
    out = {"min": np.min(np.stack([s["min"] for s in stats_list]), axis=0),
           "max": np.max(np.stack([s["max"] for s in stats_list]), axis=0),
           "mean": mean, "std": np.sqrt(variance), "count": np.array([int(total)])}
    for key in stats_list[0]:
        if re.fullmatch(r"q\d+", key):
            out[key] = (np.stack([s[key] for s in stats_list]) * weights).sum(axis=0) / total
    return out


class _VideoWriter:
    """One mp4 holding consecutive episodes of one video feature, frame i shown at i / fps."""

    def __init__(self, path: Path, codec: str, crf: int, fps: float, height: int, width: int, av):
        self.path, self.av = path, av
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = Fraction(fps).limit_denominator(1_000_000)
        options = {"g": str(GOP), "crf": str(crf)}
        if codec == "libsvtav1":
            options["preset"] = "12"  # lerobot's setting
            os.environ.setdefault("SVT_LOG", "1")  # errors only: the encoder prints its settings otherwise
        self.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        # faststart puts the index first, as lerobot's files have it, for reading while downloading
        self._container = av.open(str(path), "w", options={"movflags": "faststart"})
        self._stream = self._container.add_stream(codec, rate=self.rate, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, self.pix_fmt
        self.frames = 0

    def add(self, frames: np.ndarray) -> tuple[float, float]:
        """Encode an episode's frames; its (from_timestamp, to_timestamp) in this file."""
        start = self.frames
        for image in frames:
            frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1
        return float(start / self.rate), float(self.frames / self.rate)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    """lerobot's update_chunk_file_indices."""
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class _Writer:
    """Writes data files, videos, episode metadata, stats, tasks and info.json of a v3.0 folder."""

    def __init__(self, root: Path, plan: list[_Export], fps, codec: str | None, crf: int, task: str, pa, pq, av):
        self.root, self.plan, self.fps, self.codec, self.crf, self.task = root, plan, fps, codec, crf, task
        self.pa, self.pq, self.av = pa, pq, av
        self.lowdim = [p for p in plan if not p.video]
        self.videos = [p for p in plan if p.video]
        self.schema = self._schema()
        self._data_file = (0, 0)
        self._data_writer = None
        self._data_rows_bytes = 0
        self._video_files: dict[str, tuple[int, int]] = {p.name: (0, 0) for p in self.videos}
        self._video_writers: dict[str, _VideoWriter] = {}
        self._episodes: list[dict] = []
        self._stats: list[dict[str, dict]] = []
        self.n_frames = 0

    def _schema(self):
        pa = self.pa
        fields = []
        for item in self.lowdim:
            value = _arrow_type(pa, item.dtype)
            if len(item.shape) == 1 and item.shape != (1,):
                kind = pa.list_(value, item.shape[0])
            elif len(item.shape) > 1:
                kind = value
                for _ in item.shape:
                    kind = pa.list_(kind)
            else:
                kind = value
            fields.append(pa.field(item.name, kind))
        fields += [pa.field(name, pa.from_numpy_dtype(np.dtype(dtype))) for name, dtype in BOOKKEEPING.items()]
        recorded = {"version": 1, "arrays": {p.name: {"key": p.key, "shape": list(p.step_shape), "dtype": str(p.dtype)}
                                             for p in self.plan}}
        return pa.schema(fields, metadata={_PARQUET_META_KEY: json.dumps(recorded).encode()})

    def add_episode(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        pa = self.pa
        length = len(next(iter(arrays.values())))
        start = self.n_frames
        row_bytes = sum(int(arrays[p.key].nbytes) for p in self.lowdim) + 28 * length
        if self._data_writer is not None and self._data_rows_bytes + row_bytes >= DATA_FILE_SIZE_IN_MB * 2 ** 20:
            self._data_writer.close()
            self._data_writer, self._data_rows_bytes = None, 0
            self._data_file = _next_file(*self._data_file)
        if self._data_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = self.pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=True)
        frame_index = np.arange(length, dtype=np.int64)
        bookkeeping = {"timestamp": (frame_index / self.fps).astype(np.float32), "frame_index": frame_index,
                       "episode_index": np.full(length, index, dtype=np.int64),
                       "index": np.arange(start, start + length, dtype=np.int64),
                       "task_index": np.zeros(length, dtype=np.int64)}
        columns = [_arrow_column(pa, arrays[p.key].astype(p.dtype, copy=False), p.step_shape) for p in self.lowdim]
        columns += [pa.array(bookkeeping[name]) for name in BOOKKEEPING]
        self._data_writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self._data_rows_bytes += row_bytes
        row = {"episode_index": index, "tasks": [self.task], "length": length,
               "data/chunk_index": self._data_file[0], "data/file_index": self._data_file[1],
               "dataset_from_index": start, "dataset_to_index": start + length}
        stats = {p.name: _episode_stats(arrays[p.key]) for p in self.lowdim}
        for item in self.videos:
            writer = self._video_writers.get(item.name)
            if writer is not None and writer.size() >= VIDEO_FILE_SIZE_IN_MB * 2 ** 20:
                writer.close()
                del self._video_writers[item.name]
                self._video_files[item.name] = _next_file(*self._video_files[item.name])
                writer = None
            chunk, file = self._video_files[item.name]
            if writer is None:
                path = self.root / VIDEO_PATH.format(video_key=item.name, chunk_index=chunk, file_index=file)
                writer = self._video_writers[item.name] = _VideoWriter(
                    path, self.codec, self.crf, self.fps, item.step_shape[0], item.step_shape[1], self.av)
            frames = arrays[item.key]
            begin, end = writer.add(frames)
            row.update({f"videos/{item.name}/chunk_index": chunk, f"videos/{item.name}/file_index": file,
                        f"videos/{item.name}/from_timestamp": begin, f"videos/{item.name}/to_timestamp": end})
            stats[item.name] = _image_stats(frames)
        for name, values in bookkeeping.items():
            stats[name] = _episode_stats(values)
        for feature, values in stats.items():
            for stat, value in values.items():
                row[f"stats/{feature}/{stat}"] = value.tolist()
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        self._episodes.append(row)
        self._stats.append(stats)
        self.n_frames += length

    def close(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for writer in self._video_writers.values():
            writer.close()
        self._video_writers.clear()

    def finish(self, robot_type: str | None) -> None:
        self.close()
        pa, pq = self.pa, self.pq
        rows = self._episodes
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pydict(columns), path, compression="snappy")
        _write_tasks(pa, pq, self.root / TASKS_PATH, [self.task])
        stats = {name: _aggregate([s[name] for s in self._stats]) for name in self._stats[0]}
        _write_json(self.root / STATS_PATH, {name: {k: v.tolist() for k, v in s.items()} for name, s in stats.items()})
        _write_json(self.root / INFO_PATH, self._info(robot_type))

    def _info(self, robot_type: str | None) -> dict:
        features = {}
        for item in self.plan:
            if item.video:
                height, width, _ = item.step_shape
                features[item.name] = {"dtype": "video", "shape": [height, width, 3],
                                       "names": ["height", "width", "channels"],
                                       "info": self._video_info(item)}
            else:
                names = [f"{item.key}_{i}" for i in range(item.shape[0])] if len(item.step_shape) == 1 else None
                features[item.name] = {"dtype": str(item.dtype), "shape": list(item.shape), "names": names}
        for name, dtype in BOOKKEEPING.items():
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        n = len(self._episodes)
        return {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": n,
                "total_frames": self.n_frames, "total_tasks": 1, "chunks_size": CHUNKS_SIZE,
                "data_files_size_in_mb": DATA_FILE_SIZE_IN_MB, "video_files_size_in_mb": VIDEO_FILE_SIZE_IN_MB,
                "fps": self.fps, "splits": {"train": f"0:{n}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.videos else None, "features": features}

    def _video_info(self, item: _Export) -> dict:
        """What lerobot's get_video_info reads from the first video file."""
        path = self.root / VIDEO_PATH.format(video_key=item.name, chunk_index=0, file_index=0)
        with self.av.open(str(path)) as container:
            stream = container.streams.video[0]
            return {"video.height": stream.height, "video.width": stream.width,
                    "video.codec": stream.codec_context.codec.canonical_name, "video.pix_fmt": stream.pix_fmt,
                    "video.is_depth_map": False, "video.fps": int(stream.base_rate), "video.channels": 3,
                    "has_audio": False}


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=4, ensure_ascii=False)


def _write_tasks(pa, pq, path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes lerobot's DataFrame (task strings as the index named "task"),
    so that ``pd.read_parquet`` gives the index back without pandas being needed here."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([pa.field("task_index", pa.int64()), pa.field("task", pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    table = pa.Table.from_arrays([pa.array(np.arange(len(tasks), dtype=np.int64)), pa.array(tasks, pa.string())],
                                 schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
