"""`dpolicy bench infer`: latency of one predicted action chunk (``predict_action``).

One row per (UNet configuration, batch size, schedule, update). The time covers the whole call:
normalization, observation encoding (once per chunk), the K denoising steps and unnormalization.
``update`` is ``fast`` (precomputed DDPM/DDIM coefficients, the default) or ``diffusers``
(``scheduler.step`` every step), to show what the scheduler bookkeeping costs.

``--checkpoint PATH`` times a trained policy instead of the presets: by default with the sampler
saved in its checkpoint (``--schedules`` overrides it; for an IBC checkpoint ``--searches`` sets
the DFO budgets), on random observations of its own shapes.
"""

from __future__ import annotations

import argparse
import time

import torch

from dpolicy.bench.train import OBS_DIM, add_model_arguments, build_policy, model_configs, setup_threads
from dpolicy.models.noise_schedulers import (
    ReverseDiffusion,
    make_inference_scheduler,
    make_training_scheduler,
)

DEFAULT_SCHEDULES = [("ddpm", 100), ("ddim", 10)]


def _schedule(text: str) -> tuple[str, int]:
    name, _, steps = text.partition(":")
    if not steps.isdigit():
        raise argparse.ArgumentTypeError(f"schedule must look like ddim:10, got {text!r}")
    return name, int(steps)


def _search(text: str) -> tuple[int, int]:
    samples, _, iters = text.partition(":")
    if not (samples.isdigit() and iters.isdigit() and int(samples) > 0):
        raise argparse.ArgumentTypeError(f"search must look like 512:3 (samples:DFO rounds), got {text!r}")
    return int(samples), int(iters)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--schedules", type=_schedule, nargs="+", default=None,
                        help="scheduler:steps pairs (default: ddpm:100 ddim:10; with --checkpoint: its saved "
                             "sampler)")
    parser.add_argument("--searches", type=_search, nargs="+", default=None,
                        help="with an IBC --checkpoint: samples:rounds pairs of the DFO search, e.g. 512:3 "
                             "256:2 (default: its saved search)")
    parser.add_argument("--compare-diffusers", choices=["none", "batch1", "all"], default="batch1",
                        help="also time diffusers' scheduler.step loop (default: at batch 1)")
    parser.add_argument("--checkpoint", default=None,
                        help="time this trained policy instead of the --configs presets (a diffusion policy "
                             "with its own sampler unless --schedules is given)")


