"""`dpolicy bench train`: training throughput of the diffusion policy on synthetic Push-T batches.

One row per (UNet configuration, variant). A step is the full ``compute_loss`` (normalizer,
observation encoder, noising, UNet) + backward + AdamW. Variants:

- ``native-fp32``: torch's Conv1d kernels in float32 and foreach AdamW, the plain eager recipe of
  the original implementation, measured here as the baseline;
- ``matmul-fp32``: this package's matmul (im2col) convolutions, fused AdamW;
- ``matmul-bf16``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``: matrix products
  in bf16; normalization, activations, loss and weights in float32;
- ``compiled-bf16``: ``matmul-bf16`` with the networks through ``torch.compile`` (``training.compile``);
  its one-off compilation shows in the ``first step`` column;
- ``compiled-fp32``: the same in float32 (what ``bf16: auto`` trains with on a CPU without bf16 units).

``--experiments pusht_image ...`` adds rows for whole policies built from experiment configs
(image encoder included) at their own batch size, on synthetic uint8 frames.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

import torch

from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.diffusion import DiffusionPolicy
from dpolicy.training.trainer import compile_networks

#: UNet presets: the paper's low-dim model (~66M parameters) and a CPU-sized one (~4.6M).
PRESETS = {
    "paper": {"down_dims": [256, 512, 1024], "kernel_size": 5, "step_embed_dim": 256},
    "cpu": {"down_dims": [64, 128, 256], "kernel_size": 5, "step_embed_dim": 128},
}
#: Figures of the original implementation on this kind of machine (2 CPU cores), from the design notes.
ORIGINAL_SAMPLES_PER_S = {"paper": "60-70", "cpu": "700-1000"}

OBS_DIM, ACTION_DIM = 20, 2
VARIANTS = {
    "native-fp32": {"conv_impl": "native", "bf16": False, "fused": False},
    "matmul-fp32": {"conv_impl": "matmul", "bf16": False, "fused": True},
    "matmul-bf16": {"conv_impl": "matmul", "bf16": True, "fused": True},
    "compiled-bf16": {"conv_impl": "matmul", "bf16": True, "fused": True, "compile": True},
    "compiled-fp32": {"conv_impl": "matmul", "bf16": False, "fused": True, "compile": True},
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the training and inference benchmarks."""
    parser.add_argument("--configs", nargs="*", choices=sorted(PRESETS), default=["paper", "cpu"],
                        help="UNet presets to measure (default: paper cpu; none with --down-dims alone)")
    parser.add_argument("--down-dims", type=lambda s: [int(d) for d in s.split(",")], default=None,
                        help="also measure a custom UNet, e.g. 32,64,128")
    parser.add_argument("--kernel-size", type=int, default=5, help="kernel of the custom UNet")
    parser.add_argument("--step-embed-dim", type=int, default=128, help="step embedding of the custom UNet")
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--n-obs-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget per row after warm-up (at least one measured repetition)")


def model_configs(args: argparse.Namespace) -> dict[str, dict]:
    configs = {name: PRESETS[name] for name in args.configs}
    if args.down_dims:
        configs["custom " + ",".join(map(str, args.down_dims))] = {
            "down_dims": args.down_dims, "kernel_size": args.kernel_size,
            "step_embed_dim": args.step_embed_dim}
    if not configs:
        raise SystemExit("nothing to measure: name UNet presets with --configs or a custom UNet with --down-dims")
    return configs


def build_policy(model_config: dict, horizon: int = 16, n_obs_steps: int = 2, **kwargs) -> DiffusionPolicy:
    """A low-dim Push-T shaped policy (obs 20, action 2) with a synthetic normalizer."""
    spec = {"obs": {"obs": {"shape": [OBS_DIM], "type": "low_dim"}}, "action": {"shape": [ACTION_DIM]}}
    gen = torch.Generator().manual_seed(0)
    normalizer = Normalizer.fit({"obs": torch.rand(256, OBS_DIM, generator=gen) * 512,
                                 "action": torch.rand(256, ACTION_DIM, generator=gen) * 512})
    return DiffusionPolicy(spec, normalizer, horizon=horizon, n_obs_steps=n_obs_steps,
                           n_action_steps=min(8, horizon - n_obs_steps + 1), **model_config, **kwargs)


def experiment_policy(name: str, conv_impl: str, overrides: tuple[str, ...] = ()
                      ) -> tuple[torch.nn.Module, dict, int]:
    """``(policy, synthetic batch, batch size)`` for the experiment config ``name`` with hydra
    ``overrides`` (random weights)."""
    from dpolicy.bench.realtime import untrained_policy
    from dpolicy.config import compose_config

    # Only the diffusion UNet has a choice of convolution; other policies (IBC's energy MLP) have none.
    is_diffusion = compose_config(name, [*overrides, "task.dataset.path=null"]).policy.name == "diffusion"
    conv_override = (f"++policy.conv_impl={conv_impl}",) if is_diffusion else ()
    policy, cfg, shape_meta = untrained_policy(name, (*overrides, *conv_override))
    batch_size, horizon, n_obs_steps = int(cfg.training.batch_size), int(cfg.horizon), int(cfg.n_obs_steps)
    gen = torch.Generator().manual_seed(1)
    obs = {}
    for key, item in shape_meta["obs"].items():
        shape = (batch_size, n_obs_steps, *item["shape"])
        obs[key] = (torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8) if item["type"] == "rgb"
                    else torch.rand(shape, generator=gen) * 512)
    action = torch.rand(batch_size, horizon, *shape_meta["action"]["shape"], generator=gen) * 512
    return policy, {"obs": obs, "action": action}, batch_size


