"""Vectorized policy rollouts and their metrics: :func:`evaluate`.

``n_envs`` environments run side by side (worker processes by default); the policy stays in
this process. Each environment plays episodes from the seed list until none is left: when its
episode ends it is reset with the next unplayed seed, or sits idle (is not stepped again). A
:class:`~dpolicy.control.ChunkController` plans for all environments at once: one batched
policy call per control step, for exactly the environments whose action queue ran out.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dpolicy.control import ChunkController
from dpolicy.evaluation.metrics import EpisodeResult, summarize
from dpolicy.evaluation.protocols import protocol_seeds
from dpolicy.evaluation.vector import RECORD_OPTION, episode_limit, make_vector_env, pause_action, renders_frames

#: Most environments run at once when ``n_envs`` is not given (more only add processes).
DEFAULT_MAX_ENVS = 50


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`evaluate`; ``metrics`` holds what the finished episodes measured."""

    def __init__(self, metrics: dict):
        super().__init__("evaluation interrupted")
        self.metrics = metrics


#: Key of an environment's ``metadata`` that names the info values to track per episode
#: (each gives ``max_<key>`` and ``final_<key>`` columns), e.g. ``("distance",)``.
EPISODE_INFO_KEYS = "episode_info_keys"


@dataclass
class EpisodeTrace:
    """Rendered frames, executed actions, plans and rewards, step by step (for videos)."""

    frames: list[np.ndarray] = field(default_factory=list)  # len = steps + 1 (the reset frame first)
    actions: list[np.ndarray] = field(default_factory=list)
    predictions: list[np.ndarray | None] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


@dataclass
class _Running:
    """Bookkeeping of the episode an environment is playing."""

    episode: int
    seed: int
    length: int = 0
    score: float = -np.inf
    first_success_step: int = -1
    n_plans: int = 0
    extras: dict[str, float] = field(default_factory=dict)
    trace: EpisodeTrace | None = None

    def result(self) -> EpisodeResult:
        return EpisodeResult(episode=self.episode, seed=self.seed, length=self.length, score=self.score,
                             success=self.first_success_step > 0, first_success_step=self.first_success_step,
                             n_plans=self.n_plans, extras=dict(self.extras))


def _has_info(info: Mapping, key: str, index: int) -> bool:
    """Whether sub-environment ``index`` reported ``key`` (vector infos carry a ``_key`` mask)."""
    return key in info and bool(info.get(f"_{key}", np.ones(index + 1, bool))[index])


def _info_value(info: Mapping, key: str, index: int, env_id: str):
    if not _has_info(info, key, index):
        raise KeyError(f"environment {env_id!r} did not report {key!r} in its info dict "
                       f"(got keys {sorted(k for k in info if not k.startswith('_'))})")
    return info[key][index]


def _select(obs, ids: np.ndarray):
    if isinstance(obs, Mapping):
        return {k: np.asarray(v)[ids] for k, v in obs.items()}
    return np.asarray(obs)[ids]


def default_n_envs(n_episodes: int) -> int:
    """All episodes at once, up to :data:`DEFAULT_MAX_ENVS` (batched planning is what costs most)."""
    return max(1, min(n_episodes, DEFAULT_MAX_ENVS))


@contextmanager
def _inference(policy, seed: int | None):
    """Policy in eval mode without autograd; torch's and numpy's global generators seeded.

    The policy's train/eval mode and the generators' states are restored afterwards.
    """
    import torch

    was_training = bool(getattr(policy, "training", False))
    np_state = np.random.get_state()
    devices = None if torch.cuda.is_available() else []  # None: fork every CUDA generator too
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(int(seed))
            np.random.seed(int(seed) % 2**32)
        if isinstance(policy, torch.nn.Module):
            policy.eval()
        try:
            yield
        finally:
            if isinstance(policy, torch.nn.Module):
                policy.train(was_training)
            if seed is not None:
                np.random.set_state(np_state)