def random_observations(policy, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch of observations shaped like ``policy.shape_meta``: low-dim values spread over the
    normalizer's range, images as floats in [0, 1]."""
    obs = {}
    for key, item in policy.shape_meta["obs"].items():
        shape = (batch, policy.n_obs_steps, *[int(s) for s in item["shape"]])
        if item.get("type", "low_dim") == "rgb":
            obs[key] = torch.rand(shape, generator=generator)
        else:
            unit = torch.rand(shape, generator=generator) * 2 - 1
            obs[key] = policy.normalizer.unnormalize(key, unit)
    return obs


def time_chunks(policy, obs: dict, seconds: float) -> tuple[list[float], float]:
    """Sorted wall seconds of successive predict_action calls (at least one) within the budget, and
    their mean CPU seconds (all threads; unlike wall time, not inflated by waiting for a busy core)."""
    times: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while not times or (time.perf_counter() - start < seconds and len(times) < 200):
        t0 = time.perf_counter()
        policy.predict_action(obs)
        times.append(time.perf_counter() - t0)
    return sorted(times), (time.process_time() - cpu_start) / len(times)


def time_scheduler_updates(scheduler: str, steps: int, fast: bool, horizon: int, repeats: int = 20) -> float:
    """Seconds per denoising step spent outside the network (identity denoiser, batch 1)."""
    inference_scheduler = make_inference_scheduler(scheduler, make_training_scheduler())
    sampler = ReverseDiffusion(inference_scheduler, steps, fast=fast)
    x = torch.randn(1, horizon, 2)
    with torch.inference_mode():
        sampler(lambda z, k: z, x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            sampler(lambda z, k: z, x)
    return (time.perf_counter() - t0) / (repeats * steps)


def run(args: argparse.Namespace) -> int:
    note = setup_threads(args)
    seconds = 3.0 if args.seconds is None else args.seconds
    if args.checkpoint:
        return run_checkpoint(args, seconds, note)
    from tqdm import tqdm

    args.schedules = args.schedules or DEFAULT_SCHEDULES

    print(f"dpolicy bench infer: horizon {args.horizon}, To {args.n_obs_steps}, obs {OBS_DIM}; {note}")
    jobs = []
    for name in model_configs(args):
        for batch in args.batch_sizes:
            for scheduler, steps in args.schedules:
                jobs.append((name, batch, scheduler, steps, True))
                if args.compare_diffusers == "all" or (args.compare_diffusers == "batch1" and batch == 1):
                    jobs.append((name, batch, scheduler, steps, False))
    configs = model_configs(args)
    rows, policies = [], {}
    for name, batch, scheduler, steps, fast in tqdm(jobs, desc="infer bench", leave=False):
        if name not in policies:
            torch.manual_seed(0)
            policies.clear()
            policies[name] = build_policy(configs[name], args.horizon, args.n_obs_steps).eval()
        policy = policies[name]
        obs = {"obs": torch.rand(batch, args.n_obs_steps, OBS_DIM) * 512}
        policy.set_inference("ddim", 2, fast=True)
        policy.predict_action(obs)  # warm-up: allocator and kernels for this batch size
        policy.set_inference(scheduler, steps, fast=fast)
        times, cpu = time_chunks(policy, obs, seconds)
        rows.append((name, batch, f"{scheduler}-{steps}", "fast" if policy.sampler.is_fast else "diffusers",
                     times[len(times) // 2], times[0], cpu, steps, len(times)))

    print(f"{'config':<22}{'batch':>6}  {'schedule':<10}{'update':<10}{'median ms':>10}{'min ms':>9}"
          f"{'ms/step':>9}{'cpu ms':>9}{'reps':>6}")
    for name, batch, schedule, update, median, best, cpu, steps, reps in rows:
        print(f"{name:<22}{batch:>6}  {schedule:<10}{update:<10}{median * 1e3:>10.1f}{best * 1e3:>9.1f}"
              f"{median * 1e3 / steps:>9.2f}{cpu * 1e3:>9.1f}{reps:>6}")
    print("median/min ms: wall-clock per chunk; ms/step: median / denoising steps; cpu ms: CPU time per "
          "chunk, all threads")
    print("scheduler update alone (identity denoiser, batch 1), us per denoising step:")
    for scheduler, steps in args.schedules:
        fast_s = time_scheduler_updates(scheduler, steps, True, args.horizon)
        slow_s = time_scheduler_updates(scheduler, steps, False, args.horizon)
        print(f"  {scheduler}-{steps}: fast {fast_s * 1e6:.0f} us, diffusers step {slow_s * 1e6:.0f} us")
    print("original implementation on this kind of 2-core CPU (design notes): paper UNet at batch 1, "
          "~6 s with DDPM-100, ~0.6 s with DDIM-10")
    return 0


def run_checkpoint(args: argparse.Namespace, seconds: float, note: str) -> int:
    """Chunk latency of a trained policy: one row per batch size (and schedule, for diffusion policies)."""
    from dpolicy.policies.diffusion import DiffusionPolicy
    from dpolicy.training.checkpoint import load_policy

    policy, _ = load_policy(args.checkpoint, device="cpu")
    energy_based = hasattr(policy, "set_search")
    if args.searches and not energy_based:
        raise SystemExit(f"{args.checkpoint}: --searches applies to energy-based (IBC) policies, "
                         f"this is a {type(policy).__name__}")
    if args.schedules and not isinstance(policy, DiffusionPolicy):
        raise SystemExit(f"{args.checkpoint}: --schedules applies to diffusion policies, this is a "
                         f"{type(policy).__name__}" + (" (its search: --searches)" if energy_based else ""))
    if energy_based:  # rows: (samples, rounds) of the search, label 512:3
        settings, apply, sep = args.searches or [(policy.dfo_samples, policy.dfo_iters)], policy.set_search, ":"
        what = f"{type(policy).__name__}, {policy.sampler} search samples:rounds"
    elif isinstance(policy, DiffusionPolicy):  # rows: (scheduler, steps), label ddim-10
        saved = (policy.inference_scheduler_name, policy.num_inference_steps)
        settings, apply, sep = args.schedules or [saved], policy.set_inference, "-"
        what = f"UNet {policy.model.down_dims}, saved sampler {saved[0]}-{saved[1]}"
    else:
        settings, apply, sep, what = [None], None, "", type(policy).__name__
    print(f"dpolicy bench infer: {args.checkpoint} ({what}, horizon {policy.horizon}, To {policy.n_obs_steps}, "
          f"Ta {policy.n_action_steps}); {note}")
    print(f"{'batch':>6}  {'schedule':<10}{'median ms':>10}{'p90 ms':>9}{'min ms':>9}{'cpu ms':>9}{'reps':>6}")
    generator = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        obs = random_observations(policy, batch, generator)
        for setting in settings:
            if setting is not None:
                apply(*setting)
            policy.predict_action(obs)  # warm-up
            times, cpu = time_chunks(policy, obs, seconds)
            label = sep.join(map(str, setting)) if setting is not None else "own"
            print(f"{batch:>6}  {label:<10}{times[len(times) // 2] * 1e3:>10.1f}"
                  f"{times[int(0.9 * (len(times) - 1))] * 1e3:>9.1f}{times[0] * 1e3:>9.1f}{cpu * 1e3:>9.1f}"
                  f"{len(times):>6}")
    print("median/p90/min ms: wall-clock per predicted chunk (observation encoding, sampling, unnormalization)")
    return 0
