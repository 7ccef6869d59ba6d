"""`dpolicy collect`: record Push-T demonstrations into a zarr dataset.

The arguments and the command; the work is done by :mod:`dpolicy.collect` (scripted expert in worker
processes, resumable), :mod:`envs.pusht.teleop` (mouse teleoperation in a pygame window) and
:mod:`dpolicy.dagger` (a policy's rollouts relabelled by the expert, resumable).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from dpolicy.collect import ExpertVariation, collect_expert, collect_teleop, expert_params_from
from dpolicy.commands import at_least, positive_float


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--expert", choices=("scripted",), help="collect with the scripted expert")
    source.add_argument("--teleop", action="store_true",
                        help="collect by mouse teleoperation (pygame window)")
    source.add_argument("--dagger", type=Path, metavar="CHECKPOINT", default=None,
                        help="DAgger: roll this checkpoint's policy out and add its episodes, every action "
                             "relabelled by the scripted expert, to the existing dataset --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="zarr dataset to create or resume "
                             "(default: pusht_expert.zarr / pusht_teleop.zarr in the current directory)")
    parser.add_argument("--episodes", type=at_least(1), default=200,
                        help="expert: collect until the dataset holds this many episodes (default 200); "
                             "DAgger: relabelled episodes the round holds when done (a rerun resumes it)")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="DAgger: probability of executing the expert's action instead of the policy's "
                             "at each step (default 0: the policy drives)")
    parser.add_argument("--envs", type=at_least(1), default=8,
                        help="DAgger: environments rolled out together, one batched policy call per plan "
                             "(default 8)")
    parser.add_argument("--max-steps", type=at_least(1), default=None,
                        help="DAgger: steps per rollout before it ends without success (default: the "
                             "task's 300)")
    parser.add_argument("--workers", type=at_least(1), default=1, help="expert: worker processes (default 1)")
    parser.add_argument("--seed", type=at_least(0), default=0,
                        help="first environment reset seed (default 0); the evaluation seeds 100000..100499 "
                             "are always skipped. Also seeds the expert.")
    parser.add_argument("--near-wall-share", type=float, default=0.0, metavar="P",
                        help="expert: share of episodes that start with the T by a wall or in a corner instead "
                             "of from the benchmark's reset, so the data shows how to get it out (default 0)")
    parser.add_argument("--action-noise", type=float, default=0.0, metavar="PX",
                        help="expert: std in px of correlated noise added to the executed targets while the "
                             "recorded actions stay the expert's, so the data shows it correcting drift "
                             "(default 0)")
    parser.add_argument("--noise-correlation", type=float, default=0.8,
                        help="expert: step-to-step correlation of that noise, in [0, 1) (default 0.8)")
    parser.add_argument("--expert-param", action="append", default=[], metavar="NAME=VALUE",
                        help="expert: set one of its parameters (envs.pusht.expert.ExpertParams, e.g. "
                             "max_target_step=12 or temperature=0); repeat for several")
    parser.add_argument("--images", action="store_true", help="also record data/img (96 x 96 frames)")
    parser.add_argument("--scale", type=positive_float, default=1.0, help="teleop: window scale (1.0 = 512 px)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dpolicy.data.replay_buffer import DatasetError

    try:
        return _run(args)
    except KeyboardInterrupt:
        where = f"{args.out} keeps" if args.out else "the dataset keeps"
        print(f"interrupted: {where} the episodes committed so far; run the same command again to continue",
              file=sys.stderr)
        return 130
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.dagger is not None:
        return _run_dagger(args)
    if args.teleop:
        from envs.pusht.teleop import TeleopUnavailable

        out = args.out or Path("pusht_teleop.zarr")
        try:
            dataset = collect_teleop(out, seed=args.seed, images=args.images, scale=args.scale)
        except TeleopUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{out}: {dataset.n_episodes} episodes, {dataset.buffer.n_steps} steps")
        dataset.close()
        return 0
    if args.episodes < 1 or args.workers < 1:
        print("error: --episodes and --workers must be >= 1", file=sys.stderr)
        return 2
    out = args.out or Path("pusht_expert.zarr")
    try:
        variation = ExpertVariation(near_wall_share=args.near_wall_share, action_noise=args.action_noise,
                                    noise_correlation=args.noise_correlation)
        overrides = dict(_name_value(item) for item in args.expert_param)
        expert_params_from(overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    dataset = collect_expert(out, args.episodes, workers=args.workers, seed=args.seed, images=args.images,
                             progress=not args.quiet, variation=variation, expert_params=overrides)
    lengths = dataset.buffer.episode_lengths
    print(f"{out}: {dataset.n_episodes} episodes, {dataset.buffer.n_steps} steps "
          f"(mean length {lengths.mean() if len(lengths) else math.nan:.1f}), "
          f"{len(dataset.failed_seeds)} failed seeds skipped; {time.perf_counter() - start:.1f} s")
    dataset.close()
    return 0


def _name_value(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--expert-param takes NAME=VALUE, got {item!r}")
    return name.strip(), value.strip()


def _run_dagger(args: argparse.Namespace) -> int:
    from dpolicy.dagger import dagger_round
    from dpolicy.training.checkpoint import CheckpointError
    from envs.pusht.env import MAX_EPISODE_STEPS

    if args.out is None:
        print("error: --dagger needs --out, the dataset to add the relabelled episodes to", file=sys.stderr)
        return 2
    if not 0.0 <= args.beta <= 1.0:
        print(f"error: --beta must be in [0, 1], got {args.beta}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        summary = dagger_round(args.out, args.dagger, args.episodes, beta=args.beta, n_envs=args.envs,
                               seed=args.seed, max_steps=args.max_steps or MAX_EPISODE_STEPS,
                               progress=not args.quiet)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: DAgger round {summary.round}: {summary.added} episodes added, {summary.round_episodes} in "
          f"the round ({summary.policy_successes} finished by the policy), {summary.dataset_episodes} in the "
          f"dataset; {time.perf_counter() - start:.1f} s")
    if summary.labelled_steps:
        print(f"labelling: {summary.labelled_steps} steps, {summary.label_plans} expert plans "
              f"({summary.label_plans / summary.labelled_steps:.0%} of the steps), "
              f"{1000 * summary.label_seconds / summary.labelled_steps:.1f} ms per step")
    return 0