class RolloutRun:
    """One evaluation: plays every seed once; results accumulate as episodes finish.

    ``results``, ``traces`` (first ``n_traces`` episodes) and ``final_frames`` (with
    ``record_final``) are filled in place, so that an interrupted run still holds what it measured.
    """

    def __init__(self, policy, env_id: str, seeds: list[int], env_kwargs: dict | None = None, n_envs: int = 1,
                 vector: str = "async", max_steps: int | None = None, n_traces: int = 0, replan_threshold: int = 0,
                 max_concurrency: int | None = None, record_final: bool = False):
        self.env_id, self.seeds, self.env_kwargs = env_id, list(seeds), dict(env_kwargs or {})
        self.n_envs, self.vector, self.n_traces = n_envs, vector, n_traces
        self.max_steps = episode_limit(env_id, self.env_kwargs) if max_steps is None else int(max_steps)
        self.max_concurrency = max_concurrency
        if (n_traces or record_final) and not renders_frames(env_id):
            n_traces, record_final = 0, False  # the task draws nothing: no videos, no frame grid
        self.n_traces, self.record_final = n_traces, bool(record_final)
        if n_traces or record_final:
            self.env_kwargs.setdefault("render_mode", "rgb_array")
        self.controller = ChunkController(policy, n_envs=n_envs, replan_threshold=replan_threshold)
        self.results: list[EpisodeResult] = []
        self.traces: dict[int, EpisodeTrace] = {}
        self.final_frames: dict[int, np.ndarray] = {}
        self.info_keys: tuple[str, ...] = ()
        self._running: list[_Running | None] = [None] * n_envs
        self._next_episode = 0

    def run(self, progress: bool = True) -> None:
        """Play all seeds (worker processes are closed, killed on Ctrl-C)."""
        envs = make_vector_env(self.env_id, self.n_envs, self.env_kwargs, self.max_steps, self.vector,
                               self.max_concurrency)
        self.info_keys = tuple(envs.metadata.get(EPISODE_INFO_KEYS, ()))
        interrupted = False
        bar = tqdm(total=len(self.seeds), desc="eval", unit="ep", disable=not progress, dynamic_ncols=True)
        try:
            self._loop(envs, bar)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            bar.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "close while waiting for a pending step" after Ctrl-C
                envs.close(terminate=interrupted)

    def _start(self, envs, ids: Iterable[int], first: bool = False) -> None:
        """Reset these environments with the next unplayed seeds.

        Those left without a seed go idle: they are reset without one too (gymnasium's sync
        vector refuses to carry a finished environment otherwise), then only ever paused.
        """
        reset_seeds: list[int | None] = [None] * self.n_envs
        record: list[str | None] = [None] * self.n_envs
        mask = np.zeros(self.n_envs, dtype=bool)
        for i in ids:
            self._running[i] = None
            mask[i] = True
            if self._next_episode < len(self.seeds):
                episode = self._next_episode
                seed = self.seeds[episode]
                trace = EpisodeTrace() if episode < self.n_traces else None
                self._running[i] = _Running(episode=episode, seed=seed, trace=trace)
                reset_seeds[i] = seed
                record[i] = "all" if trace is not None else "final" if self.record_final else None
                self._next_episode += 1
        if not mask.any():
            return
        options = {RECORD_OPTION: record} if any(record) else {}
        if not first:
            options["reset_mask"] = mask
        obs, info = envs.reset(seed=reset_seeds, options=options or None)
        started = np.array([i for i in np.flatnonzero(mask) if self._running[i] is not None], dtype=np.int64)
        self.controller.reset(started)
        self.controller.observe(_select(obs, started), started)
        for i in started:
            if self._running[i].trace is not None:
                self._running[i].trace.frames.append(info["frame"][i])

    def _loop(self, envs, bar) -> None:
        self._start(envs, range(self.n_envs), first=True)
        idle = pause_action(envs.single_action_space)
        while True:
            active = np.array([i for i in range(self.n_envs) if self._running[i] is not None], dtype=np.int64)
            if active.size == 0:
                return
            planning = set(active[self.controller.needs_plan(active)].tolist())
            chosen = self.controller.act(active)
            actions = np.tile(idle, (self.n_envs, 1))
            actions[active] = chosen
            obs, rewards, terminated, truncated, info = envs.step(actions)
            self.controller.observe(_select(obs, active), active)
            finished = []
            for row, i in enumerate(active):
                ep = self._running[i]
                reward = float(rewards[i])
                ep.length += 1
                ep.n_plans += int(i in planning)
                ep.score = max(ep.score, reward)
                if _has_info(info, "is_success", i) and bool(info["is_success"][i]) and ep.first_success_step < 0:
                    ep.first_success_step = ep.length
                for key in self.info_keys:
                    value = float(_info_value(info, key, i, self.env_id))
                    ep.extras[f"max_{key}"] = max(ep.extras.get(f"max_{key}", -np.inf), value)
                    ep.extras[f"final_{key}"] = value
                if ep.trace is not None:
                    ep.trace.frames.append(info["frame"][i])
                    ep.trace.actions.append(np.asarray(chosen[row], dtype=np.float64))
                    ep.trace.predictions.append(self.controller.last_prediction[i])
                    ep.trace.rewards.append(reward)
                if terminated[i] or truncated[i] or ep.length >= self.max_steps:
                    finished.append(i)
                    self.results.append(ep.result())
                    if _has_info(info, "final_frame", i):
                        self.final_frames[ep.episode] = info["final_frame"][i]
                    if ep.trace is not None:
                        self.traces[ep.episode] = ep.trace
            if finished:
                bar.update(len(finished))
                bar.set_postfix(score=f"{np.mean([r.score for r in self.results]):.3f}",
                                success=f"{np.mean([r.success for r in self.results]):.2f}")
                self._start(envs, finished)


