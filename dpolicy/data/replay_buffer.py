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
against power loss (files are not fsynced). One writer at a time. Every chunk is written, even
one that holds only zeros (zarr's ``write_empty_chunks``), so a missing chunk file always means
damage.

Integrity. Opening checks, for every array it will read (``meta/episode_ends`` and ``data/*``),
without decoding anything: that the file of every chunk its shape and chunk grid declare exists
(zarr would silently read a missing one as zeros); that its dtype is what the data layer expects
(:data:`EXPECTED_DTYPES`); and that each chunk file is as long as its codec header says and
decompresses to the size the array's chunk shape and dtype give (Blosc and Zstandard frames, and
uncompressed chunks). The Blosc C decoder trusts the sizes in its header, so a truncated file must
never reach it. Chunks are then decoded one at a time; a chunk that fails is reported as a
:class:`DatasetError` naming the array and the chunk, and is never handed to the codec again in
this process. :func:`verify` decodes every chunk and checks every value (``dpolicy data verify``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec
from zarr.codecs import BytesCodec, ShardingCodec, TransposeCodec
from zarr.errors import NodeNotFoundError
from zarr.storage import LocalStore, ZipStore

from dpolicy.errors import DatasetError

__all__ = ["EXPECTED_DTYPES", "DatasetError", "ReplayBuffer", "VerifyReport", "verify"]

#: Target uncompressed size of one chunk of a newly created array.
CHUNK_BYTES = 2 * 1024 * 1024
#: Compression of newly created arrays (see the module docstring for the choice).
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
#: Attribute of the ``meta`` group that marks an unfinished write (see the module docstring).
PENDING_ATTR = "dpolicy_pending"
#: Chunk length of ``meta/episode_ends``.
EPISODE_ENDS_CHUNK = 4096

_NUMERIC_KINDS = "biuf"
#: Arrays are always written with every chunk stored (see the module docstring).
_WRITE_CONFIG = {"write_empty_chunks": True}

_FLOATING = ("a floating-point dtype (float16/32/64)", lambda dtype: dtype.kind == "f")
_IMAGES = ("uint8 or a floating-point dtype (images, read as uint8)",
           lambda dtype: dtype == np.uint8 or dtype.kind == "f")
_NUMERIC = ("a numeric (bool/int/float) array with one row per step", lambda dtype: dtype.kind in _NUMERIC_KINDS)
#: Dtype the data layer expects of an array: (description, test). ``data/<key>`` not listed here
#: must be numeric; keys named like images (``img``, ``image``, ``rgb``, ``*_img``, ``*_image``,
#: ``*_rgb``) are images. datasets.py reads low-dim keys as float32 and images as uint8.
EXPECTED_DTYPES: dict[str, tuple[str, Callable[[np.dtype], bool]]] = {
    "meta/episode_ends": ("a 1-D integer array", lambda dtype: dtype.kind in "iu"),
    "data/action": _FLOATING,
    "data/state": _FLOATING,
    "data/keypoint": _FLOATING,
    "data/img": _IMAGES,
}
_IMAGE_NAMES = ("img", "image", "rgb")


def is_image_name(key: str) -> bool:
    """Whether an array named ``key`` holds images by the data layer's naming (img, image, rgb, *_img, ...)."""
    return key in _IMAGE_NAMES or key.endswith(tuple(f"_{suffix}" for suffix in _IMAGE_NAMES))


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
        self._chunks = _Chunks(path, _StoreFiles(path, isinstance(store, ZipStore)), self.zarr_format)
        self._episode_ends = np.zeros(0, dtype=np.int64)
        self._keys: list[str] = []
        self._committed_attrs: dict | None = None  # set when a read-only view hides a pending attrs update
        try:
            self._load_structure()
        except BaseException:
            self._chunks.files.close()
            raise

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open a dataset: a zarr directory (``mode`` "r" or "a") or a ``.zip`` (read-only).

        In mode "a" an unfinished write left by a crashed writer is rolled back first.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        root, store = cls._open_root(path, mode)
        try:
            return cls(root, path, mode, store)
        except BaseException:
            store.close()
            raise

    @staticmethod
    def _open_root(path: Path, mode: str) -> tuple[zarr.Group, LocalStore | ZipStore]:
        if path.suffix == ".zip":
            if mode != "r":
                raise DatasetError(f"{path}: zip stores are read-only; unzip to a directory to write to it")
            if not path.is_file():
                raise DatasetError(f"{path}: no such file (expected a zipped zarr store)")
            try:
                zipfile.ZipFile(path).close()
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
                raise DatasetError(f"{path}: not a readable zip file ({type(err).__name__}: {_first_line(err)}); "
                                   "expected a zipped zarr store") from err
            store = ZipStore(path, mode="r")
        else:
            if not path.exists():
                raise DatasetError(f"{path}: no such dataset (expected a zarr directory or .zip); "
                                   "create one with ReplayBuffer.create")
            if not path.is_dir():
                raise DatasetError(f"{path}: not a zarr store (expected a directory or a .zip file)")
            store = LocalStore(path, read_only=mode == "r")
        try:  # the files themselves, not a consolidated copy of their metadata, are what is checked
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+", use_consolidated=False)
        except (NodeNotFoundError, FileNotFoundError) as err:
            store.close()
            raise DatasetError(f"{path}: not a zarr store: no group at its root "
                               "(expected .zgroup for zarr format 2 or zarr.json for format 3)") from err
        except _METADATA_ERRORS as err:
            store.close()
            raise DatasetError(f"{path}: cannot read the root group's metadata (.zgroup and .zattrs, or "
                               f"zarr.json): {type(err).__name__}: {_first_line(err)}") from err
        return root, store

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
                          compressors=COMPRESSOR, fill_value=0, config=_WRITE_CONFIG)
        return cls(root, path, "a", store)

    def close(self) -> None:
        """Release the store (needed for zip stores; harmless otherwise)."""
        self._chunks.files.close()
        self._store.close()

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ structure
    def _fail(self, message: str) -> DatasetError:
        return DatasetError(f"{self.path}: {message}")

    def _load_structure(self) -> None:
        """Read and validate episode_ends and the data arrays; roll back a pending write in mode "a".

        Every array's chunk files are checked before any chunk is decoded (module docstring)."""
        fmt = self.zarr_format
        meta = self._group("meta", "meta/episode_ends: 1-D integer array of exclusive episode ends")
        with self._reading_metadata("meta/episode_ends", fmt):
            ends_array = meta.get("episode_ends")
            pending = meta.attrs.get(PENDING_ATTR)
        if not isinstance(ends_array, zarr.Array):
            raise self._fail("missing array meta/episode_ends (expected a 1-D integer array with the "
                             "exclusive end step of each episode)")
        problem = _dtype_problem("meta/episode_ends", ends_array, fmt)
        if problem:
            raise self._fail(problem)
        try:
            pending = _parse_pending(pending)
        except ValueError as err:
            raise self._fail(f"{err} ({_meta_file('meta', fmt, group=True)})") from None
        n_ends = ends_array.shape[0] if pending is None else min(ends_array.shape[0], pending["n_episodes"])
        self._raise_first(self._chunks.scan("meta/episode_ends", ends_array, n_ends))
        ends = np.asarray(self._chunks.read_rows("meta/episode_ends", ends_array, 0, n_ends), dtype=np.int64)
        problem = _episode_ends_problem(ends)
        if problem:
            raise self._fail(problem)
        n_steps = int(ends[-1]) if len(ends) else 0
        data = self._group("data", "data/<key> arrays with one row per step")
        committed_keys = None if pending is None else set(pending["keys"])
        members = {}
        for key, member in self._members(data, fmt):
            if committed_keys is not None and key not in committed_keys:
                continue
            if not isinstance(member, zarr.Array):
                raise self._fail(f"data/{key} is a group; expected only arrays (one row per step) in data/")
            problem = _dtype_problem(f"data/{key}", member, fmt)
            if problem:
                raise self._fail(problem)
            members[key] = member
        lengths = {key: member.shape[0] for key, member in members.items()}
        tolerated = (lambda n: n >= n_steps) if pending is not None else (lambda n: n == n_steps)
        if not all(tolerated(n) for n in lengths.values()):
            listing = ", ".join(f"data/{k}: {n}" for k, n in lengths.items())
            raise self._fail(f"every data array needs one row per step, {n_steps} in all "
                             f"(meta/episode_ends[-1]); found {listing}")
        for key, member in members.items():
            self._raise_first(self._chunks.scan(f"data/{key}", member, n_steps))
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

    def _raise_first(self, problems: Iterable[str]) -> None:
        for problem in problems:
            raise self._fail(f"{problem} (`dpolicy data verify {self.path}` lists every problem)")

    @contextmanager
    def _reading_metadata(self, name: str, fmt: int, group: bool = False):
        """Turn a metadata file zarr cannot parse into a DatasetError naming it."""
        try:
            yield
        except DatasetError:
            raise
        except _METADATA_ERRORS as err:
            raise self._fail(f"cannot read the metadata of {name} ({_meta_file(name, fmt, group)}): "
                             f"{type(err).__name__}: {_first_line(err)}") from err

    def _members(self, group: zarr.Group, fmt: int) -> list[tuple[str, zarr.Array | zarr.Group]]:
        """Sorted (name, node) of a group's children, found in the store's files and opened one by one,
        so that a child whose metadata is unreadable is named."""
        members = []
        for child in self._chunks.files.children(group.path):
            with self._reading_metadata(f"{group.path}/{child}", fmt):
                node = group.get(child)
            if node is not None:
                members.append((child, node))
        return members

    def _group(self, name: str, expected: str) -> zarr.Group:
        with self._reading_metadata(f"{name}/", self.zarr_format, group=True):
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
        return {key: self._chunks.read_rows(f"data/{key}", self[key], rows.start, rows.stop)
                for key in (self._keys if keys is None else keys)}

    # ------------------------------------------------------------------ bulk reads
    def iter_blocks(self, key: str, episodes: Sequence[int] | np.ndarray | None = None
                    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_step, rows)`` one stored chunk at a time over the committed steps.

        With ``episodes``, only the rows of those episodes are yielded (in step order) and
        chunks holding none of them are not read. Memory use is one chunk.
        """
        array = self[key]
        mask = None if episodes is None else self._step_mask(episodes)
        chunk = _chunk_grid(array)[0]
        for start in range(0, self.n_steps, chunk):
            stop = min(start + chunk, self.n_steps)
            if mask is None:
                yield start, self._chunks.read_rows(f"data/{key}", array, start, stop)
                continue
            selected = mask[start:stop]
            if selected.any():
                block = self._chunks.read_rows(f"data/{key}", array, start, stop)
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
                    target = data[key].with_config(_WRITE_CONFIG)
                    target.resize((start + n_new, *target.shape[1:]))
                else:
                    target = self._create_array(key, values.shape[1:], values.dtype)
                    target.resize((n_new, *values.shape[1:]))
                target[start:start + n_new] = values
            ends = self._root["meta"]["episode_ends"].with_config(_WRITE_CONFIG)
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
                                               dtype=dtype, compressors=COMPRESSOR, fill_value=0,
                                               config=_WRITE_CONFIG)

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


# ---------------------------------------------------------------------------------- integrity
#: Exceptions zarr raises for metadata it cannot parse (bad JSON, unknown dtype or codec, ...).
_METADATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                    NotImplementedError, RecursionError, UnicodeError, zipfile.BadZipFile, zlib.error, EOFError)
#: Bytes read from the start of a chunk file to check its frame header.
_HEAD_BYTES = {"blosc": 16, "zstd": 18, "raw": 0, None: 0}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Problems listed per array by :func:`verify` (the others are counted), and the count at which it
#: stops looking at that array (a shape declaring millions of missing chunks).
VERIFY_MAX_PROBLEMS = 20
VERIFY_STOP_AFTER = 10_000
#: Chunks found corrupt in this process, by file identity (path, size, mtime...): never decoded again.
_KNOWN_BAD: dict[tuple, str] = {}


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _meta_file(name: str, fmt: int, group: bool = False) -> str:
    """The metadata file(s) of node ``name`` ("data/action", "meta/") in zarr format ``fmt``."""
    base = name.rstrip("/")
    prefix = f"{base}/" if base else ""
    if fmt == 3:
        return f"{prefix}zarr.json"
    return f"{prefix}{'.zgroup' if group else '.zarray'} and {prefix}.zattrs"


def _expected_dtype(name: str) -> tuple[str, Callable[[np.dtype], bool]]:
    if name in EXPECTED_DTYPES:
        return EXPECTED_DTYPES[name]
    if is_image_name(name.rsplit("/", 1)[-1]):
        return _IMAGES
    return _NUMERIC


def _dtype_problem(name: str, array: zarr.Array, fmt: int) -> str | None:
    """Why ``array`` (named ``name``) does not have the shape rank and dtype the data layer expects."""
    description, accepts = _expected_dtype(name)
    rank_ok = array.ndim == 1 if name == "meta/episode_ends" else array.ndim >= 1
    if rank_ok and accepts(array.dtype):
        return None
    field_name = "dtype" if fmt == 2 else "data_type"
    return (f"{name} has shape {tuple(array.shape)} and dtype {array.dtype}; expected {description} "
            f'(see "{field_name}" and "shape" in {name}/{".zarray" if fmt == 2 else "zarr.json"})')


def _parse_pending(value) -> dict | None:
    """The record of an unfinished write (see the module docstring), validated; None when there is none."""
    if value is None:
        return None
    ok = (isinstance(value, dict) and all(isinstance(value.get(k), int) and not isinstance(value.get(k), bool)
                                          and value[k] >= 0 for k in ("n_episodes", "n_steps"))
          and isinstance(value.get("keys"), list) and all(isinstance(k, str) for k in value["keys"])
          and isinstance(value.get("attrs"), dict | None))
    if not ok:
        raise ValueError(f"meta attribute {PENDING_ATTR} is malformed: {_shorten(value)}; expected "
                         "{n_episodes, n_steps, keys, attrs} as recorded by an unfinished write")
    return dict(value)


def _shorten(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _episode_ends_problem(ends: np.ndarray) -> str | None:
    bad = np.flatnonzero(np.diff(ends, prepend=0) <= 0)
    if not bad.size:
        return None
    i = int(bad[0])
    previous = "0 (the start)" if i == 0 else str(ends[i - 1])
    return (f"meta/episode_ends must be strictly increasing (exclusive end step of each episode, every "
            f"episode at least 1 step); entry {i} is {ends[i]} after {previous}")


def _chunk_grid(array: zarr.Array) -> tuple[int, ...]:
    """Shape of the unit stored in one file: the shard of a sharded array, else the chunk."""
    return tuple(array.shards or array.chunks)


def _chunk_counts(shape: Sequence[int], grid: Sequence[int], n_rows: int) -> list[int]:
    return [-(-int(n) // int(c)) for n, c in zip((n_rows, *shape[1:]), grid, strict=True)]


def _chunk_key(array: zarr.Array, coords: tuple[int, ...]) -> str:
    key = array.metadata.encode_chunk_key(coords)
    return f"{array.path}/{key}" if array.path else key


def _chunk_name(name: str, coords: tuple[int, ...]) -> str:
    return f"{name}: chunk {'.'.join(map(str, coords))}"


def _frame(array: zarr.Array, grid: tuple[int, ...], fmt: int) -> tuple[str | None, int | None]:
    """How a chunk file of ``array`` is framed ("blosc", "zstd", "raw" or None: unknown) and the
    decompressed size its chunk shape and dtype give (None where codecs in between change it)."""
    metadata = array.metadata
    expected = int(np.prod(grid, dtype=np.int64)) * array.dtype.itemsize
    if fmt == 2:
        plain = not metadata.filters
        compressor = metadata.compressor
        if compressor is None:
            return ("raw", expected) if plain else (None, None)
        kind = {"blosc": "blosc", "zstd": "zstd"}.get(getattr(compressor, "codec_id", None))
        return kind, (expected if plain and kind else None)
    codecs = tuple(metadata.codecs)
    if any(isinstance(codec, ShardingCodec) for codec in codecs):
        return None, None  # inner chunks are framed inside the shard file
    plain = (all(isinstance(c, TransposeCodec) for c in codecs if isinstance(c, ArrayArrayCodec))
             and all(isinstance(c, BytesCodec) for c in codecs if isinstance(c, ArrayBytesCodec)))
    outer = [codec for codec in codecs if isinstance(codec, BytesBytesCodec)]
    if not outer:
        return ("raw", expected) if plain else (None, None)
    name = outer[-1].to_dict().get("name")
    kind = {"blosc": "blosc", "numcodecs.blosc": "blosc", "zstd": "zstd", "numcodecs.zstd": "zstd"}.get(name)
    return kind, (expected if plain and len(outer) == 1 and kind else None)


def _zstd_content_size(head: bytes) -> int | None:
    """Decompressed size a Zstandard frame header declares (RFC 8878, 3.1.1), None if it does not."""
    if len(head) < 5 or head[:4] != _ZSTD_MAGIC:
        return None
    descriptor = head[4]
    single_segment = (descriptor >> 5) & 1
    size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    if not size_bytes or len(head) < start + size_bytes:
        return None
    value = int.from_bytes(head[start:start + size_bytes], "little")
    return value + 256 if size_bytes == 2 else value


def _frame_problem(kind: str | None, expected: int | None, size: int, head: bytes, what: str) -> str | None:
    """Why a chunk file of ``size`` bytes starting with ``head`` cannot be a valid chunk, else None.
    ``what`` explains ``expected``, e.g. "for a chunk (161, 2) of float32 (...)"."""
    if kind == "raw":
        if expected is not None and size != expected:
            return f"has {size} bytes; expected {expected} {what}, stored uncompressed"
        return None
    if kind == "blosc":
        if size < 16:
            return f"is truncated: {size} bytes, shorter than the 16-byte Blosc header"
        declared_bytes, _block_size, declared_size = struct.unpack_from("<III", head, 4)
        if size != declared_size:
            state = "truncated" if size < declared_size else "corrupt"
            return f"is {state}: {size} bytes, its Blosc header says {declared_size}"
        content = declared_bytes
    elif kind == "zstd":
        content = _zstd_content_size(head)
    else:
        return None
    if expected is not None and content is not None and content != expected:
        return f"decompresses to {content} bytes by its {kind.capitalize()} header; expected {expected} {what}"
    return None


class _StoreFiles:
    """The files of a directory or zip store, read directly: no zarr, no codec."""

    def __init__(self, path: Path, is_zip: bool):
        self.path = Path(path)
        self._zip = None
        self._members: dict[str, zipfile.ZipInfo] | None = None
        if is_zip:
            self._zip = zipfile.ZipFile(self.path)
            self._members = {info.filename: info for info in self._zip.infolist()}
            self._raw = os.open(self.path, os.O_RDONLY)
            info = os.fstat(self._raw)
            self._zip_id = (str(self.path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            os.close(self._raw)
            self._zip = None

    def _zip_head(self, info: zipfile.ZipInfo, n: int) -> bytes:
        """First ``n`` bytes of a zip member: straight from the file for a stored (uncompressed)
        member, as zarr writes them (ZipFile.open costs ~0.1 ms a member), else through zipfile."""
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            local = os.pread(self._raw, 30, info.header_offset)
            if len(local) == 30 and local[:4] == b"PK\x03\x04":
                name_length, extra_length = struct.unpack_from("<HH", local, 26)
                start = info.header_offset + 30 + name_length + extra_length
                return os.pread(self._raw, min(n, info.file_size), start)
        with self._zip.open(info) as file:
            return file.read(n)

    def head(self, key: str, n: int) -> tuple[int, bytes, tuple] | None:
        """(size, first ``n`` bytes, identity) of the file of ``key``; None when there is no such file."""
        if self._members is not None:
            info = self._members.get(key)
            if info is None or info.is_dir():
                return None
            data = self._zip_head(info, n) if n else b""
            return info.file_size, data, (*self._zip_id, key, info.CRC, info.file_size)
        name = os.path.join(self.path, key)
        try:
            if n:
                fd = os.open(name, os.O_RDONLY)
                try:
                    info = os.fstat(fd)
                    data = os.read(fd, n) if stat.S_ISREG(info.st_mode) else b""
                finally:
                    os.close(fd)
            else:
                info, data = os.stat(name), b""
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return info.st_size, data, (name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                                    info.st_ctime_ns)

    def identity(self, key: str) -> tuple | None:
        try:
            found = self.head(key, 0)
        except OSError:
            return None
        return None if found is None else found[2]

    def children(self, prefix: str) -> list[str]:
        """Names of the folders directly under ``prefix`` (the candidate child nodes of a group)."""
        if self._members is not None:
            start = f"{prefix}/" if prefix else ""
            names = {name[len(start):].split("/", 1)[0] for name in self._members
                     if name.startswith(start) and "/" in name[len(start):]}
        else:
            try:
                names = {entry.name for entry in os.scandir(self.path / prefix) if entry.is_dir()}
            except OSError:
                names = set()
        return sorted(name for name in names if name and not name.startswith("."))


@dataclass
class ArrayReport:
    """What :func:`verify` found in one array."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: int = 0            # chunks the shape and chunk grid declare (over the rows checked)
    stored_bytes: int = 0      # bytes of their files
    decoded_chunks: int = 0
    decoded_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    unlisted: int = 0          # problems counted but not listed (past VERIFY_MAX_PROBLEMS)
    stopped: bool = False      # VERIFY_STOP_AFTER problems: the rest of the array was not looked at

    def add(self, problem: str) -> bool:
        """Record a problem; False when there are so many that the caller should stop looking."""
        if len(self.problems) < VERIFY_MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.unlisted += 1
        self.stopped = len(self.problems) + self.unlisted >= VERIFY_STOP_AFTER
        return not self.stopped

    @property
    def n_problems(self) -> int:
        return len(self.problems) + self.unlisted


@dataclass
class VerifyReport:
    """What :func:`verify` found: per-array reports and problems of the dataset as a whole."""

    path: Path
    zarr_format: int
    n_episodes: int | None = None
    n_steps: int | None = None
    arrays: dict[str, ArrayReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def all_problems(self) -> list[str]:
        found = list(self.problems)
        for report in self.arrays.values():
            found += report.problems
            if report.unlisted:
                more = "at least " if report.stopped else ""
                plural = "s" if report.unlisted > 1 else ""
                found.append(f"{report.name}: {more}{report.unlisted} more problem{plural}, not listed")
        return found

    @property
    def ok(self) -> bool:
        return not self.all_problems


class _Chunks:
    """The chunks of one store's arrays: their files checked without decoding (:meth:`scan`), then
    decoded one chunk per read (:meth:`read_rows`); a chunk found bad is never decoded again."""

    def __init__(self, path: Path, files: _StoreFiles, fmt: int):
        self.path, self.files, self.fmt = path, files, fmt
        self.bad: dict[tuple[str, tuple[int, ...]], str] = {}
        self.reports: dict[str, ArrayReport] = {}

    def report(self, name: str, array: zarr.Array) -> ArrayReport:
        if name not in self.reports:
            self.reports[name] = ArrayReport(name, tuple(array.shape), str(array.dtype))
        return self.reports[name]

    def scan(self, name: str, array: zarr.Array, n_rows: int) -> Iterator[str]:
        """Problems with the files of the chunks holding rows [0, n_rows) of ``array``, one per chunk."""
        grid = _chunk_grid(array)
        dtype_field, chunks_field, file = (("dtype", "chunks", f"{name}/.zarray") if self.fmt == 2 else
                                           ("data_type", "chunk_grid", f"{name}/zarr.json"))
        if any(int(c) <= 0 for c in grid) or len(grid) != array.ndim:
            problem = (f"{name} has chunks {grid} for shape {tuple(array.shape)}; expected a positive chunk size "
                       f'per dimension (see "{chunks_field}" in {file})')
            self.bad[name, None] = problem
            yield problem
            return
        kind, expected = _frame(array, grid, self.fmt)
        what = f'for a chunk {grid} of {array.dtype} (were "{dtype_field}" or "{chunks_field}" in {file} changed?)'
        report = self.report(name, array)
        counts = _chunk_counts(array.shape, grid, min(n_rows, array.shape[0]))
        for coords in itertools.product(*(range(n) for n in counts)):
            report.chunks += 1
            key = _chunk_key(array, coords)
            label = f"{_chunk_name(name, coords)} (file {key})"
            try:
                found = self.files.head(key, _HEAD_BYTES[kind])
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
                problem = f"{label} cannot be read from the zip: {type(err).__name__}: {_first_line(err)}"
            else:
                if found is None:
                    problem = (f"{_chunk_name(name, coords)} is missing (no file {key}); the array's shape "
                               f"{tuple(array.shape)} in chunks of {grid} declares it, and zarr would read it "
                               "as zeros")
                else:
                    size, head, identity = found
                    report.stored_bytes += size
                    problem = _KNOWN_BAD.get(identity)
                    if problem is None:
                        problem = _frame_problem(kind, expected, size, head, what)
                        problem = problem and f"{label} {problem}"
            if problem:
                self.bad[name, coords] = problem
                yield problem

    def read_chunk(self, name: str, array: zarr.Array, coords: tuple[int, ...], region: tuple[slice, ...]
                   ) -> np.ndarray:
        """``array[region]``, a region inside chunk ``coords``; a decoding failure is a DatasetError."""
        problem = self.bad.get((name, coords))
        if problem is not None:
            raise DatasetError(f"{self.path}: {problem}")
        try:
            block = array[region]
        except Exception as err:  # any failure to decode stored bytes means the chunk is damaged
            key = _chunk_key(array, coords)
            problem = f"{_chunk_name(name, coords)} (file {key}) cannot be decoded: {type(err).__name__}: " \
                      f"{_first_line(err)}"
            self.bad[name, coords] = problem
            identity = self.files.identity(key)
            if identity is not None:
                _KNOWN_BAD[identity] = problem
            raise DatasetError(f"{self.path}: {problem}") from err
        report = self.report(name, array)
        report.decoded_chunks += 1
        report.decoded_bytes += block.nbytes
        return block

    def read_rows(self, name: str, array: zarr.Array, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``array``, read one stored chunk at a time."""
        grid = _chunk_grid(array)
        shape = tuple(array.shape)
        if stop <= start:
            return np.empty((0, *shape[1:]), dtype=array.dtype)
        first, last = start // grid[0], -(-stop // grid[0])
        across = [range(n) for n in _chunk_counts(shape, grid, 1)[1:]]
        if last - first == 1 and all(len(r) == 1 for r in across):
            return self.read_chunk(name, array, (first, *[0] * len(across)), (slice(start, stop),))
        out = np.empty((stop - start, *shape[1:]), dtype=array.dtype)
        for row in range(first, last):
            lo, hi = max(start, row * grid[0]), min(stop, (row + 1) * grid[0])
            for rest in itertools.product(*across):
                inner = tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(rest, grid[1:], shape[1:],
                                                                                     strict=True))
                out[(slice(lo - start, hi - start), *inner)] = self.read_chunk(
                    name, array, (row, *rest), (slice(lo, hi), *inner))
        return out


def verify(path: str | Path, progress: bool = False, progress_min_chunks: int = 0) -> VerifyReport:
    """Check a dataset completely: every check of :meth:`ReplayBuffer.open`, then decode every chunk of
    every array, check that float values are finite and that episode ends are strictly increasing and
    end where the arrays do. Problems are collected (not raised); a store that is not a zarr dataset at
    all raises :class:`DatasetError`. ``progress`` shows a progress bar over the chunks (tqdm, on
    stderr) when there are at least ``progress_min_chunks``."""
    path = Path(path)
    root, store = ReplayBuffer._open_root(path, "r")
    fmt = int(root.metadata.zarr_format)
    report = VerifyReport(path=path, zarr_format=fmt)
    try:
        chunks = _Chunks(path, _StoreFiles(path, isinstance(store, ZipStore)), fmt)
    except BaseException:
        store.close()
        raise
    try:
        _verify_into(report, root, chunks, progress, progress_min_chunks)
    finally:
        chunks.files.close()
        store.close()
    report.arrays = chunks.reports
    return report


def _verify_into(report: VerifyReport, root: zarr.Group, chunks: _Chunks, progress: bool,
                 progress_min_chunks: int) -> None:
    fmt = chunks.fmt

    def metadata(name: str, read: Callable, group: bool = False):
        try:
            return read()
        except _METADATA_ERRORS as err:
            report.problems.append(f"cannot read the metadata of {name} ({_meta_file(name, fmt, group)}): "
                                   f"{type(err).__name__}: {_first_line(err)}")
            return None

    def group(name: str) -> zarr.Group | None:
        node = metadata(f"{name}/", lambda: root.get(name), group=True)
        if not isinstance(node, zarr.Group):
            report.problems.append(f"missing group {name}/")
            return None
        return node

    meta, data = group("meta"), group("data")
    ends_array = pending = None
    if meta is not None:
        ends_array = metadata("meta/episode_ends", lambda: meta.get("episode_ends"))
        if not isinstance(ends_array, zarr.Array):
            report.problems.append("missing array meta/episode_ends (expected a 1-D integer array with the "
                                   "exclusive end step of each episode)")
            ends_array = None
        try:
            pending = _parse_pending(metadata("meta/", lambda: meta.attrs.get(PENDING_ATTR), group=True))
        except ValueError as err:
            report.problems.append(str(err))
        if pending is not None:
            report.notes.append(f"an unfinished write is recorded ({PENDING_ATTR}); checking the committed "
                                f"{pending['n_episodes']} episodes, {pending['n_steps']} steps")
    members: list[tuple[str, zarr.Array]] = []
    if data is not None:
        found = []
        for child in chunks.files.children("data"):
            node = metadata(f"data/{child}", lambda child=child: data.get(child))
            if node is not None:
                found.append((child, node))
        for key, node in found:
            if not isinstance(node, zarr.Array):
                report.problems.append(f"data/{key} is a group; expected only arrays (one row per step) in data/")
            elif pending is not None and key not in pending["keys"]:
                report.notes.append(f"data/{key} is not committed (an unfinished write added it); skipped")
            else:
                members.append((key, node))

    # what to read: meta/episode_ends first, then data/<key> over the committed rows
    ends = None
    if ends_array is not None:
        problem = _dtype_problem("meta/episode_ends", ends_array, fmt)
        ends_report = chunks.report("meta/episode_ends", ends_array)
        if problem:
            ends_report.add(problem)
        else:
            n_ends = ends_array.shape[0] if pending is None else min(ends_array.shape[0], pending["n_episodes"])
            scan = [p for p in chunks.scan("meta/episode_ends", ends_array, n_ends)]
            for problem in scan:
                ends_report.add(problem)
            if not scan:
                try:
                    ends = np.asarray(chunks.read_rows("meta/episode_ends", ends_array, 0, n_ends), dtype=np.int64)
                except DatasetError as err:
                    ends_report.add(str(err).removeprefix(f"{report.path}: "))
    if ends is not None:
        problem = _episode_ends_problem(ends)
        if problem:
            report.problems.append(problem)
        report.n_episodes = len(ends)
        report.n_steps = int(ends[-1]) if len(ends) else 0
    n_steps = report.n_steps
    lengths = {key: array.shape[0] for key, array in members}
    if n_steps is not None:
        fits = (lambda n: n >= n_steps) if pending is not None else (lambda n: n == n_steps)
        wrong = {key: n for key, n in lengths.items() if not fits(n)}
        if wrong:
            listing = ", ".join(f"data/{key}: {n}" for key, n in wrong.items())
            report.problems.append(f"every data array needs one row per step, {n_steps} in all "
                                   f"(meta/episode_ends[-1]); found {listing}")
    elif len(set(lengths.values())) > 1:
        listing = ", ".join(f"data/{key}: {n}" for key, n in lengths.items())
        report.problems.append(f"data arrays of different lengths: {listing}")

    plan = []
    for key, array in members:
        name = f"data/{key}"
        array_report = chunks.report(name, array)
        problem = _dtype_problem(name, array, fmt)
        if problem:
            array_report.add(problem)
        n_rows = array.shape[0] if n_steps is None else min(array.shape[0], n_steps)
        for problem in chunks.scan(name, array, n_rows):
            if not array_report.add(problem):
                break  # too many: the rest of its chunks are neither checked nor decoded
        numeric = array.ndim >= 1 and array.dtype.kind in _NUMERIC_KINDS
        if numeric and not array_report.stopped and (name, None) not in chunks.bad:
            plan.append((name, array, n_rows))

    from tqdm import tqdm

    total = sum(int(np.prod(_chunk_counts(a.shape, _chunk_grid(a), n), dtype=np.int64)) for _, a, n in plan)
    with tqdm(total=total, desc=f"verify {report.path.name}", unit="chunk",
              disable=not progress or total < progress_min_chunks) as bar:
        for name, array, n_rows in plan:
            _verify_values(chunks, name, array, n_rows, ends, bar)


def _verify_values(chunks: _Chunks, name: str, array: zarr.Array, n_rows: int, ends: np.ndarray | None,
                   bar) -> None:
    """Decode every chunk of rows [0, n_rows) of ``array``; float values must be finite."""
    array_report = chunks.reports[name]
    grid, shape = _chunk_grid(array), tuple(array.shape)
    for coords in itertools.product(*(range(n) for n in _chunk_counts(shape, grid, n_rows))):
        bar.update(1)
        if (name, coords) in chunks.bad:
            continue  # already reported by the scan
        limits = (n_rows, *shape[1:])
        region = tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(coords, grid, limits, strict=True))
        try:
            block = chunks.read_chunk(name, array, coords, region)
        except DatasetError as err:
            keep_going = array_report.add(str(err).removeprefix(f"{chunks.path}: "))
        else:
            keep_going = True
            if block.dtype.kind == "f" and block.size and not (np.isfinite(block.min()) and np.isfinite(block.max())):
                row = int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0])
                step = region[0].start + row
                where = f"at step {step}"
                if ends is not None:
                    where += f" (episode {int(np.searchsorted(ends, step, side='right'))})"
                keep_going = array_report.add(f"{name} contains NaN or inf {where}, in {_chunk_name(name, coords)}; "
                                              "expected finite values")
        if not keep_going:
            break

