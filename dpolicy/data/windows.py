"""Training windows over concatenated episodes, and the seeded train/validation split.

A window is ``horizon`` consecutive steps of one episode. Windows may start up to
``pad_before`` steps before the episode and end up to ``pad_after`` steps after it; the
missing steps repeat the episode's first or last frame. With pad_before = To - 1 and
pad_after = Ta - 1 an episode of length L gives ``L + pad_before + pad_after - horizon + 1``
windows (L - Ta + 1 for horizon 16, To = 2, Ta = 8), as in the original benchmark.
"""

from __future__ import annotations

import numpy as np


def episode_lengths(episode_ends: np.ndarray) -> np.ndarray:
    """Length of each episode from the exclusive ends ``episode_ends``."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    return np.diff(ends, prepend=0)


def windows_per_episode(lengths: np.ndarray, horizon: int, pad_before: int, pad_after: int) -> np.ndarray:
    """Number of windows each episode contributes (0 for episodes too short even with padding)."""
    _check_window_args(horizon, pad_before, pad_after)
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.maximum(lengths + pad_before + pad_after - horizon + 1, 0)


def window_index(episode_ends: np.ndarray, horizon: int, pad_before: int, pad_after: int,
                 episodes: np.ndarray | None = None) -> np.ndarray:
    """Step indices of every window: int64 array (n_windows, horizon).

    Row w lists the rows of the concatenated arrays that make up window w, with padding
    already resolved to the episode's first/last step, so a batch is one fancy-index
    ``array[index[batch_rows]]``. ``episodes`` (indices into ``episode_ends``) restricts the
    windows to those episodes. Windows are ordered by episode, then by start step.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    lengths = episode_lengths(ends)
    starts = ends - lengths
    if episodes is not None:
        chosen = np.asarray(episodes, dtype=np.int64)
        lengths, starts = lengths[chosen], starts[chosen]
    counts = windows_per_episode(lengths, horizon, pad_before, pad_after)
    n_windows = int(counts.sum())
    episode_of_window = np.repeat(np.arange(len(lengths)), counts)
    first_window = np.cumsum(counts) - counts
    # Start of each window relative to its episode's first step (negative inside the front padding).
    local_start = np.arange(n_windows, dtype=np.int64) - first_window[episode_of_window] - pad_before
    local = local_start[:, None] + np.arange(horizon, dtype=np.int64)[None, :]
    np.clip(local, 0, (lengths[episode_of_window] - 1)[:, None], out=local)
    return local + starts[episode_of_window][:, None]


def split_episodes(n_episodes: int, val_ratio: float, seed: int,
                   max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episode indices into (train, validation), both sorted.

    ``round(n_episodes * val_ratio)`` episodes (at least 1 when val_ratio > 0, and always
    leaving one for training) go to validation. ``max_train_episodes`` then keeps a seeded
    random subset of the training episodes (the paper trains on 90 of the 206 human ones).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if max_train_episodes is not None and max_train_episodes < 1:
        raise ValueError(f"max_train_episodes must be >= 1 or None, got {max_train_episodes}")
    rng = np.random.default_rng(seed)
    n_val = 0
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    order = rng.permutation(n_episodes)
    val, train = order[:n_val], order[n_val:]
    if max_train_episodes is not None and len(train) > max_train_episodes:
        train = rng.choice(train, size=max_train_episodes, replace=False)
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


def _check_window_args(horizon: int, pad_before: int, pad_after: int) -> None:
    if horizon < 1 or pad_before < 0 or pad_after < 0:
        raise ValueError(f"need horizon >= 1 and pads >= 0, got horizon={horizon}, "
                         f"pad_before={pad_before}, pad_after={pad_after}")
    if pad_before >= horizon or pad_after >= horizon:
        raise ValueError(f"pads must be shorter than the horizon ({horizon}), got pad_before={pad_before}, "
                         f"pad_after={pad_after}: a window would hold no step of its episode")
