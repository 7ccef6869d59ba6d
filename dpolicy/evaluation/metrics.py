"""Per-episode records and the summary metrics of an evaluation, for any task.

score: mean over episodes of the episode's best per-step reward (the task defines the reward; a
benchmark's own score is usually its reward); success: ``info["is_success"]`` at any step, reported with a 95%
Wilson score interval; latency: wall-clock time of each batched policy call (one per planned
chunk). A task may name extra info keys to track (``episode_info_keys`` in its env's metadata):
each gives a ``max_<key>`` and ``final_<key>`` column and their means in the summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

#: Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)  # exact ends, not rounding residue
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


@dataclass
class EpisodeResult:
    """What one rollout measured."""

    episode: int  # index in the evaluated seed list
    seed: int
    length: int  # control steps taken
    score: float  # best per-step reward of the episode
    success: bool  # info["is_success"] at some step
    first_success_step: int  # 1-based step of the first success, -1 if none
    n_plans: int  # chunks planned during the episode
    extras: dict[str, float] = field(default_factory=dict)  # max_<key> / final_<key> of tracked info keys

    def as_row(self) -> dict:
        """CSV row: the fixed columns, then the task's extra columns."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        return {**row, **self.extras}

    @staticmethod
    def columns(extra_names: Sequence[str] = ()) -> list[str]:
        return [f.name for f in fields(EpisodeResult) if f.name != "extras"] + list(extra_names)


def _percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_s) * 1000.0, q)) if len(latencies_s) else float("nan")


def summarize(episodes: Sequence[EpisodeResult], latencies_s: Sequence[float] = (),
              batch_sizes: Sequence[int] = (), wall_s: float = float("nan")) -> dict:
    """Summary metrics of finished episodes (NaN where nothing was measured)."""
    n = len(episodes)
    successes = sum(e.success for e in episodes)
    lo, hi = wilson_interval(successes, n)
    total_steps = sum(e.length for e in episodes)
    nan = float("nan")
    return {
        "score": float(np.mean([e.score for e in episodes])) if n else nan,
        "success_rate": successes / n if n else nan,
        "success_ci95": [lo, hi],
        "n_successes": int(successes),
        **{f"mean_{name}": float(np.mean([e.extras[name] for e in episodes])) if n else nan
           for name in (episodes[0].extras if n else {})},
        "mean_length": total_steps / n if n else nan,
        "latency_p50_ms": _percentile_ms(latencies_s, 50),
        "latency_p95_ms": _percentile_ms(latencies_s, 95),
        "n_policy_calls": len(latencies_s),
        "mean_policy_batch": float(np.mean(batch_sizes)) if len(batch_sizes) else nan,
        "n_episodes": n,
        "total_steps": int(total_steps),
        "wall_s": float(wall_s),
        "steps_per_s": total_steps / wall_s if wall_s and wall_s > 0 else nan,
    }
