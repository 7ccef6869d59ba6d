"""Recording Push-T demonstrations into a zarr dataset (the library behind ``dpolicy collect``,
whose arguments live in :mod:`dpolicy.commands.collect`).

Two sources:

- ``--expert scripted``: the scripted expert (:mod:`envs.pusht.expert`) in parallel worker
  processes. Only successful episodes are kept. Collection is resumable: every committed episode's
  reset seed is recorded in the dataset's metadata, so running the same command again (after a
  crash, a kill or to ask for more episodes) continues where the dataset ends, skipping those seeds.
- ``--teleop``: mouse teleoperation in a pygame window (:mod:`envs.pusht.teleop`); the window hands
  over every saved episode as numpy arrays and :func:`collect_teleop` appends it to the dataset.

Episodes are recorded step by step with :class:`envs.pusht.recording.EpisodeRecorder`; this module
turns them into datasets (:class:`DemoDataset`).

Datasets have the layout of the original human data: ``data/state`` (N, 5), ``data/action`` (N, 2),
``data/keypoint`` (N, 9, 2), ``data/n_contacts`` (N, 1), optionally ``data/img`` (N, 96, 96, 3), all
float32, and ``meta/episode_ends``. As in the human data, ``state[t]`` is observed before
``action[t]`` is commanded, ``n_contacts[t]`` counts the contacts of the step taken with
``action[t]``, and an expert episode ends at the first step whose coverage exceeds 0.95.

Metadata (root attributes): ``collector`` (source and settings; a resumed run must match them),
``episode_seeds`` (the environment reset seed of every episode, in order) and ``failed_seeds``
(expert episodes that did not succeed and were dropped).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dpolicy.evaluation.protocols import PROTOCOLS
from envs.pusht.env import MAX_EPISODE_STEPS
from envs.pusht.recording import EpisodeRecorder

#: Reset seeds of the evaluation protocols (the large one holds the paper's): never used for collection.
EVAL_SEEDS = range(PROTOCOLS["large"][0], PROTOCOLS["large"][0] + PROTOCOLS["large"][1])
__all__ = ["EVAL_SEEDS", "MAX_EPISODE_STEPS", "EpisodeRecorder"]


# ====================================================================== expert episodes

@dataclass
class ExpertEpisode:
    """One scripted-expert rollout."""

    reset_seed: int
    success: bool
    steps: int
    seconds: float                   # CPU time of the rollout (expert planning + simulation)
    episode: dict[str, np.ndarray]   # recorded arrays (see EpisodeRecorder), up to the success step
    pushed_edges: list[int] = field(default_factory=list)


def expert_seed_for(base_seed: int, reset_seed: int) -> list[int]:
    """The expert's own seed for an episode: derived from the collection seed and the reset seed."""
    return [int(base_seed), int(reset_seed)]


def run_expert_episode(env, expert, reset_seed: int, expert_seed, images: bool = False,
                       max_steps: int = MAX_EPISODE_STEPS) -> ExpertEpisode:
    """Play one episode of ``expert`` (a ScriptedExpert) in ``env`` (a PushTEnv) from ``reset_seed``.

    The episode stops at the first step with coverage > 0.95 (success) or after ``max_steps``.
    """
    env.reset(seed=int(reset_seed))
    expert.reset(expert_seed)
    recorder = EpisodeRecorder(images)
    sim = env.unwrapped.sim
    start = time.process_time()
    success = False
    for _ in range(max_steps):
        info = recorder.step(env, expert.act(sim.get_full_state()))[4]
        if info["is_success"]:
            success = True
            break
    return ExpertEpisode(reset_seed=int(reset_seed), success=success, steps=len(recorder),
                         seconds=time.process_time() - start, episode=recorder.episode(),
                         pushed_edges=list(expert.pushed_edges))


def collection_seeds(start: int, skip=()) -> Iterator[int]:
    """Reset seeds ``start, start + 1, ...`` without the evaluation seeds and those in ``skip``."""
    skip = set(skip)
    seed = int(start)
    while True:
        if seed in EVAL_SEEDS:
            seed = EVAL_SEEDS.stop
            continue
        if seed not in skip:
            yield seed
        seed += 1


