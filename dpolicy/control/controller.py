"""Receding-horizon control: plan a chunk of actions, execute part of it, plan again.

A policy predicts a chunk from the last ``To`` observations; :class:`ChunkController` keeps that
observation history, holds the chunk queue and decides when to ask for a new chunk, for a batch
of environments whose episodes start and end at different times. The same object serves
simulation rollouts (:mod:`dpolicy.evaluation`) and a real-time runner (one environment).

Any object with ``predict_action(obs) -> {"action": (B, Ta, D)[, "action_pred": (B, Tp, D)]}``
and an integer ``n_obs_steps`` works as a policy: the package's policies, or a scripted one.
Outputs may be torch tensors or numpy arrays.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: Policy key of a plain vector (gymnasium Box) observation; Dict observations keep their keys.
VECTOR_OBS_KEY = "obs"


def observation_dict(obs) -> dict[str, np.ndarray]:
    """An environment observation as a policy observation dict.

    A mapping (gymnasium Dict space) keeps its keys; a plain array (Box space) becomes
    ``{"obs": array}``.
    """
    if isinstance(obs, Mapping):
        return {str(k): np.asarray(v) for k, v in obs.items()}
    return {VECTOR_OBS_KEY: np.asarray(obs)}


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class ChunkController:
    """Observation history + action-chunk queue for ``n_envs`` environments.

    Per environment: call :meth:`reset` at the start of an episode, then alternate
    :meth:`observe` (the observation the environment returned) and :meth:`act` (the next
    action to send). ``act`` makes ONE batched ``policy.predict_action`` call for all the
    requested environments whose queue holds ``replan_threshold`` actions or fewer, then pops
    one action for each of them.

    Args:
        policy: object with ``predict_action`` and ``n_obs_steps``.
        n_envs: number of environments served.
        replan_threshold: plan a new chunk when at most this many actions remain queued;
            0 executes every chunk to its end. The new chunk replaces what was left.
        n_action_steps: execute only the first ``n_action_steps`` actions of each chunk
            (default: the whole chunk the policy returns).
    """

    def __init__(self, policy, n_envs: int = 1, replan_threshold: int = 0, n_action_steps: int | None = None):
        if not hasattr(policy, "predict_action"):
            raise TypeError(f"policy {type(policy).__name__} has no predict_action(obs) method")
        n_obs_steps = getattr(policy, "n_obs_steps", None)
        if not isinstance(n_obs_steps, (int, np.integer)) or n_obs_steps < 1:
            raise TypeError(f"policy {type(policy).__name__} needs an integer n_obs_steps >= 1, "
                            f"got {n_obs_steps!r}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if replan_threshold < 0:
            raise ValueError(f"replan_threshold must be >= 0, got {replan_threshold}")
        if n_action_steps is not None and n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        if n_action_steps is not None and replan_threshold >= n_action_steps:
            raise ValueError(f"replan_threshold ({replan_threshold}) must be below n_action_steps "
                             f"({n_action_steps}): otherwise no action of a chunk would ever be executed")
        self.policy = policy
        self.n_envs = int(n_envs)
        self.n_obs_steps = int(n_obs_steps)
        self.replan_threshold = int(replan_threshold)
        self.n_action_steps = None if n_action_steps is None else int(n_action_steps)
        self._history: dict[str, np.ndarray] = {}
        self._n_observed = np.zeros(self.n_envs, dtype=np.int64)
        self._queue: list[np.ndarray] = [np.zeros((0, 0))] * self.n_envs
        self._cursor = np.zeros(self.n_envs, dtype=np.int64)
        #: per environment: the whole predicted sequence of the latest plan (Tp, D), or None.
        self.last_prediction: list[np.ndarray | None] = [None] * self.n_envs
        #: per environment: actions executed since its last reset.
        self.steps = np.zeros(self.n_envs, dtype=np.int64)
        #: wall-clock seconds of every ``predict_action`` call, and the batch size of each.
        self.plan_latencies_s: list[float] = []
        self.plan_batch_sizes: list[int] = []

    # ------------------------------------------------------------------ helpers
    def _ids(self, env_ids: Iterable[int] | None) -> np.ndarray:
        if env_ids is None:
            return np.arange(self.n_envs)
        ids = np.asarray(list(env_ids) if not isinstance(env_ids, np.ndarray) else env_ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"env_ids must be a 1-D sequence of indices, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_envs):
            raise IndexError(f"env_ids {ids.tolist()} out of range for n_envs={self.n_envs}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"env_ids contain duplicates: {ids.tolist()}")
        return ids

    def queued(self, env_ids: Iterable[int] | None = None) -> np.ndarray:
        """Number of actions still queued per environment."""
        ids = self._ids(env_ids)
        return np.array([len(self._queue[i]) - self._cursor[i] for i in ids], dtype=np.int64)

    def pending_actions(self, env_id: int) -> np.ndarray:
        """The actions still queued for one environment, in execution order (a copy)."""
        i = int(self._ids([env_id])[0])
        return np.array(self._queue[i][self._cursor[i]:], copy=True)

    # ------------------------------------------------------------------ episode bookkeeping
    def reset(self, env_ids: Iterable[int] | None = None) -> None:
        """Start new episodes: forget the history and the queued actions of these environments."""
        for i in self._ids(env_ids):
            self._n_observed[i] = 0
            self._queue[i] = np.zeros((0, 0))
            self._cursor[i] = 0
            self.last_prediction[i] = None
            self.steps[i] = 0

    def observe(self, obs, env_ids: Iterable[int] | None = None) -> None:
        """Append one observation per environment to the history.

        ``obs`` is batched over ``env_ids`` (all environments by default): an array
        ``(len(env_ids), *shape)`` or a dict of them. The first observation after a reset fills
        the whole history (padding by repeating it).
        """
        ids = self._ids(env_ids)
        obs = observation_dict(obs)
        if not self._history:
            for key, value in obs.items():
                shape = (self.n_envs, self.n_obs_steps, *value.shape[1:])
                self._history[key] = np.zeros(shape, dtype=value.dtype)
        if set(obs) != set(self._history):
            raise KeyError(f"observation keys {sorted(obs)} differ from the first observation's "
                           f"{sorted(self._history)}")
        for key, value in obs.items():
            hist = self._history[key]
            if value.shape != (len(ids), *hist.shape[2:]):
                raise ValueError(f"observation {key!r}: expected shape {(len(ids), *hist.shape[2:])} for "
                                 f"{len(ids)} environments, got {value.shape}")
        for row, i in enumerate(ids):
            fresh = self._n_observed[i] == 0
            for key, value in obs.items():
                hist = self._history[key]
                if fresh:
                    hist[i, :] = value[row]
                else:
                    hist[i, :-1] = hist[i, 1:]
                    hist[i, -1] = value[row]
            self._n_observed[i] += 1

    def observation_window(self, env_ids: Iterable[int] | None = None) -> dict[str, np.ndarray]:
        """The last ``n_obs_steps`` observations, ``{key: (len(env_ids), To, *shape)}``, oldest first."""
        ids = self._ids(env_ids)
        missing = [int(i) for i in ids if self._n_observed[i] == 0]
        if missing:
            raise RuntimeError(f"environments {missing} have no observation since their reset: "
                               "call observe() first")
        return {key: hist[ids].copy() for key, hist in self._history.items()}

    # ------------------------------------------------------------------ planning and acting
    def needs_plan(self, env_ids: Iterable[int] | None = None) -> np.ndarray:
        """Which of these environments would get a new chunk on the next :meth:`act`."""
        return self.queued(env_ids) <= self.replan_threshold

    def plan(self, env_ids: Iterable[int] | None = None) -> None:
        """One batched policy call for these environments; their queues get the new chunks."""
        ids = self._ids(env_ids)
        if ids.size == 0:
            return
        window = self.observation_window(ids)
        start = time.perf_counter()
        result = self.policy.predict_action(window)
        chunk = _to_numpy(result["action"])
        self.plan_latencies_s.append(time.perf_counter() - start)
        self.plan_batch_sizes.append(int(ids.size))
        prediction = _to_numpy(result["action_pred"]) if "action_pred" in result else chunk
        self.set_chunks(ids, chunk, prediction)

    def set_chunks(self, env_ids: Iterable[int], chunks, predictions=None) -> None:
        """Replace the queues of these environments by ``chunks`` (len(env_ids), Ta, D)."""
        ids = self._ids(env_ids)
        chunks = _to_numpy(chunks)
        if chunks.ndim != 3 or chunks.shape[0] != len(ids) or chunks.shape[1] < 1:
            raise ValueError(f"policy action chunk must have shape (B={len(ids)}, Ta>=1, action_dim), "
                             f"got {chunks.shape}")
        if self.n_action_steps is not None:
            if chunks.shape[1] < self.n_action_steps:
                raise ValueError(f"policy returned chunks of {chunks.shape[1]} actions, fewer than "
                                 f"n_action_steps={self.n_action_steps}")
            chunks = chunks[:, :self.n_action_steps]
        if chunks.shape[1] <= self.replan_threshold:
            raise ValueError(f"chunks of {chunks.shape[1]} actions with replan_threshold="
                             f"{self.replan_threshold}: the threshold must be below the chunk length")
        predictions = chunks if predictions is None else _to_numpy(predictions)
        for row, i in enumerate(ids):
            self._queue[i] = np.array(chunks[row], copy=True)
            self._cursor[i] = 0
            self.last_prediction[i] = np.array(predictions[row], copy=True)

    def act(self, env_ids: Sequence[int] | None = None) -> np.ndarray:
        """Next action of each of these environments, (len(env_ids), D), planning where needed."""
        ids = self._ids(env_ids)
        self.plan(ids[self.needs_plan(ids)])
        actions = []
        for i in ids:
            actions.append(self._queue[i][self._cursor[i]])
            self._cursor[i] += 1
            self.steps[i] += 1
        if not actions:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(actions)
