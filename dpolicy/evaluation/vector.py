"""Vectors of environments whose members can sit out a step.

Rollouts keep every sub-environment in lock-step, but an environment whose episode has ended
(and has no episode left to run) must not be stepped again. :class:`PausableEnv` makes that
explicit: an action that is entirely NaN means "skip this step" -- the wrapped environment is
not touched and the previous observation is returned. Autoreset is disabled; the caller resets
finished environments itself, with the seed of their next episode.
"""

from __future__ import annotations

import importlib
import os
import signal
from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

VECTOR_KINDS = ("async", "sync")


def pause_action(action_space: gym.spaces.Box) -> np.ndarray:
    """The action that makes a :class:`PausableEnv` skip a step."""
    return np.full(action_space.shape, np.nan, dtype=np.float64)


#: Reset option (a list with one entry per sub-environment) that says which frames to record:
#: "all" (every step, for videos), "final" (the last frame of the episode) or None.
RECORD_OPTION = "record_frames"


class PausableEnv(gym.Wrapper):
    """Skips the step when the action is all NaN (returns the last observation, reward 0), and
    records rendered frames on request.

    ``info`` of a skipped step is ``{"paused": True}``; :attr:`n_steps` counts the steps that
    reached the environment since the last reset. With ``max_steps`` the episode is truncated
    after that many steps whatever the environment's own limit. ``reset(options={RECORD_OPTION:
    [mode per sub-env]})`` makes the sub-environment at ``index`` put ``env.render()`` into
    ``info["frame"]`` (mode "all": at reset and every step) or into ``info["final_frame"]`` when
    the episode ends (modes "all" and "final").
    """

    def __init__(self, env: gym.Env, index: int = 0, max_steps: int | None = None):
        super().__init__(env)
        self.index, self.max_steps = int(index), max_steps
        self._last_obs = None
        self._record: str | None = None
        self.n_steps = 0

    def reset(self, *, seed=None, options=None):
        options = dict(options or {})
        modes = options.pop(RECORD_OPTION, None)
        self._record = modes[self.index] if modes is not None else None
        obs, info = self.env.reset(seed=seed, options=options or None)
        self._last_obs = obs
        self.n_steps = 0
        if self._record == "all":
            info = {**info, "frame": self._frame()}
        return obs, info

    def step(self, action):
        if np.all(np.isnan(np.asarray(action, dtype=np.float64))):
            if self._last_obs is None:
                raise RuntimeError("PausableEnv: paused before the first reset")
            return self._last_obs, 0.0, False, False, {"paused": True}
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = obs
        self.n_steps += 1
        if self.max_steps is not None and self.n_steps >= self.max_steps:
            truncated = True
        if self._record == "all":
            info = {**info, "frame": self._frame()}
        if self._record is not None and (terminated or truncated):
            info = {**info, "final_frame": info["frame"] if "frame" in info else self._frame()}
        return obs, reward, terminated, truncated, info

    def _frame(self) -> np.ndarray:
        frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            raise RuntimeError(f"{self.env.spec.id if self.env.spec else type(self.env.unwrapped).__name__}: "
                               f"render() must return an (H, W, 3) uint8 frame for videos, got "
                               f"{type(frame).__name__}; create it with render_mode='rgb_array'")
        return np.asarray(frame, dtype=np.uint8)


def _ensure_registered(env_id: str) -> None:
    """Import the module named by an id's namespace (``envs/PointReach-v0`` -> ``envs``) if needed."""
    if env_id in gym.registry or ":" in env_id or "/" not in env_id:
        return
    namespace = env_id.split("/", 1)[0]
    try:
        importlib.import_module(namespace)
    except ModuleNotFoundError:
        pass  # gym.make reports the unknown id


def renders_frames(env_id: str) -> bool:
    """Whether the registered environment declares ``render_mode="rgb_array"`` support."""
    _ensure_registered(env_id)
    try:
        creator = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    except (gym.error.Error, ImportError, AttributeError, ValueError):
        return False
    return "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", ())


def episode_limit(env_id: str, env_kwargs: dict | None = None) -> int:
    """The environment's own episode limit: its registration's ``max_episode_steps``, else the
    ``max_episode_steps`` attribute an environment that counts its own limit carries."""
    _ensure_registered(env_id)
    spec_limit = gym.spec(env_id).max_episode_steps
    if spec_limit:
        return int(spec_limit)
    env = gym.make(env_id, **dict(env_kwargs or {}))
    try:
        limit = getattr(env.unwrapped, "max_episode_steps", None)
    finally:
        env.close()
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{env_id}: the environment declares no episode limit; pass max_steps")
    return limit


def make_env(env_id: str, env_kwargs: dict | None = None, max_steps: int | None = None,
             index: int = 0) -> PausableEnv:
    """One pausable environment; ``max_steps`` overrides the registered episode limit."""
    _ensure_registered(env_id)
    kwargs = dict(env_kwargs or {})
    if max_steps is not None:
        kwargs["max_episode_steps"] = int(max_steps)
    env = gym.make(env_id, **kwargs)
    base = env.unwrapped
    if max_steps is not None and isinstance(getattr(base, "max_episode_steps", None), int):
        # environments that count their own limit (an attribute max_episode_steps) must not cut earlier
        base.max_episode_steps = int(max_steps)
    return PausableEnv(env, index=index, max_steps=max_steps)


def _make_worker_env(owner_pid: int, env_id: str, env_kwargs: dict, max_steps: int | None,
                     index: int) -> PausableEnv:
    """:func:`make_env` for an async worker, which leaves Ctrl-C to the owner (it closes the workers).

    The vector env also calls this once in the owner process itself (to read the spaces); the
    owner keeps its Ctrl-C.
    """
    if os.getpid() != owner_pid:
        from dpolicy.processes import exit_with_parent

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exit_with_parent(owner_pid)  # a killed evaluation leaves no environment workers behind
    return make_env(env_id, env_kwargs, max_steps, index)


def make_vector_env(env_id: str, n_envs: int, env_kwargs: dict | None = None, max_steps: int | None = None,
                    vector: str = "async", max_concurrency: int | None = None) -> VectorEnv:
    """``n_envs`` pausable copies of ``env_id``, in worker processes (``async``) or in this one (``sync``).

    ``max_concurrency`` (async only) caps how many workers step at the same time.
    """
    if vector not in VECTOR_KINDS:
        raise ValueError(f"vector must be one of {VECTOR_KINDS}, got {vector!r}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if vector == "sync":
        fns = [partial(make_env, env_id, dict(env_kwargs or {}), max_steps, i) for i in range(n_envs)]
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
    owner = os.getpid()
    fns = [partial(_make_worker_env, owner, env_id, dict(env_kwargs or {}), max_steps, i) for i in range(n_envs)]
    return AsyncVectorEnv(fns, shared_memory=True, autoreset_mode=AutoresetMode.DISABLED,
                          max_concurrency=max_concurrency)
