"""``PointReachEnv``: a 2-D point reaching a goal in the unit box, a toy task for quick tests.

- Observation: ``[x, y, goal_x, goal_y]`` (4,) float32 in [0, 1].
- Action: an absolute target position (2,), as in Push-T. It is clipped to the box, and the point
  moves toward it by at most ``max_step`` (0.1) per step. NaN/inf or a wrong shape raise ValueError.
- Reward: ``1 - clip(distance / initial_distance, 0, 1)``, in [0, 1] (0 at the start, 1 at the goal).
- ``terminated`` (and ``info["is_success"]``) when the distance to the goal is below
  ``success_distance`` (0.05); ``truncated`` after ``max_episode_steps`` (30) steps, counted by the
  environment itself (no TimeLimit wrapper). Stepping on after either is allowed.
- ``reset(seed=s)`` is deterministic: start and goal uniform in the box, at least 0.3 apart.
- ``render_mode="rgb_array"``: a ``render_size`` x ``render_size`` (64) RGB uint8 frame drawn with
  numpy: the goal a green disc (of radius ``success_distance``), the point a blue one. Image rows
  follow y (y grows downwards), columns follow x.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Steps after which an episode is truncated.
MAX_EPISODE_STEPS = 30
#: Largest distance the point moves in one step.
MAX_STEP = 0.1
#: Distance to the goal below which an episode succeeds.
SUCCESS_DISTANCE = 0.05
#: Least distance between the start and the goal of a reset.
MIN_START_DISTANCE = 0.3

BACKGROUND_COLOR = (255, 255, 255)
GOAL_COLOR = (40, 180, 60)
POINT_COLOR = (40, 80, 220)
#: Radius of the drawn point, as a fraction of the box side.
POINT_RADIUS = 0.04


class PointReachEnv(gym.Env):
    """Move a point to a goal in [0, 1]^2 by commanding absolute target positions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, render_size: int = 64,
                 max_episode_steps: int = MAX_EPISODE_STEPS, max_step: float = MAX_STEP,
                 success_distance: float = SUCCESS_DISTANCE):
        """
        Args:
            render_mode: None or "rgb_array" (``render()`` returns an RGB uint8 frame).
            render_size: side in px of the frames ``render()`` returns.
            max_episode_steps: steps after which an episode is truncated.
            max_step: largest distance the point moves per step.
            success_distance: distance to the goal below which the episode succeeds.
        """
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        if int(render_size) < 8:
            raise ValueError(f"render_size must be >= 8, got {render_size}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if not max_step > 0 or not success_distance > 0:
            raise ValueError(f"max_step and success_distance must be positive, got {max_step} and "
                             f"{success_distance}")
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.max_episode_steps = int(max_episode_steps)
        self.max_step = float(max_step)
        self.success_distance = float(success_distance)
        self.observation_space = spaces.Box(low=0.0, high=1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Box(low=0.0, high=1.0, shape=(2,), dtype=np.float32)
        self.position = np.zeros(2)
        self.goal = np.zeros(2)
        self.initial_distance = 1.0
        self._elapsed_steps = 0
        self._needs_reset = True

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options:
            raise ValueError(f"PointReachEnv.reset() takes no options, got {sorted(options)}")
        while True:
            start, goal = self.np_random.uniform(0.0, 1.0, size=(2, 2))
            if np.linalg.norm(goal - start) >= MIN_START_DISTANCE:
                break
        self.position, self.goal = start, goal
        self.initial_distance = float(np.linalg.norm(goal - start))
        self._elapsed_steps = 0
        self._needs_reset = False
        return self._observation(), self._info()

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("PointReachEnv.step() called before reset()")
        target = np.clip(_as_target(action), 0.0, 1.0)
        move = target - self.position
        length = float(np.linalg.norm(move))
        if length > self.max_step:
            move *= self.max_step / length
        self.position = np.clip(self.position + move, 0.0, 1.0)
        self._elapsed_steps += 1
        info = self._info()
        reward = 1.0 - min(max(info["distance"] / self.initial_distance, 0.0), 1.0)
        truncated = self._elapsed_steps >= self.max_episode_steps
        return self._observation(), reward, info["is_success"], truncated, info

    def render(self):
        """RGB uint8 frame (render_size, render_size, 3), or None when ``render_mode`` is None."""
        if self.render_mode is None:
            return None
        size = self.render_size
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = BACKGROUND_COLOR
        centres = (np.arange(size) + 0.5) / size  # pixel centres in box coordinates
        for centre, radius, color in ((self.goal, self.success_distance, GOAL_COLOR),
                                      (self.position, POINT_RADIUS, POINT_COLOR)):
            # At least about one pixel, so that small frames still show both discs.
            radius = max(radius, 0.75 / size)
            inside = (centres[None, :] - centre[0]) ** 2 + (centres[:, None] - centre[1]) ** 2 <= radius ** 2
            frame[inside] = color
        return frame

    # ------------------------------------------------------------------ helpers
    def hold_action(self) -> np.ndarray:
        """The action that keeps the point where it is (its position as the target)."""
        return self.position.astype(np.float64).copy()

    def _observation(self) -> np.ndarray:
        return np.concatenate([self.position, self.goal]).astype(np.float32)

    def _info(self) -> dict:
        distance = float(np.linalg.norm(self.goal - self.position))
        return {"distance": distance, "is_success": distance < self.success_distance}


def _as_target(action) -> np.ndarray:
    """``action`` as a finite float64 (2,) vector, or a ValueError that says why."""
    try:
        target = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action must be 2 numbers (an absolute target x, y), got {action!r}") from exc
    if target.shape != (2,):
        raise ValueError(f"action must have shape (2,), got shape {target.shape}")
    if not np.all(np.isfinite(target)):
        raise ValueError(f"action must be finite, got {target.tolist()}")
    return target
