"""`dpolicy export CHECKPOINT --out DIR`: the policy's networks as TorchScript for non-Python stacks."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dpolicy.commands import at_least
from dpolicy.export import (
    METADATA_NAME,
    PARITY_TOLERANCE,
    chunk_latency_ms,
    example_observations,
    parity,
    write_export,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint file written by `dpolicy train`")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    parser.add_argument("--scheduler", default=None,
                        help="sampler baked into the export: ddim or ddpm (default: the checkpoint's)")
    parser.add_argument("--steps", type=at_least(1), default=None, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--no-ema", action="store_true",
                        help="export the plain weights instead of the EMA weights")
    parser.add_argument("--device", default="cpu",
                        help="device to export on and for (image encoders fix it in the trace; default cpu)")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--latency-repeats", type=at_least(0), default=20,
                        help="chunks timed for the latency figures (0: skip timing)")


def run(args: argparse.Namespace) -> int:
    from dpolicy.training.checkpoint import load_policy

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    policy, _ = load_policy(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    if args.scheduler is not None or args.steps is not None:
        policy.set_inference(args.scheduler, args.steps)
    start = time.perf_counter()
    metadata = {"checkpoint": str(args.checkpoint), "use_ema": not args.no_ema, "device": str(policy.device)}
    archive, info = write_export(policy, args.out, metadata)
    module = torch.jit.load(str(archive))  # check what was written, not what is in memory
    diff = parity(policy, module)
    print(f"wrote {archive} and {args.out / METADATA_NAME} in {time.perf_counter() - start:.1f} s "
          f"({info['scheduler']}, {info['num_inference_steps']} steps, obs keys {info['obs_keys']})")
    status = "ok" if diff < PARITY_TOLERANCE else "FAILED"
    print(f"parity: max abs difference to the eager policy {diff:.2e} "
          f"(tolerance {PARITY_TOLERANCE:g}) {status}")
    if args.latency_repeats > 0:
        obs = example_observations(policy, batch=1)
        obs_dict = dict(zip(policy.obs_keys(), obs, strict=True))
        eager = chunk_latency_ms(lambda: policy.predict_action(obs_dict), args.latency_repeats)
        with torch.no_grad():
            exported = chunk_latency_ms(lambda: module(obs), args.latency_repeats)
        print(f"chunk latency, batch 1, {torch.get_num_threads()} torch threads: eager p50 {eager[0]:.1f} ms "
              f"p99 {eager[1]:.1f} ms; TorchScript p50 {exported[0]:.1f} ms p99 {exported[1]:.1f} ms")
    info["parity_max_abs_diff"] = diff
    (args.out / METADATA_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return 0 if diff < PARITY_TOLERANCE else 1
