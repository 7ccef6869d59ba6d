"""Windowed training datasets over a zarr replay buffer.

One generic class, :class:`WindowDataset`, is driven by a description of the observation
keys (:class:`ObsSource`: which raw arrays to read, their per-step shapes, how to combine
them). A task config either declares its keys (:func:`make_dataset`: each observation key's
source arrays, per-step shape, type and frames, and the action's) or names a preset written in
Python: :func:`make_pusht_lowdim_dataset` and :func:`make_pusht_image_dataset`.

At construction the raw arrays of the used episodes (training + validation) are read once
into memory -- images as uint8, converted chunk by chunk -- and every observation key is
computed per step. A batch is then pure numpy fancy indexing over the precomputed window
index (see :mod:`dpolicy.data.windows`): observations take the first ``n_obs_steps`` steps of
each window, actions all ``horizon`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dpolicy.data.normalizer import Normalizer
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer
from dpolicy.data.windows import split_episodes, window_index


def _first_input(*arrays: np.ndarray) -> np.ndarray:
    return arrays[0]


@dataclass(frozen=True)
class ObsSource:
    """How one observation key is built from raw dataset arrays.

    ``inputs`` maps raw keys (``data/<key>``) to their expected per-step shape; ``build``
    receives the loaded inputs in that order, each ``(N, *shape)``, and returns ``(N, *obs_shape)``
    (default: the first input unchanged). ``type`` is ``"low_dim"`` (loaded as float32) or
    ``"rgb"`` (HWC images, loaded as uint8).
    """

    inputs: Mapping[str, tuple[int, ...]]
    build: Callable[..., np.ndarray] = _first_input
    type: str = "low_dim"
    frames: int | None = None  # newest frames of the window the policy encodes (None: all n_obs_steps)

    def __post_init__(self):
        if self.type not in ("low_dim", "rgb"):
            raise ValueError(f"ObsSource.type must be 'low_dim' or 'rgb', got {self.type!r}")
        if not self.inputs:
            raise ValueError("ObsSource needs at least one input array")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"ObsSource.frames must be >= 1, got {self.frames}")


@dataclass
class _Loaded:
    """Per-step arrays of the used episodes, shared by the training and validation views."""

    obs: dict[str, np.ndarray]
    action: np.ndarray
    episode_ends: np.ndarray  # exclusive ends in the compact arrays, one per used episode
    position: dict[int, int] = field(default_factory=dict)  # dataset episode index -> compact index

    def step_mask(self, episodes: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(self.action), dtype=bool)
        for episode in episodes:
            i = self.position[int(episode)]
            mask[(self.episode_ends[i - 1] if i else 0):self.episode_ends[i]] = True
        return mask


class WindowDataset(torch.utils.data.Dataset):
    """Training windows of ``horizon`` steps over the episodes of a zarr dataset.

    As in the original benchmark, windows are padded by repeating an episode's first frame
    ``n_obs_steps - 1`` times and its last frame ``n_action_steps - 1`` times (an episode of
    length L gives L - n_action_steps + 1 windows for horizon 16, To 2, Ta 8; see
    :mod:`dpolicy.data.windows`). ``len(ds)`` counts windows of the training split;
    :meth:`get_validation_dataset` gives the held-out episodes (split by episode, seeded).
    """

    def __init__(self, path: str | Path, obs: Mapping[str, ObsSource], *, action_key: str | ObsSource = "action",
                 action_shape: tuple[int, ...] = (2,), horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8, val_ratio: float = 0.0, seed: int = 42,
                 max_train_episodes: int | None = None):
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(
                f"need 1 <= n_obs_steps <= horizon and 1 <= n_action_steps <= horizon - n_obs_steps + 1, got "
                f"horizon={horizon}, n_obs_steps={n_obs_steps}, n_action_steps={n_action_steps}")
        self.path = Path(path)
        self.horizon, self.n_obs_steps = int(horizon), int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        action = action_key if isinstance(action_key, ObsSource) else ObsSource({action_key: tuple(action_shape)})
        for key, source in obs.items():
            if source.frames is not None and source.frames > self.n_obs_steps:
                raise ValueError(f"observation {key!r}: frames {source.frames} > n_obs_steps {self.n_obs_steps}")
        with ReplayBuffer.open(path) as buffer:
            _check_inputs(buffer, obs, action)
            if buffer.n_episodes == 0:
                raise DatasetError(f"{self.path}: the dataset has no episodes")
            train, val = split_episodes(buffer.n_episodes, val_ratio, seed, max_train_episodes)
            self._loaded = _load(buffer, obs, action, np.union1d(train, val))
        self.train_episode_indices, self.val_episode_indices = train, val
        self.obs_sources = dict(obs)
        self.shape_meta = {
            "obs": {key: {"shape": list(self._loaded.obs[key].shape[1:]), "type": source.type,
                          **({"frames": source.frames} if source.frames is not None else {})}
                    for key, source in obs.items()},
            "action": {"shape": list(action_shape)},
        }
        self.split = "train"
        self._index = self._window_index(train)

    def _window_index(self, episodes: np.ndarray) -> np.ndarray:
        positions = [self._loaded.position[int(e)] for e in episodes]
        return window_index(self._loaded.episode_ends, self.horizon, self.n_obs_steps - 1,
                            self.n_action_steps - 1, episodes=np.array(positions, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes held by the loaded arrays (shared with the validation view) and this window index."""
        arrays = [*self._loaded.obs.values(), self._loaded.action, self._index]
        return int(sum(a.nbytes for a in arrays))

    def __len__(self) -> int:
        return len(self._index)

    def get_batch(self, indices: np.ndarray | list[int]) -> dict:
        """Windows ``indices`` as ``{"obs": {key: (B, To, ...)}, "action": (B, Tp, D)}`` tensors.

        Env units, no normalization; low-dim keys and actions float32, images uint8 HWC.
        """
        indices = np.asarray(indices, dtype=np.int64).ravel()
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"window indices must be in [0, {len(self)}), "
                             f"got {indices.min()}..{indices.max()}")
        steps = self._index[indices]
        obs_steps = steps[:, :self.n_obs_steps]
        return {
            "obs": {key: torch.from_numpy(values[obs_steps]) for key, values in self._loaded.obs.items()},
            "action": torch.from_numpy(self._loaded.action[steps]),
        }

    def __getitem__(self, index: int) -> dict:
        """One window without the batch dimension (for torch DataLoader)."""
        batch = self.get_batch(np.array([index]))
        return {"obs": {key: value[0] for key, value in batch["obs"].items()}, "action": batch["action"][0]}

    def get_validation_dataset(self) -> WindowDataset:
        """The windows of the validation episodes, sharing this dataset's memory."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.split = "val"
        view._index = self._window_index(self.val_episode_indices)
        return view

    def fit_normalizer(self) -> Normalizer:
        """Min-max normalizer fitted on every step of the training episodes (key "action" for actions)."""
        mask = self._loaded.step_mask(self.train_episode_indices)
        data = {key: (values if self.obs_sources[key].type == "rgb" else values[mask])
                for key, values in self._loaded.obs.items()}
        data["action"] = self._loaded.action[mask]
        image_keys = tuple(key for key, source in self.obs_sources.items() if source.type == "rgb")
        return Normalizer.fit(data, image_keys=image_keys)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, split={self.split!r}, windows={len(self)}, "
                f"train_episodes={len(self.train_episode_indices)}, "
                f"val_episodes={len(self.val_episode_indices)}, horizon={self.horizon}, "
                f"n_obs_steps={self.n_obs_steps}, n_action_steps={self.n_action_steps})")


def _check_inputs(buffer: ReplayBuffer, obs: Mapping[str, ObsSource], action: ObsSource) -> None:
    expected = {key: tuple(shape) for key, shape in action.inputs.items()}
    for source in obs.values():
        expected.update({key: tuple(shape) for key, shape in source.inputs.items()})
    for key, shape in expected.items():
        if key not in buffer:
            hint = (" (add rendered images with `dpolicy data render-images PATH`)"
                    if any(s.type == "rgb" and key in s.inputs for s in obs.values()) else "")
            raise DatasetError(f"{buffer.path}: missing array data/{key} with per-step shape {shape}; "
                               f"the dataset has {buffer.keys()}{hint}")
        found = tuple(buffer[key].shape[1:])
        if found != shape:
            raise DatasetError(f"{buffer.path}: data/{key} has per-step shape {found}, expected {shape}")


def _load(buffer: ReplayBuffer, obs: Mapping[str, ObsSource], action: ObsSource,
          episodes: np.ndarray) -> _Loaded:
    raw: dict[tuple[str, str], np.ndarray] = {}

    def read(key: str, kind: str) -> np.ndarray:
        dtype = np.uint8 if kind == "rgb" else np.float32
        if (key, kind) not in raw:
            raw[key, kind] = buffer.load(key, episodes=episodes, dtype=dtype)
        return raw[key, kind]

    def build(name: str, source: ObsSource) -> np.ndarray:
        values = np.asarray(source.build(*(read(key, source.type) for key in source.inputs)))
        if values.ndim < 1 or len(values) != len(read(next(iter(source.inputs)), source.type)):
            raise DatasetError(f"{buffer.path}: building {name} gave shape {values.shape}; "
                               "expected one row per step")
        return np.ascontiguousarray(values, dtype=np.uint8 if source.type == "rgb" else np.float32)

    features = {name: build(f"observation {name!r}", source) for name, source in obs.items()}
    lengths = buffer.episode_lengths[episodes]
    return _Loaded(obs=features, action=build("the action", action), episode_ends=np.cumsum(lengths),
                   position={int(e): i for i, e in enumerate(episodes)})


# ---------------------------------------------------------------------------------- declared
def _flat_concat(*arrays: np.ndarray) -> np.ndarray:
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1) if len(arrays) > 1 \
        else arrays[0].reshape(len(arrays[0]), -1)


def _sources(name: str, entry: Mapping) -> list[str]:
    source = entry.get("source", name)
    sources = [source] if isinstance(source, str) else list(source or [])
    if not sources or not all(isinstance(s, str) and s for s in sources):
        raise DatasetError(f"{name}: source must name one array of the dataset or a list of them, got {source!r}")
    return sources


def _shape(name: str, entry: Mapping) -> tuple[int, ...]:
    shape = entry.get("shape")
    try:
        out = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        out = ()
    if not out or min(out) < 1:
        raise DatasetError(f"{name}: shape must be a list of positive sizes, e.g. [7] or [96, 96, 3]; got {shape!r}")
    return out


def declared_sources(path: str | Path, obs: Mapping[str, Mapping], action: Mapping
                     ) -> tuple[dict[str, ObsSource], ObsSource, tuple[int, ...]]:
    """Check a declared observation/action layout against the dataset at ``path``.

    Returns (observation sources, action source, action shape). Every mismatch (missing
    array, per-step size or dtype unlike the declaration) is a :class:`DatasetError` naming the
    observation key, the array and what was expected.
    """
    if not obs:
        raise DatasetError("task.dataset.obs names no observation keys")
    with ReplayBuffer.open(path) as buffer:
        def check(name: str, entry: Mapping, kind: str) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
            shape, inputs = _shape(name, entry), {}
            if kind == "rgb" and len(shape) != 3:
                raise DatasetError(f"{name}: an rgb key has shape [H, W, C], got {list(shape)}")
            for source in _sources(name, entry):
                if source not in buffer:
                    raise DatasetError(f"{buffer.path}: {name} reads data/{source}, which the dataset does not "
                                       f"have; it has {buffer.keys()}")
                array = buffer[source]
                inputs[source] = tuple(int(n) for n in array.shape[1:])
                if kind == "rgb" and array.dtype != np.uint8 and array.dtype.kind != "f":
                    raise DatasetError(f"{buffer.path}: {name} is an rgb key, data/{source} has dtype {array.dtype}, "
                                       "expected uint8 images (or float with values 0-255)")
            if kind == "rgb":
                found = next(iter(inputs.values()))
                if len(inputs) != 1 or len(shape) != 3 or found != shape:
                    raise DatasetError(f"{buffer.path}: {name} (rgb) reads {_describe(inputs)}, expected one array "
                                       f"of per-step shape {list(shape)} (H, W, C)")
            else:
                width = sum(int(np.prod(s)) for s in inputs.values())
                if len(shape) != 1 or width != shape[0]:
                    raise DatasetError(f"{buffer.path}: {name} reads {_describe(inputs)}, {width} numbers per step; "
                                       f"the config says shape {list(shape)} (low_dim keys are flat: [{width}])")
            return inputs, shape

        sources = {}
        for key, entry in obs.items():
            kind = entry.get("type", "low_dim")
            if kind not in ("low_dim", "rgb"):
                raise DatasetError(f"observation {key!r}: type must be low_dim or rgb, got {kind!r}")
            inputs, _ = check(f"observation {key!r}", entry, kind)
            frames = entry.get("frames")
            sources[str(key)] = ObsSource(inputs, build=_flat_concat if kind == "low_dim" else _first_input,
                                          type=kind, frames=None if frames is None else int(frames))
        action_inputs, action_shape = check("action", {"source": "action", **dict(action or {})}, "low_dim")
    return sources, ObsSource(action_inputs, build=_flat_concat), action_shape


def _describe(inputs: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"data/{key} {list(shape)}" for key, shape in inputs.items())


def make_dataset(path: str | Path, obs: Mapping[str, Mapping], action: Mapping | None = None, horizon: int = 16,
                 n_obs_steps: int = 2, n_action_steps: int = 8, val_ratio: float = 0.02, seed: int = 42,
                 max_train_episodes: int | None = None) -> WindowDataset:
    """Any task, described in a config: ``obs`` maps each observation key to
    ``{source: array or [arrays], shape: [...], type: low_dim | rgb, frames: k}`` and ``action`` is
    ``{source: array or [arrays], shape: [D]}`` (default source ``action``).

    Low-dim keys (and the action) are the per-step concatenation, flattened and in the given order,
    of their source arrays; an rgb key reads one (H, W, C) array of uint8 (or float 0-255, converted).
    ``frames`` (optional) lets a key condition on only its newest k of the ``n_obs_steps`` frames.
    """
    sources, action_source, action_shape = declared_sources(path, obs, action or {})
    return WindowDataset(path, sources, action_key=action_source, action_shape=action_shape, horizon=horizon,
                         n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, val_ratio=val_ratio, seed=seed,
                         max_train_episodes=max_train_episodes)


# ---------------------------------------------------------------------------------- Push-T
def pusht_keypoint_obs(keypoint: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The 20-float Push-T keypoint observation: 9 keypoints flattened (x0, y0, x1, ...) + agent (x, y)."""
    return np.concatenate([keypoint.reshape(len(keypoint), -1), state[:, :2]], axis=1)