# ====================================================================== the dataset side

class DemoDataset:
    """A zarr dataset being collected into: episodes plus the seeds and sources that made them.

    Opening an existing dataset resumes it (its ``collector`` settings must equal ``collector``;
    ``collector=None`` adopts the stored ones, to aggregate other episodes into it, as DAgger does);
    otherwise a new one is created. Every episode has a source (``episode_sources``: ``"demonstration"``
    for the collector's own episodes, ``"dagger:<round>"`` for relabelled ones). Crash safety: an
    episode and its seed and source are committed in one atomic write (datasets written before that
    stored the seed first: an extra seed left by a crash is dropped on reopen).
    """

    #: Source of the episodes recorded by the dataset's own collector.
    DEMONSTRATION = "demonstration"

    def __init__(self, path: str | Path, collector: dict | None):
        from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer

        path = Path(path)
        if collector is None and not path.exists():
            raise DatasetError(f"{path}: no such dataset to add episodes to")
        self.collector = None if collector is None else dict(collector)
        if path.exists():
            self.buffer = ReplayBuffer.open(path, mode="a")
            stored = self.buffer.attrs.get("collector")
            if stored is None:
                raise DatasetError(f"{path}: exists but was not made by `dpolicy collect` (no 'collector' "
                                   "metadata); choose another --out")
            if self.collector is None:
                self.collector = dict(stored)
            if dict(stored) != self.collector:
                differing = sorted(k for k in set(stored) | set(self.collector)
                                   if stored.get(k) != self.collector.get(k))
                details = ", ".join(f"{k}: dataset {stored.get(k)!r} vs now {self.collector.get(k)!r}"
                                    for k in differing)
                raise DatasetError(f"{path}: collected with other settings ({details}); resume with the "
                                   "same options or choose another --out")
            seeds = [int(s) for s in self.buffer.attrs.get("episode_seeds", [])]
            if len(seeds) < self.buffer.n_episodes:
                raise DatasetError(f"{path}: metadata lists {len(seeds)} episode seeds for "
                                   f"{self.buffer.n_episodes} episodes; the dataset was modified outside "
                                   "`dpolicy collect`")
            if len(seeds) > self.buffer.n_episodes:  # a crash between writing the seed and the episode
                seeds = seeds[:self.buffer.n_episodes]
                self.buffer.attrs["episode_seeds"] = seeds
            sources = [str(s) for s in self.buffer.attrs.get("episode_sources", [])]
            sources += [self.DEMONSTRATION] * (self.buffer.n_episodes - len(sources))  # older datasets
            if len(sources) != self.buffer.n_episodes or "episode_sources" not in self.buffer.attrs:
                sources = sources[:self.buffer.n_episodes]
                self.buffer.attrs["episode_sources"] = sources
        else:
            self.buffer = ReplayBuffer.create(path, attrs={"collector": self.collector, "episode_seeds": [],
                                                           "episode_sources": [], "failed_seeds": []})
            seeds, sources = [], []
        self.episode_seeds = seeds
        self.episode_sources = sources
        self.failed_seeds = [int(s) for s in self.buffer.attrs.get("failed_seeds", [])]

    @property
    def n_episodes(self) -> int:
        return self.buffer.n_episodes

    @property
    def used_seeds(self) -> set[int]:
        """Seeds already tried: committed episodes and recorded failures."""
        return set(self.episode_seeds) | set(self.failed_seeds)

    def add_episode(self, seed: int, episode: dict[str, np.ndarray], source: str | None = None,
                    attrs: dict | None = None) -> None:
        """Append one episode with its reset seed and source (default: a demonstration) and any
        further metadata ``attrs``, all in one atomic write."""
        source = self.DEMONSTRATION if source is None else str(source)
        self.buffer.append_episode(episode, attrs={**(attrs or {}),
                                                   "episode_seeds": [*self.episode_seeds, int(seed)],
                                                   "episode_sources": [*self.episode_sources, source]})
        self.episode_seeds.append(int(seed))
        self.episode_sources.append(source)

    def add_failure(self, seed: int) -> None:
        self.failed_seeds.append(int(seed))
        self.buffer.attrs["failed_seeds"] = list(self.failed_seeds)

    def close(self) -> None:
        self.buffer.close()