def synthetic_batch(batch_size: int, horizon: int, n_obs_steps: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"obs": {"obs": torch.rand(batch_size, n_obs_steps, OBS_DIM, generator=gen) * 512},
            "action": torch.rand(batch_size, horizon, ACTION_DIM, generator=gen) * 512}


def setup_threads(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    note = f"torch threads {torch.get_num_threads()}, {cores} CPUs, load average {load:.1f}"
    if load > cores:
        note += "  (WARNING: the machine is busy, figures are pessimistic)"
    return note


def time_training(policy: DiffusionPolicy, batch: dict, bf16: bool, fused: bool, seconds: float,
                  warmup: int = 2) -> tuple[float, float, int, float]:
    """Wall seconds per training step (median), CPU seconds per step (mean, all threads), steps measured,
    and the wall seconds of the first (warm-up) step.

    CPU time is the figure to compare on a busy machine: it does not count waiting for a core.
    """
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                                  fused=fused, foreach=None if fused else True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()
    first_step = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    times: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while not times or (time.perf_counter() - start < seconds and len(times) < 1000):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cpu_per_step = (time.process_time() - cpu_start) / len(times)
    times.sort()
    return times[len(times) // 2], cpu_per_step, len(times), first_step


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.set_defaults(configs=None)  # paper and cpu, unless only --experiments are named
    parser.add_argument("--batch-size", type=int, default=256, help="batch of the UNet rows")
    parser.add_argument("--experiments", nargs="*", default=[],
                        help="measure whole diffusion policies of these experiment configs (e.g. pusht_image "
                             "pusht_image_paper), image encoder included, at the config's batch size; "
                             "alone, it skips the UNet presets")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the --experiments rows, e.g. policy.resnet_width=32 "
                             "task.dataset.image_frames=null")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=[v for v in VARIANTS if not VARIANTS[v].get("compile")],
                        help="what to measure (default: the eager ones; compiled-bf16 first compiles for ~2 min)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    note = setup_threads(args)
    seconds = 8.0 if args.seconds is None else args.seconds
    if args.configs is None:
        args.configs = [] if args.experiments else ["paper", "cpu"]
    configs = model_configs(args) if args.configs or args.down_dims or not args.experiments else {}
    overrides = f" with {' '.join(args.override)}" if args.experiments and args.override else ""
    print(f"dpolicy bench train: UNet rows batch {args.batch_size}, horizon {args.horizon}, To {args.n_obs_steps}, "
          f"obs {OBS_DIM}; experiment rows at their config's batch{overrides}; {note}")
    batch = synthetic_batch(args.batch_size, args.horizon, args.n_obs_steps)
    rows = []
    jobs = [(name, variant) for name in [*configs, *args.experiments] for variant in args.variants]
    for name, variant in tqdm(jobs, desc="train bench", leave=False):
        options = VARIANTS[variant]
        torch.manual_seed(0)
        if name in configs:
            policy, job_batch, batch_size = build_policy(configs[name], args.horizon, args.n_obs_steps,
                                                         conv_impl=options["conv_impl"]), batch, args.batch_size
        else:
            policy, job_batch, batch_size = experiment_policy(name, options["conv_impl"], tuple(args.override))
        n_params = sum(p.numel() for p in policy.parameters())
        if options.get("compile"):
            compile_networks(policy)
        per_step, cpu_per_step, n_steps, first_step = time_training(policy, job_batch, options["bf16"],
                                                                    options["fused"], seconds)
        rows.append((name, variant, n_params, batch_size, per_step, cpu_per_step, n_steps, first_step))
        del policy

    baseline = {row[0]: row[4] for row in rows if row[1] == "native-fp32"}
    print(f"{'config':<26}{'variant':<14}{'params':>9}{'batch':>6}{'ms/step':>10}{'steps/s':>8}{'samples/s':>11}"
          f"{'speedup':>8}{'samples/cpu-s':>15}{'steps':>7}{'first step':>12}  original")
    for name, variant, n_params, batch_size, per_step, cpu_per_step, n_steps, first_step in rows:
        ratio = f"{baseline[name] / per_step:.2f}x" if name in baseline else "-"
        original = ORIGINAL_SAMPLES_PER_S.get(name, "-")
        print(f"{name:<26}{variant:<14}{n_params / 1e6:>8.1f}M{batch_size:>6}{per_step * 1e3:>10.0f}"
              f"{1 / per_step:>8.2f}{batch_size / per_step:>11.1f}{ratio:>8}{batch_size / cpu_per_step:>15.1f}"
              f"{n_steps:>7}{first_step:>11.1f}s  {original}")
    print("speedup: wall-clock against native-fp32 of the same config; samples/cpu-s: per CPU-second of "
          "all threads\n(robust on a busy machine); first step: wall seconds, compilation included for "
          "compiled-bf16;\noriginal: samples/s of the original implementation on this kind of 2-core CPU "
          "(design notes, batch 256)")
    return 0