def agent_position(state: np.ndarray) -> np.ndarray:
    """Agent (x, y) from the Push-T state [agent_x, agent_y, block_x, block_y, block_angle]."""
    return state[:, :2]


PUSHT_LOWDIM_OBS = {"obs": ObsSource({"keypoint": (9, 2), "state": (5,)}, build=pusht_keypoint_obs)}
PUSHT_IMAGE_OBS = {
    "image": ObsSource({"img": (96, 96, 3)}, type="rgb"),
    "agent_pos": ObsSource({"state": (5,)}, build=agent_position),
}


def make_pusht_lowdim_dataset(path: str | Path, horizon: int = 16, n_obs_steps: int = 2,
                              n_action_steps: int = 8, val_ratio: float = 0.02, seed: int = 42,
                              max_train_episodes: int | None = None) -> WindowDataset:
    """Push-T from keypoints: obs key "obs" (20 floats) from data/keypoint and data/state."""
    return WindowDataset(path, PUSHT_LOWDIM_OBS, horizon=horizon, n_obs_steps=n_obs_steps,
                         n_action_steps=n_action_steps, val_ratio=val_ratio, seed=seed,
                         max_train_episodes=max_train_episodes)


def make_pusht_image_dataset(path: str | Path, horizon: int = 16, n_obs_steps: int = 2,
                             n_action_steps: int = 8, val_ratio: float = 0.02, seed: int = 42,
                             max_train_episodes: int | None = None,
                             image_frames: int | None = None) -> WindowDataset:
    """Push-T from images: "image" (96, 96, 3) uint8 from data/img and "agent_pos" (2,) from data/state.

    ``image_frames``: how many of the newest images the policy encodes (None: all ``n_obs_steps``);
    the agent position keeps every frame.
    """
    obs = dict(PUSHT_IMAGE_OBS)
    if image_frames is not None:
        obs["image"] = replace(obs["image"], frames=int(image_frames))
    return WindowDataset(path, obs, horizon=horizon, n_obs_steps=n_obs_steps,
                         n_action_steps=n_action_steps, val_ratio=val_ratio, seed=seed,
                         max_train_episodes=max_train_episodes)