# ====================================================================== parallel expert collection

_worker_state: dict = {}


def _init_worker(images: bool, parent_pid: int | None = None) -> None:
    """Set up a worker's environment and expert; a pool worker (``parent_pid``) ends with its parent."""
    from dpolicy.processes import exit_with_parent
    from envs.pusht.env import PushTEnv

    if parent_pid is not None:
        exit_with_parent(parent_pid)
    from envs.pusht.expert import ScriptedExpert

    _worker_state["env"] = PushTEnv(obs_type="state")
    _worker_state["expert"] = ScriptedExpert()
    _worker_state["images"] = images


def _worker_episode(reset_seed: int, base_seed: int) -> ExpertEpisode:
    return run_expert_episode(_worker_state["env"], _worker_state["expert"], reset_seed,
                              expert_seed_for(base_seed, reset_seed), images=_worker_state["images"])


def map_expert_episodes(seeds: Iterator[int], base_seed: int, images: bool,
                        workers: int) -> Iterator[ExpertEpisode]:
    """Expert episodes for ``seeds``, in seed order, computed by ``workers`` processes (lazily)."""
    if workers <= 1:
        _init_worker(images)
        for seed in seeds:
            yield _worker_episode(seed, base_seed)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(images, os.getpid())) as pool:
        pending: deque = deque()
        try:
            while True:
                while len(pending) < 2 * workers:
                    seed = next(seeds, None)
                    if seed is None:
                        break
                    pending.append(pool.submit(_worker_episode, seed, base_seed))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def collect_expert(out: Path, episodes: int, workers: int = 1, seed: int = 0, images: bool = False,
                   progress: bool = True) -> DemoDataset:
    """Collect successful scripted-expert episodes into ``out`` until it holds ``episodes`` episodes.

    Resumes an existing dataset made with the same settings (see :class:`DemoDataset`).
    """
    from tqdm import tqdm

    from envs.pusht.expert import ExpertParams

    collector = {"source": "scripted expert (envs.pusht.expert.ScriptedExpert)", "seed": int(seed),
                 "images": bool(images), "max_episode_steps": MAX_EPISODE_STEPS,
                 "expert_params": asdict(ExpertParams())}
    dataset = DemoDataset(out, collector)
    if dataset.n_episodes >= episodes:
        return dataset
    seeds = collection_seeds(seed, skip=dataset.used_seeds)
    bar = tqdm(total=episodes, initial=dataset.n_episodes, desc="expert episodes", unit="episode",
               disable=not progress)
    tried = succeeded = 0
    try:
        for result in map_expert_episodes(seeds, seed, images, workers):
            tried += 1
            succeeded += result.success
            bar.set_postfix(success=f"{succeeded}/{tried}", refresh=False)
            if result.success:
                dataset.add_episode(result.reset_seed, result.episode)
                bar.update(1)
            else:
                dataset.add_failure(result.reset_seed)
            if dataset.n_episodes >= episodes:
                break
    finally:
        bar.close()
    return dataset


def collect_teleop(out: Path, seed: int = 0, images: bool = False, scale: float = 1.0) -> DemoDataset:
    """Open a pygame window and append every episode the user saves to ``out`` (created or resumed)."""
    from envs.pusht.teleop import INSTRUCTIONS, TeleopSession

    created = not Path(out).exists()
    dataset = DemoDataset(out, {"source": "mouse teleoperation (envs.pusht.teleop)", "images": bool(images),
                                "control_hz": 10})
    try:
        session = TeleopSession(dataset.add_episode, collection_seeds(seed, skip=dataset.used_seeds),
                                images=images, scale=scale)
    except Exception:
        dataset.close()
        if created:  # leave no empty dataset behind
            shutil.rmtree(out)
        raise
    print(INSTRUCTIONS)
    session.run()
    return dataset
