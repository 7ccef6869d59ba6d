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


class PausableEnv(gym.Wrapper):
    """Skips the step when the action is all NaN (returns the last observation, reward 0).

    ``info`` of a skipped step is ``{"paused": True}``; :attr:`n_steps` counts the steps that
    reached the environment since the last reset.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._last_obs = None
        self.n_steps = 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        self.n_steps = 0
        return obs, info

    def step(self, action):
        if np.all(np.isnan(np.asarray(action, dtype=np.float64))):
            if self._last_obs is None:
                raise RuntimeError("PausableEnv: paused before the first reset")
            return self._last_obs, 0.0, False, False, {"paused": True}
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = obs
        self.n_steps += 1
        return obs, reward, terminated, truncated, info


def _ensure_registered(env_id: str) -> None:
    """Import the module named by an id's namespace (``envs/PushT-v0`` -> ``envs``) if needed."""
    if env_id in gym.registry or ":" in env_id or "/" not in env_id:
        return
    namespace = env_id.split("/", 1)[0]
    try:
        importlib.import_module(namespace)
    except ModuleNotFoundError:
        pass  # gym.make reports the unknown id


def make_env(env_id: str, env_kwargs: dict | None = None, max_steps: int | None = None) -> PausableEnv:
    """One pausable environment; ``max_steps`` overrides the registered episode limit."""
    _ensure_registered(env_id)
    kwargs = dict(env_kwargs or {})
    if max_steps is not None:
        kwargs["max_episode_steps"] = int(max_steps)
    env = gym.make(env_id, **kwargs)
    base = env.unwrapped
    if max_steps is not None and isinstance(getattr(base, "max_episode_steps", None), int):
        # environments that count their own limit (PushTEnv truncates at 300) must not cut earlier
        base.max_episode_steps = int(max_steps)
    return PausableEnv(env)


def _make_worker_env(owner_pid: int, env_id: str, env_kwargs: dict, max_steps: int | None) -> PausableEnv:
    """:func:`make_env` for an async worker, which leaves Ctrl-C to the owner (it closes the workers).

    The vector env also calls this once in the owner process itself (to read the spaces); the
    owner keeps its Ctrl-C.
    """
    if os.getpid() != owner_pid:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return make_env(env_id, env_kwargs, max_steps)


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
        fns = [partial(make_env, env_id, dict(env_kwargs or {}), max_steps) for _ in range(n_envs)]
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
    owner = os.getpid()
    fns = [partial(_make_worker_env, owner, env_id, dict(env_kwargs or {}), max_steps) for _ in range(n_envs)]
    return AsyncVectorEnv(fns, shared_memory=True, autoreset_mode=AutoresetMode.DISABLED,
                          max_concurrency=max_concurrency)
