"""`dpolicy collect`: record Push-T demonstrations into a zarr dataset.

The arguments and the command; the work is done by :mod:`dpolicy.collect` (scripted expert in worker
processes, resumable) and :mod:`envs.pusht.teleop` (mouse teleoperation in a pygame window).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from dpolicy.collect import collect_expert, collect_teleop
from dpolicy.commands import at_least, positive_float


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--expert", choices=("scripted",), help="collect with the scripted expert")
    source.add_argument("--teleop", action="store_true",
                        help="collect by mouse teleoperation (pygame window)")
    parser.add_argument("--out", type=Path, default=None,
                        help="zarr dataset to create or resume "
                             "(default: pusht_expert.zarr / pusht_teleop.zarr in the current directory)")
    parser.add_argument("--episodes", type=at_least(1), default=200,
                        help="expert: collect until the dataset holds this many episodes (default 200)")
    parser.add_argument("--workers", type=at_least(1), default=1, help="expert: worker processes (default 1)")
    parser.add_argument("--seed", type=at_least(0), default=0,
                        help="first environment reset seed (default 0); the evaluation seeds 100000..100499 "
                             "are always skipped. Also seeds the expert.")
    parser.add_argument("--images", action="store_true", help="also record data/img (96 x 96 frames)")
    parser.add_argument("--scale", type=positive_float, default=1.0, help="teleop: window scale (1.0 = 512 px)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dpolicy.data.replay_buffer import DatasetError

    try:
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
        start = time.perf_counter()
        dataset = collect_expert(out, args.episodes, workers=args.workers, seed=args.seed, images=args.images,
                                 progress=not args.quiet)
        lengths = dataset.buffer.episode_lengths
        print(f"{out}: {dataset.n_episodes} episodes, {dataset.buffer.n_steps} steps "
              f"(mean length {lengths.mean() if len(lengths) else math.nan:.1f}), "
              f"{len(dataset.failed_seeds)} failed seeds skipped; {time.perf_counter() - start:.1f} s")
        dataset.close()
        return 0
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
