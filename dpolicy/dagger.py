"""DAgger on Push-T: roll a trained policy out, label every state it visits with the scripted
expert's action, and aggregate those episodes into the dataset (``dpolicy collect --dagger``).

A round is one checkpoint's rollouts. In each step the policy (through the same receding-horizon
:class:`~dpolicy.control.controller.ChunkController` as evaluation) chooses the executed action;
with probability ``beta`` the expert's label is executed instead. The recorded action is always
the expert's label, so the dataset learns what the expert would have done in the states the policy
reaches: near walls, in corners, after a bad push. Episodes end at success or after
``max_steps``. The labelling expert has the parameters the dataset's demonstrations were
collected with (:func:`~dpolicy.collect.labelling_expert`) and keeps to one plan while the
policy stays near it, so consecutive labels of a rollout follow one route.

Bookkeeping lives in the dataset's metadata and is committed with each episode in one atomic
write: ``episode_sources`` (``"demonstration"`` or ``"dagger:<round>"`` per episode),
``episode_seeds`` and ``dagger_rounds`` (per round: checkpoint path, SHA-256 and step, ``beta``,
seed, ``max_steps``, episodes added and how many of them the policy finished successfully). A
killed run loses only its unfinished rollouts: running the same command again resumes the same
round (same checkpoint and settings) from the next unused reset seed, so no episode is repeated.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpolicy.collect import DemoDataset, collection_seeds, expert_seed_for, labelling_expert
from dpolicy.data.replay_buffer import DatasetError
from envs.pusht.env import MAX_EPISODE_STEPS
from envs.pusht.recording import EpisodeRecorder

#: Prefix of the ``episode_sources`` entry of a relabelled episode: ``"dagger:<round>"``.
SOURCE_PREFIX = "dagger:"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class DaggerSummary:
    """What a call to :func:`dagger_round` did."""

    round: int
    added: int              # episodes added by this call
    round_episodes: int     # episodes of the round in the dataset after it
    policy_successes: int   # of the round's episodes, those the rollout finished successfully
    dataset_episodes: int
    labelled_steps: int = 0     # steps labelled by this call
    label_plans: int = 0        # plans the labelling expert made for them (one per re-plan)
    label_seconds: float = 0.0  # wall-clock spent in the labelling expert


def _round_settings(checkpoint: Path, step: int, beta: float, seed: int, max_steps: int) -> dict:
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), "checkpoint_step": step,
            "beta": float(beta), "seed": int(seed), "max_steps": int(max_steps)}


def _current_round(dataset: DemoDataset, settings: dict) -> tuple[list[dict], int]:
    """The dataset's rounds (with a new one appended unless the last has these settings) and its index."""
    rounds = [dict(r) for r in dataset.buffer.attrs.get("dagger_rounds", [])]
    same = {k: v for k, v in settings.items() if k != "checkpoint"}  # the file may have moved
    if rounds and all(rounds[-1].get(k) == v for k, v in same.items()):
        return rounds, len(rounds) - 1
    rounds.append({**settings, "episodes": 0, "policy_successes": 0})
    return rounds, len(rounds) - 1


