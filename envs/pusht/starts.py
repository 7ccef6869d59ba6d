"""Start states for Push-T beyond the benchmark's reset: the block near a wall or in a corner.

The benchmark's reset (:func:`envs.pusht.sim.legacy_reset_state`) keeps the block's position in
[100, 400] px, so demonstrations collected from it rarely show how to get a block away from a wall.
A policy that drifts there has to have seen it done: :func:`near_wall_state` draws starts whose T
outline comes within a few px of the arena's walls (corners included, where two walls are close).
Use a state with ``PushTEnv.reset(options={"reset_to_state": state})``.
"""

from __future__ import annotations

import numpy as np

from envs.pusht.geometry import T_OUTLINE, WORKSPACE_SIZE, body_to_world, t_signed_distance, world_to_body

#: Inner faces of the arena's walls (wall centre lines at 5 and 506 px, radius 2).
ARENA_LOW = 7.0
ARENA_HIGH = 504.0
#: Agent start positions are drawn like the benchmark's (px) ...
AGENT_RANGE = (50.0, 450.0)
#: ... at least this far from the T's outline (px), so the start is not already a push.
AGENT_CLEARANCE = 20.0


def outline_wall_distance(block_pose) -> float:
    """Smallest distance (px) from the T outline's vertices at ``block_pose`` to the arena's walls."""
    points = body_to_world(T_OUTLINE, np.asarray(block_pose, dtype=np.float64))
    return float(np.minimum(points - ARENA_LOW, ARENA_HIGH - points).min())


def near_wall_state(rng: np.random.Generator, wall_distance=(8.0, 30.0)) -> np.ndarray:
    """A start ``[agent_x, agent_y, block_x, block_y, block_angle]`` with the T's outline between
    ``wall_distance[0]`` and ``wall_distance[1]`` px of a wall; angle uniform, agent clear of the T."""
    low, high = (float(v) for v in wall_distance)
    if not 0.0 <= low < high:
        raise ValueError(f"wall_distance must be (low, high) with 0 <= low < high, got {wall_distance!r}")
    while True:
        block = np.r_[rng.uniform(0.0, WORKSPACE_SIZE, 2), rng.uniform(-np.pi, np.pi)]
        if low <= outline_wall_distance(block) <= high:
            break
    while True:
        agent = rng.uniform(*AGENT_RANGE, 2)
        if t_signed_distance(world_to_body(agent[None], block))[0] > AGENT_CLEARANCE:
            return np.r_[agent, block]
