"""`dpolicy export CHECKPOINT --out DIR [--format torchscript|onnx]`: the policy for non-Python stacks."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dpolicy.commands import at_least
from dpolicy.errors import UsageError
from dpolicy.export import (
    DENOISER_NAME,
    ENCODER_NAME,
    FORMATS,
    METADATA_NAME,
    ONNX_PARITY_TOLERANCE,
    PARITY_TOLERANCE,
    chunk_latency_ms,
    example_observations,
    plan_differences,
    require_onnx,
    write_export,
    write_onnx_export,
    write_onnx_metadata,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint file written by `dpolicy train`")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    parser.add_argument("--format", choices=FORMATS, default="torchscript",
                        help="torchscript (one archive for libtorch) or onnx (encoder.onnx and denoiser.onnx "
                             "for onnxruntime); default torchscript")
    parser.add_argument("--scheduler", default=None,
                        help="sampler baked into the export: ddim or ddpm (default: the checkpoint's)")
    parser.add_argument("--steps", type=at_least(1), default=None, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--no-ema", action="store_true",
                        help="export the plain weights instead of the EMA weights")
    parser.add_argument("--device", default="cpu",
                        help="device to export on and for (TorchScript image encoders fix it in the trace; "
                             "ONNX exports on the CPU only; default cpu)")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch and onnxruntime CPU threads (default: torch's choice)")
    parser.add_argument("--latency-repeats", type=at_least(0), default=20,
                        help="chunks timed for the latency figures (0: skip timing)")


def run(args: argparse.Namespace) -> int:
    from dpolicy.training.checkpoint import load_policy

    onnx = args.format == "onnx"
    if onnx:
        if str(args.device).split(":")[0] != "cpu":
            raise UsageError(f"--format onnx exports on the CPU (the graphs do not depend on the device; choose "
                             f"the onnxruntime provider when loading them), got --device {args.device}")
        require_onnx()  # before the checkpoint is loaded: a missing package is the cheaper error
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    policy, _ = load_policy(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    if args.scheduler is not None or args.steps is not None:
        policy.set_inference(args.scheduler, args.steps)
    start = time.perf_counter()
    metadata = {"checkpoint": str(args.checkpoint), "use_ema": not args.no_ema, "device": str(policy.device)}
    threads = torch.get_num_threads()
    if onnx:
        from dpolicy.onnx_runtime import OnnxPolicy

        info = write_onnx_export(policy, args.out, metadata)
        written = [args.out / ENCODER_NAME, args.out / DENOISER_NAME]
        exported = OnnxPolicy(args.out, intra_op_num_threads=threads)  # what was written, not what is in memory
        name = "ONNX"
    else:
        archive, info = write_export(policy, args.out, metadata)
        written = [archive]
        exported = torch.jit.load(str(archive))
        name = "TorchScript"
    diff, normalized = plan_differences(policy, exported)
    files = ", ".join(str(path) for path in [*written, args.out / METADATA_NAME])
    print(f"wrote {files} in {time.perf_counter() - start:.1f} s "
          f"({info['scheduler']}, {info['num_inference_steps']} steps, obs keys {info['obs_keys']})")
    if onnx:  # onnxruntime's kernels round differently: a tolerance relative to the action range
        ok = normalized < ONNX_PARITY_TOLERANCE
        limit = f"tolerance {ONNX_PARITY_TOLERANCE:g} normalized"
    else:
        ok = diff < PARITY_TOLERANCE
        limit = f"tolerance {PARITY_TOLERANCE:g} env units"
    print(f"parity: max abs difference of action_pred to the eager policy {diff:.2e} env units, "
          f"{normalized:.2e} normalized ({limit}) {'ok' if ok else 'FAILED'}")
    if args.latency_repeats > 0:
        obs = example_observations(policy, batch=1)
        obs_dict = dict(zip(policy.obs_keys(), obs, strict=True))
        eager = chunk_latency_ms(lambda: policy.predict_action(obs_dict), args.latency_repeats)
        if onnx:
            obs_np = [x.numpy() for x in obs]
            timed = chunk_latency_ms(lambda: exported.predict(obs_np), args.latency_repeats)
        else:
            with torch.no_grad():
                timed = chunk_latency_ms(lambda: exported(obs), args.latency_repeats)
        print(f"chunk latency, batch 1, {threads} threads: eager p50 {eager[0]:.1f} ms p99 {eager[1]:.1f} ms; "
              f"{name} p50 {timed[0]:.1f} ms p99 {timed[1]:.1f} ms")
    info["parity_max_abs_diff"] = diff
    info["parity_max_abs_diff_normalized"] = normalized
    if onnx:
        write_onnx_metadata(args.out, info)
    else:
        (args.out / METADATA_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return 0 if ok else 1
