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

import math
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
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


@dataclass(frozen=True)
class ExpertVariation:
    """How expert episodes depart from the benchmark's starts and the expert's own motion, so that
    the data shows the recoveries a policy needs once it drifts off the expert's path.

    ``near_wall_share``: share of episodes that start with the T by a wall or in a corner
    (:func:`envs.pusht.starts.near_wall_state`) instead of from the benchmark's reset.
    ``action_noise``: std (px) of correlated noise added to every executed target; the recorded
    action stays the expert's own (as in DART), so the data shows the expert correcting the drift.
    ``noise_correlation``: per-step correlation of that noise (0: white).
    """

    near_wall_share: float = 0.0
    action_noise: float = 0.0
    noise_correlation: float = 0.8

    def __post_init__(self):
        if not 0.0 <= self.near_wall_share <= 1.0:
            raise ValueError(f"near_wall_share must be in [0, 1], got {self.near_wall_share}")
        if self.action_noise < 0.0:
            raise ValueError(f"action_noise must be >= 0, got {self.action_noise}")
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ValueError(f"noise_correlation must be in [0, 1), got {self.noise_correlation}")


#: Stream of the variation's random numbers, apart from the expert's own (same base and reset seeds).
_VARIATION_STREAM = 1


def episode_start(base_seed: int, reset_seed: int, variation: ExpertVariation) -> np.ndarray | None:
    """The start state of a collected episode, or ``None`` for the benchmark's reset from ``reset_seed``."""
    from envs.pusht.starts import near_wall_state

    rng = np.random.default_rng([int(base_seed), int(reset_seed), _VARIATION_STREAM])
    if variation.near_wall_share > 0 and rng.random() < variation.near_wall_share:
        return near_wall_state(rng)
    return None


def expert_seed_for(base_seed: int, reset_seed: int) -> list[int]:
    """The expert's own seed for an episode: derived from the collection seed and the reset seed."""
    return [int(base_seed), int(reset_seed)]


def run_expert_episode(env, expert, reset_seed: int, expert_seed, images: bool = False,
                       max_steps: int = MAX_EPISODE_STEPS,
                       variation: ExpertVariation = ExpertVariation()) -> ExpertEpisode:
    """Play one episode of ``expert`` (a ScriptedExpert) in ``env`` (a PushTEnv) from ``reset_seed``.

    ``expert_seed`` is ``expert_seed_for(base_seed, reset_seed)``; with a ``variation`` the start and
    the executed targets follow it (see :class:`ExpertVariation`). The episode stops at the first
    step with coverage > 0.95 (success) or after ``max_steps``.
    """
    base_seed = int(np.atleast_1d(expert_seed)[0])
    start_state = episode_start(base_seed, reset_seed, variation)
    if start_state is None:
        env.reset(seed=int(reset_seed))
    else:
        env.reset(options={"reset_to_state": start_state})
    expert.reset(expert_seed)
    noise_rng = np.random.default_rng([base_seed, int(reset_seed), _VARIATION_STREAM + 1])
    rho, sigma = variation.noise_correlation, variation.action_noise
    noise = np.zeros(2)
    recorder = EpisodeRecorder(images)
    sim = env.unwrapped.sim
    start = time.process_time()
    success = False
    for _ in range(max_steps):
        label = expert.act(sim.get_full_state())
        if sigma > 0:
            noise = rho * noise + math.sqrt(1.0 - rho * rho) * sigma * noise_rng.normal(size=2)
            info = recorder.step(env, label + noise, label=label)[4]
        else:
            info = recorder.step(env, label)[4]
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
            stored, now = _with_default_expert_params(stored), _with_default_expert_params(self.collector)
            if stored != now:
                differing = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
                details = ", ".join(f"{k}: dataset {stored.get(k)!r} vs now {now.get(k)!r}" for k in differing)
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


def _with_default_expert_params(collector: dict) -> dict:
    """``collector`` with its ``expert_params`` completed by the defaults of fields it does not list:
    a dataset collected before a parameter existed was collected at that parameter's default."""
    collector = dict(collector)
    if isinstance(collector.get("expert_params"), dict):
        try:
            collector["expert_params"] = asdict(expert_params_from(collector["expert_params"]))
        except ValueError:  # a field this version does not know: compared as stored
            pass
    return collector


def expert_params_from(overrides: dict | None = None):
    """``ExpertParams`` with ``overrides`` ({field: value}, values converted to the field's type);
    an unknown field or a value of the wrong kind raises ValueError naming the fields."""
    from dataclasses import fields

    from envs.pusht.expert import ExpertParams

    types = {f.name: type(f.default) for f in fields(ExpertParams)}
    converted = {}
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ValueError(f"unknown expert parameter {name!r}; the parameters are {', '.join(types)}")
        try:
            converted[name] = types[name](value)
        except (TypeError, ValueError):
            raise ValueError(f"expert parameter {name}={value!r}: expected a {types[name].__name__}") from None
    return ExpertParams(**converted)