#: Dataset preset name (``task.dataset.preset`` in a config) -> factory; the other keys of that
#: config section are the factory's arguments.
DATASET_PRESETS: dict[str, Callable[..., WindowDataset]] = {
    "pusht_lowdim": make_pusht_lowdim_dataset,
    "pusht_image": make_pusht_image_dataset,
}


def observation_frames(dataset_cfg: Mapping) -> dict[str, int]:
    """``{key: frames}`` for the observation keys a ``task.dataset`` section limits to their newest
    frames, read from the config alone (no data), e.g. to build a policy without the dataset."""
    preset = dataset_cfg.get("preset")
    if preset == "pusht_image":
        frames = dataset_cfg.get("image_frames")
        return {} if frames is None else {"image": int(frames)}
    if preset is None:
        return {key: int(entry["frames"]) for key, entry in (dataset_cfg.get("obs") or {}).items()
                if isinstance(entry, Mapping) and entry.get("frames") is not None}
    return {}


def build_dataset(dataset_cfg: Mapping) -> WindowDataset:
    """The dataset a config's ``task.dataset`` section describes: declared ``obs`` + ``action``
    (:func:`make_dataset`), or a ``preset`` + its arguments."""
    from dpolicy.errors import ConfigError

    arguments = dict(dataset_cfg)
    preset = arguments.pop("preset", None)
    if preset is None and "obs" in arguments:
        try:
            return make_dataset(**arguments)
        except TypeError as exc:
            raise ConfigError(f"task.dataset: {exc}") from None
    if preset not in DATASET_PRESETS:
        raise ConfigError(f"task.dataset.preset is {preset!r}; expected one of {sorted(DATASET_PRESETS)}, or "
                          "no preset and the observation keys declared under task.dataset.obs")
    try:
        return DATASET_PRESETS[preset](**arguments)
    except TypeError as exc:
        raise ConfigError(f"task.dataset ({preset}): {exc}") from None