def dagger_round(dataset_path: str | Path, checkpoint: str | Path, episodes: int, beta: float = 0.0,
                 n_envs: int = 8, seed: int = 0, max_steps: int = MAX_EPISODE_STEPS, device: str = "cpu",
                 progress: bool = True) -> DaggerSummary:
    """Roll ``checkpoint``'s policy out until its round holds ``episodes`` relabelled episodes.

    ``dataset_path`` must exist (made by ``dpolicy collect``); its image frames are recorded too
    when it has ``data/img``. Reset seeds start at ``seed`` and skip every seed the dataset used
    and the evaluation seeds.
    """
    import gymnasium as gym
    from tqdm import tqdm

    import envs  # noqa: F401 (registers the environments)
    from dpolicy.control.controller import ChunkController
    from dpolicy.training.checkpoint import policy_from_checkpoint, read_checkpoint

    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    checkpoint = Path(checkpoint)
    loaded = read_checkpoint(checkpoint)  # read once: the policy, its config and its step
    policy, cfg, step = policy_from_checkpoint(loaded).to(device).eval(), loaded.config, loaded.step
    env_id = cfg.task.get("env_id")
    env_kwargs = dict(cfg.task.get("env_kwargs") or {})
    probe = gym.make(env_id, **env_kwargs) if env_id else None
    if probe is None or not hasattr(probe.unwrapped, "sim"):
        raise DatasetError(f"{checkpoint}: DAgger labels states with the Push-T scripted expert; the checkpoint's "
                           f"task environment is {env_id!r}, not a Push-T environment")
    probe.close()

    dataset = DemoDataset(dataset_path, collector=None)
    try:
        images = "img" in dataset.buffer.keys()
        rounds, index = _current_round(dataset, _round_settings(checkpoint, step, beta, seed, max_steps))
        source = f"{SOURCE_PREFIX}{index}"
        done = sum(s == source for s in dataset.episode_sources)
        remaining = max(0, int(episodes) - done)
        if remaining == 0:  # the round is complete: nothing to roll out
            return DaggerSummary(round=index, added=0, round_episodes=done,
                                 policy_successes=int(rounds[index]["policy_successes"]),
                                 dataset_episodes=dataset.n_episodes)
        n_envs = min(int(n_envs), remaining)
        envs_ = [gym.make(env_id, **env_kwargs) for _ in range(n_envs)]
        experts = [labelling_expert(dataset.collector) for _ in range(n_envs)]
        controller = ChunkController(policy, n_envs)
        seeds = collection_seeds(seed, skip=dataset.used_seeds)
        rng = np.random.default_rng([int(seed), index, done])
        recorders: list[EpisodeRecorder | None] = [None] * n_envs
        reset_seeds = [0] * n_envs
        previous: list[np.ndarray | None] = [None] * n_envs
        started = added = labelled = plans = 0
        label_seconds = 0.0
        bar = tqdm(total=int(episodes), initial=done, desc=f"DAgger round {index}", unit="episode",
                   disable=not progress)

        def start(i: int) -> None:
            nonlocal started
            reset_seeds[i] = next(seeds)
            obs, _ = envs_[i].reset(seed=reset_seeds[i])
            experts[i].reset(expert_seed_for(seed, reset_seeds[i]))
            controller.reset([i])
            controller.observe(_batched(obs), [i])
            recorders[i], previous[i] = EpisodeRecorder(images), None
            started += 1

        for i in range(n_envs):
            start(i)
        try:
            while any(r is not None for r in recorders):
                ids = [i for i, r in enumerate(recorders) if r is not None]
                planned = controller.act(ids)
                for row, i in enumerate(ids):
                    env, recorder = envs_[i], recorders[i]
                    plans_before, tick = experts[i].plans, time.perf_counter()
                    label = experts[i].act(env.unwrapped.sim.get_full_state(), previous_target=previous[i])
                    label_seconds += time.perf_counter() - tick
                    plans += experts[i].plans - plans_before
                    labelled += 1
                    executed = label if rng.random() < beta else planned[row]
                    obs, _, _, _, info = recorder.step(env, executed, label=label)
                    previous[i] = np.asarray(executed, dtype=np.float64)
                    if not (info["is_success"] or len(recorder) >= max_steps):
                        controller.observe(_batched(obs), [i])
                        continue
                    round_info = rounds[index]
                    round_info["episodes"] += 1
                    round_info["policy_successes"] += int(bool(info["is_success"]))
                    dataset.add_episode(reset_seeds[i], recorder.episode(), source=source,
                                        attrs={"dagger_rounds": rounds})
                    added += 1
                    bar.update(1)
                    bar.set_postfix(policy_success=f"{round_info['policy_successes']}/{round_info['episodes']}",
                                    refresh=False)
                    recorders[i] = None
                    if started < remaining:
                        start(i)
        finally:
            bar.close()
            for env in envs_:
                env.close()
        return DaggerSummary(round=index, added=added, round_episodes=done + added,
                             policy_successes=int(rounds[index]["policy_successes"]),
                             dataset_episodes=dataset.n_episodes, labelled_steps=labelled, label_plans=plans,
                             label_seconds=label_seconds)
    finally:
        dataset.close()


def _batched(obs):
    """One environment's observation with a leading batch axis of 1 (a dict or an array)."""
    if isinstance(obs, dict):
        return {k: np.asarray(v)[None] for k, v in obs.items()}
    return np.asarray(obs)[None]