#: Re-planning tolerances (px, rad) of an expert whose targets are not the ones executed (noise on
#: them, or a policy in charge under DAgger): wider than the noise moves the state in a step, so
#: the labels keep following one plan instead of being re-drawn at every step.
OFF_PLAN_REPLAN_POSITION = 4.0
OFF_PLAN_REPLAN_ANGLE = 0.067


def off_plan_params(params):
    """``params`` with the re-planning tolerances of an expert that does not execute its own targets."""
    return replace(params, replan_position_tolerance=OFF_PLAN_REPLAN_POSITION,
                   replan_angle_tolerance=OFF_PLAN_REPLAN_ANGLE)


def expert_for(variation: ExpertVariation, params=None):
    """The ScriptedExpert that collects with ``variation`` and ``params`` (default ``ExpertParams()``);
    under executed-action noise with :func:`off_plan_params`."""
    from envs.pusht.expert import ExpertParams, ScriptedExpert

    params = params or ExpertParams()
    return ScriptedExpert(params=off_plan_params(params) if variation.action_noise > 0 else params)


def labelling_expert(collector: dict):
    """The ScriptedExpert that labels a policy's states for a dataset made by ``collector`` (its
    ``collector`` metadata): the parameters the demonstrations were collected with, re-planning
    with :func:`off_plan_params`, as the policy never executes exactly the expert's targets."""
    from envs.pusht.expert import ScriptedExpert

    stored = dict(collector.get("expert_params") or {})
    return ScriptedExpert(params=off_plan_params(expert_params_from(stored)))


def _init_worker(images: bool, parent_pid: int | None = None,
                 variation: ExpertVariation = ExpertVariation(), params=None) -> None:
    """Set up a worker's environment and expert; a pool worker (``parent_pid``) ends with its parent."""
    from dpolicy.processes import exit_with_parent
    from envs.pusht.env import PushTEnv

    if parent_pid is not None:
        exit_with_parent(parent_pid)
        # Ctrl-C reaches the whole process group: the parent handles it, the workers end with it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_state["env"] = PushTEnv(obs_type="state")
    _worker_state["expert"] = expert_for(variation, params)
    _worker_state["images"] = images
    _worker_state["variation"] = variation


def _worker_episode(reset_seed: int, base_seed: int) -> ExpertEpisode:
    return run_expert_episode(_worker_state["env"], _worker_state["expert"], reset_seed,
                              expert_seed_for(base_seed, reset_seed), images=_worker_state["images"],
                              variation=_worker_state["variation"])


def map_expert_episodes(seeds: Iterator[int], base_seed: int, images: bool, workers: int,
                        variation: ExpertVariation = ExpertVariation(), params=None) -> Iterator[ExpertEpisode]:
    """Expert episodes for ``seeds``, in seed order, computed by ``workers`` processes (lazily);
    ``params``: the expert's ``ExpertParams`` (default ones if None)."""
    if workers <= 1:
        _init_worker(images, variation=variation, params=params)
        for seed in seeds:
            yield _worker_episode(seed, base_seed)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(images, os.getpid(), variation, params)) as pool:
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
                   progress: bool = True, variation: ExpertVariation = ExpertVariation(),
                   expert_params: dict | None = None) -> DemoDataset:
    """Collect successful scripted-expert episodes into ``out`` until it holds ``episodes`` episodes.

    ``expert_params``: overrides of the expert's ``ExpertParams`` fields ({name: value}).
    Resumes an existing dataset made with the same settings (see :class:`DemoDataset`).
    """
    from tqdm import tqdm

    params = expert_params_from(expert_params)
    collector = {"source": "scripted expert (envs.pusht.expert.ScriptedExpert)", "seed": int(seed),
                 "images": bool(images), "max_episode_steps": MAX_EPISODE_STEPS,
                 "expert_params": asdict(expert_for(variation, params).base_params)}
    if variation != ExpertVariation():  # datasets of the plain expert keep their settings unchanged
        collector["variation"] = asdict(variation)
    dataset = DemoDataset(out, collector)
    if dataset.n_episodes >= episodes:
        return dataset
    seeds = collection_seeds(seed, skip=dataset.used_seeds)
    bar = tqdm(total=episodes, initial=dataset.n_episodes, desc="expert episodes", unit="episode",
               disable=not progress)
    tried = succeeded = 0
    try:
        for result in map_expert_episodes(seeds, seed, images, workers, variation, params):
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
