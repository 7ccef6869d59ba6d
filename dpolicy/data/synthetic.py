"""Synthetic Push-T-shaped datasets whose values encode the step, for benchmarks and checks.

Step ``t`` (counted over the whole dataset) holds ``action = (t + 0.125, t + 0.375)``, a
``state`` and ``keypoint`` that start at ``t`` and an image whose pixels depend on ``t``, so a
window's contents tell exactly which steps were gathered. The numbers are not physically
meaningful; use them to exercise the data pipeline, not to train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dpolicy.data.replay_buffer import ReplayBuffer

#: Offset of action[:, 0] from the step index (exact in float32 for steps < 2**21).
ACTION_OFFSET = 0.125


def synthetic_pusht_episode(first_step: int, length: int, image_size: int | None = 96,
                            image_dtype: str = "uint8") -> dict[str, np.ndarray]:
    """Arrays of one episode covering steps ``first_step .. first_step + length - 1``."""
    t = np.arange(first_step, first_step + length, dtype=np.float64)
    episode = {
        "action": np.stack([t + ACTION_OFFSET, t + 0.375], axis=1).astype(np.float32),
        "state": (t[:, None] + np.array([0.0, 0.25, 0.5, 0.75, 0.0])).astype(np.float32),
        "keypoint": (t[:, None, None] + np.arange(18).reshape(1, 9, 2) / 32).astype(np.float32),
    }
    episode["state"][:, 4] = (t % 7) / 7  # the block angle stays in [0, 2 pi)
    if image_size is not None:
        grid = np.add.outer(np.arange(image_size), 2 * np.arange(image_size))[:, :, None] + 3 * np.arange(3)
        pixels = (t.astype(np.int64)[:, None, None, None] + grid[None]) % 256
        episode["img"] = pixels.astype(image_dtype)
    return episode


def write_synthetic_pusht(path: str | Path, episode_lengths: Sequence[int], image_size: int | None = 96,
                          image_dtype: str = "uint8", overwrite: bool = False) -> ReplayBuffer:
    """Write a dataset with keys action, state, keypoint (and img unless ``image_size`` is None)."""
    buffer = ReplayBuffer.create(path, attrs={"synthetic": True}, overwrite=overwrite)
    first = 0
    for length in episode_lengths:
        buffer.append_episode(synthetic_pusht_episode(first, int(length), image_size, image_dtype))
        first += int(length)
    return buffer


def step_of_action(action: np.ndarray) -> np.ndarray:
    """The step index a synthetic action row was written at."""
    return np.rint(np.asarray(action)[..., 0] - ACTION_OFFSET).astype(np.int64)
