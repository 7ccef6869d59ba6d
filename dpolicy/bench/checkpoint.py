"""`dpolicy bench checkpoint`: size and load time of a training checkpoint, safetensors vs pickle.

Builds a policy of an experiment config (random weights: size and time do not depend on them),
takes one optimizer step so the AdamW state exists, and writes the same training checkpoint
twice: in the current format (safetensors + JSON) and as the earlier pickle format did
(``torch.save`` of one dict). Then times ``load_policy`` (what eval, serve and export do) against
the pickle route (``torch.load`` + build + ``load_state_dict``), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from dpolicy.commands import at_least


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="pusht_lowdim", help="experiment config (default pusht_lowdim)")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="loads timed per format (default 5)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. policy.down_dims=[256,512,1024]")


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(args: argparse.Namespace) -> int:
    import random

    import torch
    from omegaconf import OmegaConf

    from dpolicy.bench.realtime import untrained_checkpoint
    from dpolicy.training.checkpoint import (
        build_policy,
        load_legacy_payload,
        load_policy,
        read_checkpoint,
        save_checkpoint,
    )

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        base = read_checkpoint(untrained_checkpoint(scratch / "base.safetensors", args.config, tuple(args.overrides)))
        policy, cfg = load_policy(base.path, device="cpu")
        ema = load_policy(base.path, device="cpu")[0]
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        sum(p.sum() for p in policy.parameters()).backward()
        optimizer.step()
        meta = {"config": base.meta["config"], "shape_meta": base.meta["shape_meta"], "step": 1, "epoch": 0,
                "batch_in_epoch": 1, "elapsed_s": 0.0, "top_k": []}
        new = save_checkpoint(scratch / "latest.safetensors", meta, policy.state_dict(), ema_model=ema.state_dict(),
                              optimizer=optimizer.state_dict(), rng=True)
        old = scratch / "latest.pt"
        torch.save({"format": "dpolicy-checkpoint-v1", **meta, "model": policy.state_dict(),
                    "ema_model": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate()}}, old)

        def load_pickle():
            payload = load_legacy_payload(old)
            rebuilt = build_policy(OmegaConf.create(payload["config"]), payload["shape_meta"],
                                   _identity_normalizer(payload["shape_meta"]))
            rebuilt.load_state_dict(payload["ema_model"])

        load_pickle()  # warm both paths (imports, allocator) before timing
        load_policy(new, device="cpu")
        t_new = _best_of(lambda: load_policy(new, device="cpu"), args.repeats)
        t_old = _best_of(load_pickle, args.repeats)
        n_params = sum(p.numel() for p in policy.parameters())
        print(f"config {args.config} {' '.join(args.overrides)}: {n_params / 1e6:.2f}M parameters, training "
              f"checkpoint with EMA weights, AdamW state and RNG streams")
        print(f"{'format':<28} {'size MiB':>9} {'load s':>8}")
        print(f"{'pickle (torch.save, .pt)':<28} {old.stat().st_size / 2**20:>9.2f} {t_old:>8.3f}")
        print(f"{'safetensors + JSON':<28} {new.stat().st_size / 2**20:>9.2f} {t_new:>8.3f}")
    return 0


def _identity_normalizer(shape_meta: dict):
    from dpolicy.data.normalizer import Normalizer

    spec = dict(shape_meta["obs"])
    spec["action"] = {"shape": shape_meta["action"]["shape"]}
    return Normalizer.from_spec(spec)
