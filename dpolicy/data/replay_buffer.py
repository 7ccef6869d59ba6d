"""Demonstrations stored in zarr, in the layout of the original Diffusion Policy benchmark.

Layout: ``data/<key>`` arrays hold all episodes concatenated in time (one row per step);
``meta/episode_ends`` (1-D int64) holds the exclusive end step of each episode. The root
group's attributes hold free metadata (e.g. the seeds a collector used).

Reading accepts zarr format 2 (the original human dataset) and 3, as a directory or a
read-only ``.zip``. Writing produces zarr **format 2**: it is the format of the original
datasets, so what this package records opens in the original code base (zarr-python 2) and
in any zarr reader, while the zarr 3 library reads and writes it fully. New arrays are
chunked along time only, about ``CHUNK_BYTES`` per chunk, and compressed with Blosc zstd
(level 3, byte shuffle): the human images as uint8 take 8.1 MB on disk for 709 MB (~87x).

Crash safety of writes (append, drop, adding a key). Every file zarr writes here is
replaced atomically (zarr >= 3.1.3 writes a temp file and renames it into place), and each
write follows one protocol:

1. record the committed state (episodes, steps, keys) in ``meta`` attribute
   ``dpolicy_pending`` -- from here on, anything beyond that state is uncommitted (a drop
   records the state without its last episode, which commits the drop);
2. grow/shrink the data arrays, then ``meta/episode_ends`` last;
3. delete the record: this is the commit.

A reader that finds a record shows the recorded state (the rows and keys past it are
ignored) and a writer that opens the store (mode ``"a"``) truncates the arrays to it, so a
process killed at any point leaves the dataset as it was before the append (a drop: before
or after it), never half an episode. This protects against the writing process dying, not
against power loss (files are not fsynced). One writer at a time.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.errors import NodeNotFoundError
from zarr.storage import LocalStore, ZipStore

from dpolicy.errors import DatasetError

__all__ = ["DatasetError", "ReplayBuffer"]

#: Target uncompressed size of one chunk of a newly created array.
CHUNK_BYTES = 2 * 1024 * 1024
#: Compression of newly created arrays (see the module docstring for the choice).
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
#: Attribute of the ``meta`` group that marks an unfinished write (see the module docstring).
PENDING_ATTR = "dpolicy_pending"
#: Chunk length of ``meta/episode_ends``.
EPISODE_ENDS_CHUNK = 4096

_NUMERIC_KINDS = "biuf"


class ReplayBuffer:
    """Episodes of a zarr demonstration dataset; see the module docstring for the layout.

    Open an existing store with :meth:`open` (``mode="r"`` or ``"a"`` to write) or make an
    empty one with :meth:`create`. Opening validates the structure (episode ends, array
    lengths, dtypes); :meth:`check_values` also scans for NaN/inf.
    """

    def __init__(self, root: zarr.Group, path: Path, mode: str, store):
        self._root = root
        self._store = store
        self.path = path
        self.mode = mode
        self._episode_ends = np.zeros(0, dtype=np.int64)
        self._keys: list[str] = []
        self._committed_attrs: dict | None = None  # set when a read-only view hides a pending attrs update
        self._load_structure()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open a dataset: a zarr directory (``mode`` "r" or "a") or a ``.zip`` (read-only).

        In mode "a" an unfinished write left by a crashed writer is rolled back first.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if path.suffix == ".zip":
            if mode != "r":
                raise DatasetError(f"{path}: zip stores are read-only; unzip to a directory to write to it")
            if not path.is_file():
                raise DatasetError(f"{path}: no such file (expected a zipped zarr store)")
            store = ZipStore(path, mode="r")
        else:
            if not path.exists():
                raise DatasetError(f"{path}: no such dataset (expected a zarr directory or .zip); "
                                   "create one with ReplayBuffer.create")
            if not path.is_dir():
                raise DatasetError(f"{path}: not a zarr store (expected a directory or a .zip file)")
            store = LocalStore(path, read_only=mode == "r")
        try:
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except (NodeNotFoundError, FileNotFoundError) as err:
            raise DatasetError(f"{path}: not a zarr store: no group at its root "
                               "(expected .zgroup for zarr format 2 or zarr.json for format 3)") from err
        return cls(root, path, mode, store)

    @classmethod
    def create(cls, path: str | Path, *, attrs: Mapping | None = None,
               overwrite: bool = False) -> ReplayBuffer:
        """Create an empty dataset (zarr format 2 directory) and open it in mode "a".

        Arrays are created by the first :meth:`append_episode`. ``overwrite`` replaces an
        existing zarr store at ``path`` (never a directory that is not one).
        """
        path = Path(path)
        if path.suffix == ".zip":
            raise DatasetError(f"{path}: cannot create a zip store; create a directory and zip it afterwards")
        if path.exists():
            if not overwrite:
                raise DatasetError(f"{path}: already exists (pass overwrite=True to replace it)")
            if not path.is_dir() or not (_is_zarr_dir(path) or not any(path.iterdir())):
                raise DatasetError(f"{path}: refusing to overwrite something that is not a zarr store")
            shutil.rmtree(path)
        store = LocalStore(path)
        root = zarr.open_group(store, mode="w", zarr_format=2)
        if attrs:
            root.attrs.update(dict(attrs))
        root.require_group("data")
        meta = root.require_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(EPISODE_ENDS_CHUNK,), dtype="<i8",
                          compressors=COMPRESSOR, fill_value=0)
        return cls(root, path, "a", store)

    def close(self) -> None:
        """Release the store (needed for zip stores; harmless otherwise)."""
        self._store.close()

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ structure
    def _fail(self, message: str) -> DatasetError:
        return DatasetError(f"{self.path}: {message}")

    def _load_structure(self) -> None:
        """Read and validate episode_ends and the data arrays; roll back a pending write in mode "a"."""
        meta = self._group("meta", "meta/episode_ends: 1-D integer array of exclusive episode ends")
        if "episode_ends" not in meta or not isinstance(meta["episode_ends"], zarr.Array):
            raise self._fail("missing array meta/episode_ends (expected a 1-D integer array with the "
                             "exclusive end step of each episode)")
        ends_array = meta["episode_ends"]
        if ends_array.ndim != 1 or ends_array.dtype.kind not in "iu":
            raise self._fail(f"meta/episode_ends has shape {ends_array.shape} and dtype {ends_array.dtype}; "
                             "expected a 1-D integer array")
        pending = meta.attrs.get(PENDING_ATTR)
        ends = np.asarray(ends_array[:], dtype=np.int64)
        if pending is not None:
            ends = ends[:int(pending["n_episodes"])]
        bad = np.flatnonzero(np.diff(ends, prepend=0) <= 0)
        if bad.size:
            i = int(bad[0])
            previous = "0 (the start)" if i == 0 else str(ends[i - 1])
            raise self._fail(f"meta/episode_ends must be strictly increasing (exclusive end step of each "
                             f"episode, every episode at least 1 step); entry {i} is {ends[i]} "
                             f"after {previous}")
        n_steps = int(ends[-1]) if len(ends) else 0
        data = self._group("data", "data/<key> arrays with one row per step")
        committed_keys = None if pending is None else set(pending["keys"])
        lengths = {}
        for key, member in sorted(data.members()):
            if committed_keys is not None and key not in committed_keys:
                continue
            if not isinstance(member, zarr.Array):
                raise self._fail(f"data/{key} is a group; expected only arrays (one row per step) in data/")
            if member.ndim < 1 or member.dtype.kind not in _NUMERIC_KINDS:
                raise self._fail(f"data/{key} has shape {member.shape} and dtype {member.dtype}; expected a "
                                 "numeric (bool/int/float) array with one row per step")
            lengths[key] = member.shape[0]
        tolerated = (lambda n: n >= n_steps) if pending is not None else (lambda n: n == n_steps)
        if not all(tolerated(n) for n in lengths.values()):
            listing = ", ".join(f"data/{k}: {n}" for k, n in lengths.items())
            raise self._fail(f"every data array needs one row per step, {n_steps} in all "
                             f"(meta/episode_ends[-1]); found {listing}")
        self._episode_ends = ends
        self._keys = list(lengths)
        if pending is not None and pending.get("attrs") is not None:
            self._committed_attrs = dict(pending["attrs"])
        if pending is not None and self.mode == "a":
            warnings.warn(f"{self.path}: rolling back a write that did not finish (a crashed writer); "
                          f"the dataset keeps its {len(ends)} committed episodes", stacklevel=3)
            self._truncate_to(pending)
            del meta.attrs[PENDING_ATTR]
            self._committed_attrs = None

    def _group(self, name: str, expected: str) -> zarr.Group:
        member = self._root.get(name)
        if not isinstance(member, zarr.Group):
            raise self._fail(f"missing group {name}/ (expected {expected})")
        return member

    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    @property
    def n_episodes(self) -> int:
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """Exclusive end step of each episode (int64 copy)."""
        return self._episode_ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._episode_ends, prepend=0)

    @property
    def attrs(self):
        """Free metadata of the dataset (root group attributes); assignments persist in mode "a".

        To change metadata together with an episode, atomically, pass ``attrs`` to
        :meth:`append_episode`.
        """
        if self._committed_attrs is not None:
            return dict(self._committed_attrs)
        return self._root.attrs

    def keys(self) -> list[str]:
        """Names of the data arrays (``data/<key>``)."""
        return list(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __getitem__(self, key: str) -> zarr.Array:
        """The zarr array ``data/<key>`` itself (lazy; slice it to get numpy).

        Its first :attr:`n_steps` rows are the dataset. Only a read-only view of a store whose
        writer crashed can show more rows (uncommitted ones); :meth:`load` never returns them.
        """
        if key not in self._keys:
            raise KeyError(f"{self.path}: no array data/{key}; keys: {self._keys}")
        return self._root["data"][key]

    def episode_slice(self, index: int) -> slice:
        """Rows of episode ``index`` (negative counts from the end)."""
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"{self.path}: episode {index} out of range ({n} episodes)")
        index %= n
        start = int(self._episode_ends[index - 1]) if index > 0 else 0
        return slice(start, int(self._episode_ends[index]))

    def get_episode(self, index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of one episode as numpy copies, ``{key: (L, *shape)}``."""
        rows = self.episode_slice(index)
        return {key: self[key][rows] for key in (self._keys if keys is None else keys)}

    # ------------------------------------------------------------------ bulk reads
    def iter_blocks(self, key: str, episodes: Sequence[int] | np.ndarray | None = None
                    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_step, rows)`` one stored chunk at a time over the committed steps.

        With ``episodes``, only the rows of those episodes are yielded (in step order) and
        chunks holding none of them are not read. Memory use is one chunk.
        """
        array = self[key]
        mask = None if episodes is None else self._step_mask(episodes)
        chunk = array.chunks[0]
        for start in range(0, self.n_steps, chunk):
            stop = min(start + chunk, self.n_steps)
            if mask is None:
                yield start, array[start:stop]
                continue
            selected = mask[start:stop]
            if selected.any():
                block = array[start:stop]
                yield start, block if selected.all() else block[selected]

    def load(self, key: str, *, episodes: Sequence[int] | np.ndarray | None = None,
             dtype: np.dtype | str | None = None) -> np.ndarray:
        """Read ``data/<key>`` into one preallocated numpy array, chunk by chunk.

        ``episodes`` keeps only those episodes' rows (in step order). ``dtype`` converts while
        reading, so e.g. float32 images become uint8 without a float copy of the whole set;
        converting to integers rounds and fails on values outside the target's range.
        Float data must be finite: NaN/inf raise :class:`DatasetError` naming the step.
        """
        array = self[key]
        out_dtype = np.dtype(dtype) if dtype is not None else array.dtype
        if out_dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(f"load: dtype must be numeric, got {out_dtype}")
        n_rows = self.n_steps if episodes is None else int(self._step_mask(episodes).sum())
        out = np.empty((n_rows, *array.shape[1:]), dtype=out_dtype)
        filled = 0
        for first_step, block in self.iter_blocks(key, episodes):
            lo, hi = self._block_range(key, block, first_step if episodes is None else None)
            if out_dtype.kind in "iu" and block.dtype != out_dtype:
                info = np.iinfo(out_dtype)
                if lo < info.min or hi > info.max:
                    raise self._fail(f"data/{key} has values in [{lo}, {hi}], outside the range of "
                                     f"{out_dtype} ([{info.min}, {info.max}]) it is being read as")
                if block.dtype.kind == "f":
                    block = np.rint(block, out=block if block.flags.writeable else None)
            np.copyto(out[filled:filled + len(block)], block, casting="unsafe")
            filled += len(block)
        return out

    def check_values(self) -> None:
        """Scan every float array for NaN/inf (reads the whole dataset, one chunk at a time)."""
        for key in self._keys:
            if self[key].dtype.kind == "f":
                for first_step, block in self.iter_blocks(key):
                    self._block_range(key, block, first_step)

    def value_range(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension (min, max) of ``data/<key>`` over all steps, each of shape (prod(step_shape),).

        Reads one chunk at a time; NaN/inf raise :class:`DatasetError` naming the step.
        """
        lo = hi = None
        for first_step, block in self.iter_blocks(key):
            self._block_range(key, block, first_step)
            flat = block.reshape(len(block), -1)
            lo = flat.min(axis=0) if lo is None else np.minimum(lo, flat.min(axis=0))
            hi = flat.max(axis=0) if hi is None else np.maximum(hi, flat.max(axis=0))
        if lo is None:
            raise self._fail(f"data/{key} has no steps to take a range of")
        return lo, hi

    def _step_mask(self, episodes: Sequence[int] | np.ndarray) -> np.ndarray:
        mask = np.zeros(self.n_steps, dtype=bool)
        for episode in np.asarray(episodes, dtype=np.int64).ravel():
            mask[self.episode_slice(int(episode))] = True
        return mask

    def _block_range(self, key: str, block: np.ndarray, first_step: int | None) -> tuple:
        """(min, max) of a block; raises DatasetError on NaN/inf, naming the step when known."""
        if block.size == 0:
            return 0, 0
        lo, hi = block.min(), block.max()
        if block.dtype.kind != "f" or (np.isfinite(lo) and np.isfinite(hi)):
            return lo, hi
        row = int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0])
        where = ""
        if first_step is not None:
            step = first_step + row
            episode = int(np.searchsorted(self._episode_ends, step, side="right"))
            where = f" at step {step} (episode {episode})"
        raise self._fail(f"data/{key} contains NaN or inf{where}; expected finite values")

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise DatasetError(f"{self.path}: opened read-only; "
                               "use ReplayBuffer.open(path, mode='a') to write")

    def append_episode(self, episode: Mapping[str, np.ndarray], attrs: Mapping | None = None) -> None:
        """Append one episode ``{key: (L, *shape)}``, atomically (see the module docstring).

        The keys must be the dataset's keys (the first episode of an empty dataset defines
        them), each array's per-step shape must match, values must cast safely to the
        stored dtype (same kind, e.g. float64 into float32; not float into uint8), and floats
        must be finite. ``attrs`` updates the dataset metadata in the same atomic write (e.g.
        the seed of this episode): after a crash, both or neither are there.
        """
        self._require_writable()
        arrays = {key: np.asarray(value) for key, value in episode.items()}
        self._check_episode(arrays)
        n_new = len(next(iter(arrays.values())))
        start = self.n_steps
        with self._pending_write(attrs):
            data = self._root["data"]
            for key, values in arrays.items():
                if key in self._keys:
                    target = data[key]
                    target.resize((start + n_new, *target.shape[1:]))
                else:
                    target = self._create_array(key, values.shape[1:], values.dtype)
                    target.resize((n_new, *values.shape[1:]))
                target[start:start + n_new] = values
            ends = self._root["meta"]["episode_ends"]
            ends.resize((self.n_episodes + 1,))
            ends[self.n_episodes] = start + n_new
        self._episode_ends = np.append(self._episode_ends, np.int64(start + n_new))
        self._keys = sorted(set(self._keys) | set(arrays))

    def _check_episode(self, arrays: dict[str, np.ndarray]) -> None:
        if not arrays:
            raise DatasetError(f"{self.path}: cannot append an episode with no arrays")
        lengths = {key: (value.shape[0] if value.ndim else 0) for key, value in arrays.items()}
        if len(set(lengths.values())) != 1 or min(lengths.values()) < 1:
            raise DatasetError(f"{self.path}: episode arrays need the same number of steps (>= 1), "
                               f"got {lengths}")
        if self._keys and set(arrays) != set(self._keys):
            missing, extra = sorted(set(self._keys) - set(arrays)), sorted(set(arrays) - set(self._keys))
            raise DatasetError(f"{self.path}: episode keys must match the dataset's {self._keys}; "
                               f"missing {missing}, unexpected {extra}")
        for key, value in arrays.items():
            if value.dtype.kind not in _NUMERIC_KINDS:
                raise DatasetError(f"{self.path}: episode array {key!r} has dtype {value.dtype}; "
                                   "expected numbers")
            if key in self._keys:
                stored = self[key]
                if value.shape[1:] != stored.shape[1:]:
                    raise DatasetError(f"{self.path}: episode array {key!r} has per-step shape "
                                       f"{value.shape[1:]}; data/{key} expects {stored.shape[1:]}")
                if not np.can_cast(value.dtype, stored.dtype, casting="same_kind") or (
                        value.dtype.kind == "f" and stored.dtype.kind in "biu"):
                    raise DatasetError(f"{self.path}: episode array {key!r} has dtype {value.dtype}, which "
                                       f"does not convert safely to data/{key}'s {stored.dtype}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise DatasetError(f"{self.path}: episode array {key!r} contains NaN or inf")

    def drop_last_episode(self) -> None:
        """Remove the last episode, atomically."""
        self._require_writable()
        if self.n_episodes == 0:
            raise DatasetError(f"{self.path}: no episode to drop")
        target = {"n_episodes": self.n_episodes - 1, "n_steps": int(self._episode_ends[-2]) if
                  self.n_episodes > 1 else 0, "keys": list(self._keys)}
        meta = self._root["meta"]
        # Recording the smaller state commits the drop: a crash from here on completes it on reopen.
        meta.attrs[PENDING_ATTR] = target
        self._truncate_to(target)
        del meta.attrs[PENDING_ATTR]
        self._episode_ends = self._episode_ends[:-1].copy()

    def add_key(self, key: str, compute: Callable[[dict[str, np.ndarray]], np.ndarray],
                inputs: Sequence[str] | None = None, progress: bool = True) -> None:
        """Add array ``data/<key>`` computed episode by episode, atomically.

        ``compute`` receives ``{input: (L, *shape)}`` of one episode (``inputs`` defaults to
        all keys) and returns ``(L, *new_shape)``. Until every episode is written the new key
        is invisible, and a crash leaves the dataset without it.
        """
        self._require_writable()
        if key in self._keys:
            raise DatasetError(f"{self.path}: data/{key} already exists")
        if self.n_episodes == 0:
            raise DatasetError(f"{self.path}: cannot add data/{key} to a dataset with no episodes")
        from tqdm import tqdm

        inputs = self._keys if inputs is None else list(inputs)
        with self._pending_write():
            target = None
            episodes = tqdm(range(self.n_episodes), desc=f"data/{key}", unit="episode", disable=not progress)
            for index in episodes:
                rows = self.episode_slice(index)
                values = np.asarray(compute(self.get_episode(index, inputs)))
                if values.ndim < 1 or len(values) != rows.stop - rows.start:
                    raise DatasetError(f"{self.path}: computing data/{key} for episode {index} gave shape "
                                       f"{values.shape}; expected {rows.stop - rows.start} rows")
                if target is None:
                    target = self._create_array(key, values.shape[1:], values.dtype)
                    target.resize((self.n_steps, *values.shape[1:]))
                elif values.shape[1:] != target.shape[1:]:
                    raise DatasetError(f"{self.path}: computing data/{key} for episode {index} gave per-step "
                                       f"shape {values.shape[1:]}, earlier episodes {target.shape[1:]}")
                target[rows] = values
        self._keys = sorted([*self._keys, key])

    def _create_array(self, key: str, step_shape: tuple[int, ...], dtype: np.dtype) -> zarr.Array:
        row_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        chunk_rows = max(1, CHUNK_BYTES // row_bytes)
        return self._root["data"].create_array(key, shape=(0, *step_shape), chunks=(chunk_rows, *step_shape),
                                               dtype=dtype, compressors=COMPRESSOR, fill_value=0)

    @contextmanager
    def _pending_write(self, new_attrs: Mapping | None = None):
        """Record the committed state, run the writes and the attrs update, commit; roll back on error."""
        record = {"n_episodes": self.n_episodes, "n_steps": self.n_steps, "keys": list(self._keys),
                  "attrs": self._root.attrs.asdict() if new_attrs else None}
        meta = self._root["meta"]
        meta.attrs[PENDING_ATTR] = record
        try:
            yield
            if new_attrs:
                self._root.attrs.update(dict(new_attrs))
        except BaseException:
            self._truncate_to(record)
            del meta.attrs[PENDING_ATTR]
            raise
        del meta.attrs[PENDING_ATTR]

    def _truncate_to(self, record: Mapping) -> None:
        """Cut every array back to the recorded state, delete keys it does not list, restore its attrs."""
        if record.get("attrs") is not None:
            self._root.attrs.put(dict(record["attrs"]))
        data = self._root["data"]
        keep = set(record["keys"])
        for key, member in list(data.members()):
            if key not in keep:
                del data[key]
            elif member.shape[0] != record["n_steps"]:
                member.resize((int(record["n_steps"]), *member.shape[1:]))
        ends = self._root["meta"]["episode_ends"]
        if ends.shape[0] != record["n_episodes"]:
            ends.resize((int(record["n_episodes"]),))

    def __repr__(self) -> str:
        return (f"ReplayBuffer({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
                f"steps={self.n_steps}, keys={self._keys})")


def _is_zarr_dir(path: Path) -> bool:
    return (path / ".zgroup").is_file() or (path / "zarr.json").is_file()
