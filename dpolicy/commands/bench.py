"""`dpolicy bench TARGET [options]`: benchmarks that print figures (speed targets live here, not in tests).

Each target is a module ``dpolicy.bench.<target>`` with ``configure(parser)`` and ``run(args)``;
only the chosen one is imported. ``dpolicy bench TARGET --help`` lists its options.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "env": "simulator steps/s for state, keypoint and image observations",
    "data": "window-batch throughput and peak memory of the datasets",
    "train": "training samples/s of the diffusion UNet (paper-scale and CPU configs)",
    "infer": "chunk latency of the diffusion policy (batch 1 and 50, DDPM and DDIM)",
    "eval": "wall-clock of an evaluation protocol (sync vs async vector envs, threads)",
    "realtime": "real-time Push-T at 10 Hz: deadline misses, chunk latency, score vs synchronous",
    "serve": "policy server over loopback: round-trip latency and requests/s",
    "expert": "scripted expert: success rate, episode length, time per episode, route diversity",
    "checkpoint": "checkpoint size and load time, safetensors + JSON vs the earlier pickle format",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "targets:\n" + "\n".join(f"  {name:8s} {text}" for name, text in TARGETS.items())
    parser.add_argument("target", choices=sorted(TARGETS), metavar="TARGET", help="what to measure (see below)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the target (TARGET --help)")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"dpolicy.bench.{args.target}")
    parser = argparse.ArgumentParser(prog=f"dpolicy bench {args.target}", description=TARGETS[args.target])
    module.configure(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)
