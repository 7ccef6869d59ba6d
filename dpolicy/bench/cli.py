"""`dpolicy bench TARGET`: benchmarks that print figures (speed targets live here, not in tests).

Each target is a module ``dpolicy.bench.<target>`` with ``configure(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "env": "simulator steps/s for state and image observations",
    "data": "window-batch throughput and peak memory of the datasets",
    "train": "training samples/s of the diffusion UNet (paper-scale and CPU configs)",
    "infer": "chunk latency of the diffusion policy (batch 1 and 50, DDPM and DDIM)",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, help_text in TARGETS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_bench=f"dpolicy.bench.{name}")
        importlib.import_module(f"dpolicy.bench.{name}").configure(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench).run(args) or 0)