def evaluate(policy, env_id: str, seeds: str | Iterable[int], env_kwargs: dict | None = None,
             n_envs: int | None = None, vector: str = "async", max_steps: int | None = None,
             out_dir: str | os.PathLike | None = None, n_videos: int = 0, progress: bool = True,
             replan_threshold: int = 0, policy_seed: int | None = 0, video_format: str = "mp4",
             metadata: Mapping | None = None, max_concurrency: int | None = None) -> dict:
    """Roll ``policy`` out on one episode per seed and return the summary metrics.

    Args:
        policy: object with ``predict_action`` and ``n_obs_steps`` (see ChunkController).
        env_id: gymnasium id, e.g. ``envs/PointReach-v0``; its namespace module is imported.
        seeds: a protocol name (``paper``, ``large``, ``train``) or a list of seeds.
        n_envs: environments run at once (default: all episodes, at most 50).
        vector: ``async`` (worker processes) or ``sync`` (this process).
        max_steps: episode limit in control steps (default: the environment's own, see
            :func:`~dpolicy.evaluation.vector.episode_limit`).
        out_dir: when given, ``metrics.json``, ``episodes.csv``, the final-frame grid
            ``final_frames.png`` and ``n_videos`` videos of the first episodes are written there.
        replan_threshold: plan again when this many actions are still queued (0: at the end).
        policy_seed: seeds torch/numpy for the duration (restored afterwards); None leaves them.
            A torch module policy runs in eval mode (its mode is restored afterwards).
        metadata: extra entries for ``metrics.json`` (checkpoint path, ...).
        max_concurrency: with ``async``, how many workers may step at once (default: all).

    Returns:
        score, success_rate, success_ci95 [lo, hi], mean_length, latency_p50_ms,
        latency_p95_ms, n_episodes, wall_s and more (see ``metrics.summarize``).
        Ctrl-C raises :class:`EvaluationInterrupted` after writing the partial results.
    """
    seed_list = protocol_seeds(seeds)
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if n_videos < 0:
        raise ValueError(f"n_videos must be >= 0, got {n_videos}")
    n_envs = default_n_envs(len(seed_list)) if n_envs is None else min(int(n_envs), len(seed_list))
    n_traces = min(n_videos, len(seed_list)) if out_dir is not None else 0
    run = RolloutRun(policy, env_id, seed_list, env_kwargs=env_kwargs, n_envs=n_envs, vector=vector,
                     max_steps=max_steps, n_traces=n_traces, replan_threshold=replan_threshold,
                     max_concurrency=max_concurrency, record_final=out_dir is not None)
    start = time.perf_counter()
    interrupted = False
    try:
        with _inference(policy, policy_seed):
            run.run(progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    wall_s = time.perf_counter() - start
    results = sorted(run.results, key=lambda r: r.episode)
    metrics = summarize(results, run.controller.plan_latencies_s, run.controller.plan_batch_sizes, wall_s)
    metrics.update({
        "env_id": env_id, "env_kwargs": dict(env_kwargs or {}), "n_envs": n_envs, "vector": vector,
        "max_steps": run.max_steps, "replan_threshold": int(replan_threshold),
        "n_seeds": len(seed_list), "first_seed": seed_list[0], "interrupted": interrupted,
        **dict(metadata or {}),
    })
    if out_dir is not None:
        from dpolicy.evaluation.report import write_report

        metrics["out_dir"] = str(Path(out_dir))
        write_report(Path(out_dir), metrics, results, run.traces, run.final_frames, run.info_keys,
                     video_format=video_format)
    if interrupted:
        raise EvaluationInterrupted(metrics)
    return metrics
