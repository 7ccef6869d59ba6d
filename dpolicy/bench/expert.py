"""`dpolicy bench expert`: success, speed, smoothness and diversity of the scripted Push-T expert.

Figures:

- success rate over the evaluation resets (default seeds 100000..100499, 300 steps; target >= 99%),
  mean episode length, CPU time per episode on one core (target <= 2 s);
- smoothness: 95th percentile of the per-step jump of the commanded target ``|a[t+1] - a[t]|`` (px);
- diversity: from ``--diversity-seeds`` starts, ``--runs`` episodes each with different expert seeds.
  Two runs take *different routes* when their agent trajectories, compared at equal fractions of the
  episode (resampled to 50 points), are on average more than ``--route-distance`` px apart (default 25,
  more than the agent's radius). Reported: the fraction of starts with at least two different routes
  (target >= 75%), and the same with "different first pushed edge of the T" as the criterion.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from dpolicy.collect import EVAL_SEEDS, map_expert_episodes

#: Points at which agent trajectories are compared (equal fractions of the episode).
ROUTE_SAMPLES = 50


def _seed_range(text: str) -> range:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected START:STOP (e.g. 100000:100500), got {text!r}") from err
    if hi <= lo:
        raise argparse.ArgumentTypeError(f"empty seed range {text!r}")
    return range(lo, hi)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=_seed_range, default=EVAL_SEEDS,
                        help="environment reset seeds START:STOP for success and speed "
                             "(default 100000:100500)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--expert-seed", type=int, default=0,
                        help="seed of the expert's own choices (default 0)")
    parser.add_argument("--diversity-seeds", type=_seed_range, default=range(0, 25),
                        help="starts for the diversity figure, START:STOP (default 0:25)")
    parser.add_argument("--runs", type=int, default=4, help="expert seeds per diversity start (default 4)")
    parser.add_argument("--route-distance", type=float, default=25.0,
                        help="mean trajectory distance (px) above which two runs are different routes")
    parser.add_argument("--skip-success", action="store_true", help="only measure diversity")
    parser.add_argument("--skip-diversity", action="store_true", help="only measure success and speed")


def resample_path(points: np.ndarray, n: int = ROUTE_SAMPLES) -> np.ndarray:
    """``points`` (L, 2) linearly interpolated at ``n`` equally spaced fractions of the episode."""
    points = np.asarray(points, dtype=np.float64)
    u = np.linspace(0.0, 1.0, len(points))
    v = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(v, u, points[:, 0]), np.interp(v, u, points[:, 1])], axis=1)


def route_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance (px) between two agent trajectories compared at equal fractions of their episodes."""
    return float(np.linalg.norm(resample_path(a) - resample_path(b), axis=1).mean())


def target_jumps(actions: np.ndarray) -> np.ndarray:
    """Per-step jumps ``|a[t+1] - a[t]|`` (px) of a sequence of commanded targets (L, 2)."""
    return np.linalg.norm(np.diff(np.asarray(actions, dtype=np.float64), axis=0), axis=1)


def _run_many(seeds, expert_seed: int, workers: int, label: str) -> list:
    from tqdm import tqdm

    results = []
    for result in tqdm(map_expert_episodes(iter(seeds), expert_seed, False, workers), total=len(seeds),
                       desc=label, unit="episode"):
        results.append(result)
    return results


def run(args: argparse.Namespace) -> int:
    jumps = []
    if not args.skip_success:
        start = time.perf_counter()
        results = _run_many(args.seeds, args.expert_seed, args.workers, "success")
        wall = time.perf_counter() - start
        success = np.array([r.success for r in results])
        steps = np.array([r.steps for r in results])
        seconds = np.array([r.seconds for r in results])
        jumps += [target_jumps(r.episode["action"]) for r in results]
        print(f"seeds {args.seeds.start}..{args.seeds.stop - 1} ({len(results)} resets, 300 steps, "
              f"expert seed {args.expert_seed}, {args.workers} workers)")
        print(f"  success: {success.mean():.1%} ({success.sum()}/{len(success)}; target >= 99%)")
        if (~success).any():
            print(f"  failed seeds: {[r.reset_seed for r in results if not r.success]}")
        print(f"  episode length (successes): mean {steps[success].mean():.1f}, "
              f"median {np.median(steps[success]):.0f}, max {steps[success].max()} steps")
        print(f"  CPU time per episode (one core): mean {seconds.mean():.2f} s, "
              f"p95 {np.percentile(seconds, 95):.2f} s, max {seconds.max():.2f} s (target <= 2 s); "
              f"wall {wall:.0f} s")
    if not args.skip_diversity:
        runs = [_run_many(args.diversity_seeds, args.expert_seed + k, args.workers, f"diversity run {k + 1}")
                for k in range(args.runs)]
        by_start = list(zip(*runs, strict=True))
        distinct_paths = distinct_edges = 0
        distances = []
        for start_runs in by_start:
            pairs = list(itertools.combinations(start_runs, 2))
            d = [route_distance(a.episode["state"][:, :2], b.episode["state"][:, :2]) for a, b in pairs]
            distances += d
            distinct_paths += max(d) > args.route_distance
            first_edges = {r.pushed_edges[0] if r.pushed_edges else -1 for r in start_runs}
            distinct_edges += len(first_edges) > 1
        for start_runs in by_start:
            jumps += [target_jumps(r.episode["action"]) for r in start_runs]
        all_success = np.mean([r.success for r in itertools.chain(*runs)])
        n = len(by_start)
        seeds = args.diversity_seeds
        print(f"diversity: {n} starts (seeds {seeds.start}..{seeds.stop - 1}) x {args.runs} expert seeds, "
              f"success {all_success:.1%}")
        print(f"  starts with >= 2 routes (mean trajectory distance > {args.route_distance:g} px): "
              f"{distinct_paths / n:.0%} ({distinct_paths}/{n}; target >= 75%)")
        print(f"  starts with >= 2 different first pushed edges: {distinct_edges / n:.0%} "
              f"({distinct_edges}/{n})")
        print(f"  pairwise mean trajectory distance: median {np.median(distances):.1f} px")
    if jumps:
        all_jumps = np.concatenate(jumps)
        print(f"commanded target jump per step: median {np.median(all_jumps):.1f} px, "
              f"p95 {np.percentile(all_jumps, 95):.1f} px, max {all_jumps.max():.1f} px "
              f"(over {len(all_jumps)} steps)")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m dpolicy.bench.expert",
                                     description=__doc__.splitlines()[0])
    configure(parser)
    sys.exit(run(parser.parse_args()))
