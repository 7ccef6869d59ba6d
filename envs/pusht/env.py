"""``PushTEnv``: the Push-T task as a gymnasium environment.

One class serves the three observation types of the benchmark:

- ``"state"``: ``[agent_x, agent_y, block_x, block_y, block_angle]`` (5,) float64;
- ``"keypoints"``: the 9 block keypoints flattened (x0, y0, x1, y1, ...) then agent x, y (20,) float64;
- ``"image"``: ``{"image": (96, 96, 3) uint8 HWC, "agent_pos": (2,) float64}``.

Actions are absolute agent targets (x, y) in px. NaN/inf or a wrong shape raise ValueError;
targets outside the workspace are clipped to [0, 512] (see :func:`envs.pusht.sim.clip_action`).

Episodes: reward = clip(coverage / 0.95, 0, 1); ``terminated`` when coverage > 0.95; ``truncated``
after ``max_episode_steps`` (300) steps, counted by the environment itself (the registered ids add
no TimeLimit wrapper, so direct construction and ``gymnasium.make`` behave the same).

Resets: ``reset(seed=s)`` is the original's legacy seeded reset (``numpy.random.RandomState(s)``,
position before angle, one substep), so seeds 100000.. give the paper's test episodes.
``reset()`` without a seed draws the legacy seed from the environment's seeded generator, so a
seeded first reset makes the whole sequence reproducible. ``reset(options={"reset_to_state": s})``
starts from a recorded 5-vector state (angle set before position, which reproduces recorded poses
exactly), followed by one substep as in the original.

Stepping on after ``terminated``/``truncated`` is allowed (the simulation just continues), so
fixed-length rollouts that score the best coverage of an episode need no special casing.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.pusht.geometry import GOAL_POSE, SUCCESS_COVERAGE, WORKSPACE_SIZE, reward_from_coverage
from envs.pusht.render import Renderer
from envs.pusht.sim import PushTSim

OBS_TYPES = ("state", "keypoints", "image")
#: Default episode length of the benchmark (control steps).
MAX_EPISODE_STEPS = 300
#: Side of the image observation (px).
IMAGE_SIZE = 96


class PushTEnv(gym.Env):
    """Push a T-shaped block onto a goal pose with a circular agent (10 Hz control)."""

    # episode_info_keys: info values an evaluator tracks per episode (best and final), beside the
    # reward and info["is_success"] that every task reports.
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "episode_info_keys": ("coverage",)}

    def __init__(self, obs_type: str = "state", render_mode: str | None = None, render_size: int = 96,
                 max_episode_steps: int = MAX_EPISODE_STEPS, render_action: bool = True):
        """
        Args:
            obs_type: "state", "keypoints" or "image".
            render_mode: None or "rgb_array" (``render()`` returns an RGB uint8 frame).
            render_size: side in px of the frames ``render()`` returns (any size; 512 is the native canvas).
            max_episode_steps: steps after which an episode is truncated.
            render_action: draw the latest action target (a cross) and ``action_path`` in ``render()``
                (observations never carry overlays).
        """
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.max_episode_steps = int(max_episode_steps)
        self.render_action = bool(render_action)
        self.goal_pose = GOAL_POSE.copy()

        ws = WORKSPACE_SIZE
        self.action_space = spaces.Box(low=0.0, high=ws, shape=(2,), dtype=np.float64)
        agent_space = spaces.Box(low=0.0, high=ws, shape=(2,), dtype=np.float64)
        if obs_type == "state":
            self.observation_space = spaces.Box(low=np.zeros(5), high=np.array([ws, ws, ws, ws, 2 * np.pi]),
                                                shape=(5,), dtype=np.float64)
        elif obs_type == "keypoints":
            # Keypoints of a block pressed into a wall can leave the arena by a few px (the contact
            # solver allows some penetration), so their bounds carry a margin; the agent's do not.
            margin = ws / 8
            low = np.concatenate([np.full(18, -margin), np.zeros(2)])
            high = np.concatenate([np.full(18, ws + margin), np.full(2, ws)])
            self.observation_space = spaces.Box(low=low, high=high, shape=(20,), dtype=np.float64)
        else:
            self.observation_space = spaces.Dict({
                "image": spaces.Box(low=0, high=255, shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
                "agent_pos": agent_space,
            })

        self.sim = PushTSim()
        self.renderer = Renderer(self.goal_pose)
        #: Latest (clipped) action target, drawn by ``render()`` when ``render_action`` is set.
        self.latest_action: np.ndarray | None = None
        #: Optional (T, 2) world points drawn by ``render()``, e.g. the policy's predicted action chunk;
        #: set it per environment of a vector env with ``envs.set_attr("action_path", [...])``.
        self.action_path: np.ndarray | None = None
        self._elapsed_steps = 0
        self._needs_reset = True

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"reset_to_state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['reset_to_state']")
        state = options.get("reset_to_state")
        if state is not None:
            state = np.asarray(state, dtype=np.float64)
            if state.shape != (5,) or not np.all(np.isfinite(state)):
                raise ValueError("reset_to_state must be 5 finite numbers [agent_x, agent_y, block_x, "
                                 f"block_y, block_angle], got {options['reset_to_state']!r}")
            if np.any(state[:4] < 0) or np.any(state[:4] > WORKSPACE_SIZE):
                raise ValueError(f"reset_to_state positions must lie in [0, {WORKSPACE_SIZE:g}], "
                                 f"got {state[:4]}")
            self.sim.set_state(state, legacy=False)
            self.sim.substep()
        else:
            if seed is None:
                seed = int(self.np_random.integers(0, 2**31 - 1))
            self.sim.reset_legacy(seed)
        self._elapsed_steps = 0
        self._needs_reset = False
        self.latest_action = None
        self.action_path = None
        coverage = self.sim.coverage(self.goal_pose)
        return self._observation(), self._info(coverage)

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("PushTEnv.step() called before reset()")
        self.latest_action = np.array(self.sim.step(action))
        self._elapsed_steps += 1
        coverage = self.sim.coverage(self.goal_pose)
        terminated = coverage > SUCCESS_COVERAGE
        truncated = self._elapsed_steps >= self.max_episode_steps
        reward = reward_from_coverage(coverage)
        return self._observation(), reward, terminated, truncated, self._info(coverage)

    def render(self):
        """RGB uint8 frame (render_size, render_size, 3), or None when ``render_mode`` is None."""
        if self.render_mode is None:
            return None
        overlays = {}
        if self.render_action:
            overlays = {"action_path": self.action_path, "target": self.latest_action}
        return self.renderer.render(self.sim.get_state(), self.render_size, **overlays)

    # ------------------------------------------------------------------ helpers
    def hold_action(self) -> np.ndarray:
        """The action that keeps the agent where it is (its current position as the target)."""
        return self.sim.agent_pos.copy()

    def get_state(self) -> np.ndarray:
        """The current ``[agent_x, agent_y, block_x, block_y, block_angle]``."""
        return self.sim.get_state()

    def _observation(self):
        if self.obs_type == "state":
            return self.sim.get_state()
        if self.obs_type == "keypoints":
            return np.concatenate([self.sim.keypoints().ravel(), self.sim.agent_pos])
        state = self.sim.get_state()
        return {"image": self.renderer.render(state, IMAGE_SIZE), "agent_pos": state[:2].copy()}

    def _info(self, coverage: float) -> dict:
        return {
            "coverage": coverage,
            "is_success": coverage > SUCCESS_COVERAGE,
            "block_pose": self.sim.block_pose,
            "goal_pose": self.goal_pose.copy(),
            "agent_pos": self.sim.agent_pos,
            "n_contacts": self.sim.n_contacts,
        }
