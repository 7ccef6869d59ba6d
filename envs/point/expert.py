"""A scripted expert for :class:`~envs.point.env.PointReachEnv`: head straight for the goal."""

from __future__ import annotations

import numpy as np


def expert_action(obs) -> np.ndarray:
    """The expert's target (2,) float32 for an observation ``[x, y, goal_x, goal_y]``: the goal itself.

    The environment limits the step, so this is a straight line at full speed, reaching any goal of
    the unit box within ``ceil(sqrt(2) / max_step)`` = 15 steps.
    """
    obs = np.asarray(obs, dtype=np.float32)
    if obs.shape != (4,):
        raise ValueError(f"obs must be [x, y, goal_x, goal_y] with shape (4,), got shape {obs.shape}")
    return obs[2:].copy()
