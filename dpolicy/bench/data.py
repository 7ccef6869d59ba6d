"""`dpolicy bench data`: window-batch throughput and memory of the Push-T datasets.

Targets, on one core (torch.set_num_threads(1)): low-dim batches of 256 windows at
>= 20,000 windows/s, image batches of 64 windows (2 frames each) at >= 2,000 windows/s, and
a peak resident memory <= 1.5 GB with the image dataset of the human set loaded.
Without the human dataset (or with --synthetic) a random dataset of the same size is used.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from dpolicy.paths import human_pusht_path
from dpolicy.processes import peak_rss_mb

#: Size of the synthetic stand-in: the human set's episode count and total steps.
SYNTHETIC_EPISODES = 206
SYNTHETIC_STEPS = 25_650


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", type=Path, default=None,
                        help="zarr dataset with keypoint, state, action and img (default: the human set)")
    parser.add_argument("--synthetic", action="store_true",
                        help="benchmark a random dataset of the human set's size instead")
    parser.add_argument("--lowdim-batch", type=int, default=256,
                        help="windows per low-dim batch (default 256)")
    parser.add_argument("--image-batch", type=int, default=64, help="windows per image batch (default 64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent per throughput figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")


def run(args: argparse.Namespace) -> int:
    import torch

    from dpolicy.data.datasets import make_pusht_image_dataset, make_pusht_lowdim_dataset
    from dpolicy.data.synthetic import write_synthetic_pusht

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dpolicy-bench-data-") as tmp:
        path = args.path if args.path is not None and not args.synthetic else None
        if path is None and not args.synthetic:
            path = human_pusht_path()
        if path is None:
            path = Path(tmp) / "synthetic.zarr"
            print(f"writing a synthetic dataset ({SYNTHETIC_EPISODES} episodes, {SYNTHETIC_STEPS} steps) ...")
            write_synthetic_pusht(path, synthetic_lengths()).close()
        print(f"dataset: {path}")
        print(f"torch threads: {torch.get_num_threads()}; peak RSS after imports: {peak_rss_mb():.0f} MB")

        start = time.perf_counter()
        lowdim = make_pusht_lowdim_dataset(path)
        print(f"low-dim dataset: {len(lowdim)} windows, built in {time.perf_counter() - start:.2f} s")
        rate = _windows_per_second(lowdim, args.lowdim_batch, args.seconds)
        print(f"low-dim batches of {args.lowdim_batch}: {rate:,.0f} windows/s (target >= 20,000)")
        del lowdim

        start = time.perf_counter()
        image = make_pusht_image_dataset(path)
        print(f"image dataset: {len(image)} windows, built in {time.perf_counter() - start:.2f} s, "
              f"{image.nbytes / 1e9:.2f} GB of arrays in memory (images uint8)")
        rate = _windows_per_second(image, args.image_batch, args.seconds)
        print(f"image batches of {args.image_batch} (2 frames each): {rate:,.0f} windows/s (target >= 2,000)")
        print(f"peak RSS: {peak_rss_mb():.0f} MB (target <= 1,536 MB)")
    return 0


def synthetic_lengths(n_episodes: int = SYNTHETIC_EPISODES, n_steps: int = SYNTHETIC_STEPS,
                      min_length: int = 49, seed: int = 0) -> np.ndarray:
    """Random episode lengths of at least ``min_length`` (the human set's shortest) summing to ``n_steps``."""
    spare = n_steps - n_episodes * min_length
    if spare < 0:
        raise ValueError(f"cannot make {n_episodes} episodes of >= {min_length} steps in {n_steps} steps")
    rng = np.random.default_rng(seed)
    return min_length + rng.multinomial(spare, rng.dirichlet(np.full(n_episodes, 4.0)))


def _windows_per_second(dataset, batch_size: int, seconds: float) -> float:
    rng = np.random.default_rng(0)
    dataset.get_batch(rng.integers(0, len(dataset), batch_size))  # warm-up
    windows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dataset.get_batch(rng.integers(0, len(dataset), batch_size))
        windows += batch_size
    return windows / (time.perf_counter() - start)
