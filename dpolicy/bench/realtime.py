"""`dpolicy bench realtime`: the real-time runner on a wall-clock simulated robot vs synchronous evaluation.

Plays episodes of the checkpoint's task (seeds 100000, 100001, ...) on a
:class:`~dpolicy.control.robot.SimulatedRobot` around the task's environment (``task.env_id``,
``task.env_kwargs``, ``task.max_steps``; commands capped to ``task.max_command_step`` per tick)
with :class:`~dpolicy.control.realtime.RealtimeRunner` at 10 Hz until ``--steps`` control steps
have run, then evaluates the same policy on the same seeds synchronously (``dpolicy eval``'s
rollout, no clock). Prints per mode: deadline misses, held ticks, chunk latency p50/p99, command
lateness, the loop's own work per tick (p99 and max) and the score (mean over episodes of the best
reward, as ``dpolicy eval`` scores) beside the synchronous score. ``--delay 0.3`` slows every chunk
to 300 ms; ``--modes compensated,naive`` runs with and without latency compensation.

With ``--server ADDRESS`` the chunks come from a running ``dpolicy serve`` instead of a policy in
this process (the checkpoint still names the task, and the synchronous evaluation still runs
locally); ``--rate`` sets the control rate, e.g. 20 for a 20 Hz arm.

3000 steps at 10 Hz take 5 minutes of wall-clock time per mode: run it in the background.
Without ``--checkpoint`` it uses ``runs/pusht_lowdim/checkpoints/latest.safetensors`` or
``runs/demo/checkpoints/latest.safetensors`` when one exists, else an UNTRAINED policy of the CPU recipe
(latency figures are meaningful, scores are not).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from dpolicy.paths import REPO_ROOT

#: Checkpoints looked for when ``--checkpoint`` is not given, in order.
DEFAULT_CHECKPOINTS = (REPO_ROOT / "runs" / "pusht_lowdim" / "checkpoints" / "latest.safetensors",
                       REPO_ROOT / "runs" / "demo" / "checkpoints" / "latest.safetensors")
MODES = ("compensated", "naive")


class SlowedPolicy:
    """A policy whose every ``predict_action`` takes at least ``delay_s`` (latency experiments)."""

    def __init__(self, policy, delay_s: float):
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.policy = policy
        self.delay_s = float(delay_s)

    def __getattr__(self, name):  # n_obs_steps, n_action_steps, ... of the wrapped policy
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    def predict_action(self, obs):
        start = time.perf_counter()
        out = self.policy.predict_action(obs)
        remaining = self.delay_s - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        return out


def untrained_policy(config: str = "pusht_lowdim", overrides: tuple[str, ...] = ()):
    """``(policy, cfg, shape_meta)``: an untrained policy built from ``configs/<config>.yaml``.

    The observation/action spec and the normalizer come from the task environment's spaces (no
    dataset is read), so latency can be measured anywhere. The weights are random.
    """
    import gymnasium as gym

    import envs  # noqa: F401 (registers the environments)
    from dpolicy.config import compose_config
    from dpolicy.data.datasets import observation_frames
    from dpolicy.data.normalizer import Normalizer
    from dpolicy.training.checkpoint import build_policy

    cfg = compose_config(config, [*overrides, "task.dataset.path=null"])
    env = gym.make(cfg.task.env_id)
    obs_space, action_space = env.observation_space, env.action_space
    env.close()
    spaces = dict(obs_space.spaces) if isinstance(obs_space, gym.spaces.Dict) else {"obs": obs_space}
    shape_meta = {"obs": {}, "action": {"shape": list(action_space.shape)}}
    bounds, image_keys = {"action": np.stack([action_space.low, action_space.high])}, []
    for key, space in spaces.items():
        is_image = len(space.shape) == 3 and space.dtype == np.uint8
        shape_meta["obs"][key] = {"shape": list(space.shape), "type": "rgb" if is_image else "low_dim"}
        if is_image:
            image_keys.append(key)
        bounds[key] = np.stack([space.low, space.high]).astype(np.float32)
    for key, frames in observation_frames(cfg.task.dataset).items():
        if key in shape_meta["obs"]:
            shape_meta["obs"][key]["frames"] = frames
    policy = build_policy(cfg, shape_meta, Normalizer.fit(bounds, image_keys=tuple(image_keys)))
    return policy, cfg, shape_meta


def untrained_checkpoint(path: str | Path, config: str = "pusht_lowdim",
                         overrides: tuple[str, ...] = ()) -> Path:
    """Write a loadable checkpoint of :func:`untrained_policy` (random weights) to ``path``."""
    from omegaconf import OmegaConf

    from dpolicy.training.checkpoint import save_checkpoint

    policy, cfg, shape_meta = untrained_policy(config, overrides)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "shape_meta": shape_meta, "step": 0}
    return save_checkpoint(path, meta, policy.state_dict())


def resolve_checkpoint(path: Path | None, scratch: Path) -> tuple[Path, bool]:
    """(checkpoint, trained): ``path``, else a default run's latest, else an untrained one in ``scratch``."""
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path, True
    for candidate in DEFAULT_CHECKPOINTS:
        if candidate.is_file():
            return candidate, True
    return untrained_checkpoint(scratch / "untrained_cpu_recipe.safetensors"), False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="policy checkpoint (default: runs/pusht_lowdim or runs/demo latest.safetensors, "
                             "else an untrained one)")
    parser.add_argument("--server", default=None,
                        help="plan with a running `dpolicy serve` at this address (e.g. tcp://127.0.0.1:5555; "
                             "token from DPOLICY_SERVE_TOKEN) instead of in this process")
    parser.add_argument("--steps", type=int, default=3000, help="control steps per mode (whole episodes)")
    parser.add_argument("--rate", type=float, default=10.0, help="command rate in Hz (the task's is 10)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="slow every chunk to at least this many seconds (e.g. 0.3)")
    parser.add_argument("--modes", default="compensated",
                        help=f"comma-separated subset of {','.join(MODES)} "
                             "(with / without latency compensation)")
    parser.add_argument("--blend", type=int, default=0, help="actions cross-faded at chunk switches")
    parser.add_argument("--no-refill", action="store_true",
                        help="do not refill compensated chunks from the longer prediction (see RealtimeRunner)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the policy (default 1)")
    parser.add_argument("--scheduler", default=None, help="diffusion sampler (default: the checkpoint's)")
    parser.add_argument("--sampling-steps", type=int, default=None,
                        help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--no-sync", action="store_true", help="skip the synchronous evaluation")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")


def make_robot(cfg, rate_hz: float):
    """The task's environment (``cfg.task``) as a :class:`~dpolicy.control.robot.SimulatedRobot` whose
    simulated time runs ``rate_hz / task rate`` times faster than the clock, so one command per tick
    is one control step of the task."""
    from dpolicy.control.robot import SimulatedRobot
    from dpolicy.evaluation.vector import episode_limit, make_env

    env_id, env_kwargs = str(cfg.task.env_id), dict(cfg.task.get("env_kwargs") or {})
    max_steps = cfg.task.get("max_steps")
    max_steps = episode_limit(env_id, env_kwargs) if max_steps is None else int(max_steps)
    env = make_env(env_id, env_kwargs, max_steps)
    task_rate = env.metadata.get("render_fps")
    if not task_rate:
        env.close()
        raise ValueError(f"{env_id}: the environment declares no control rate (metadata['render_fps'])")
    max_step = cfg.task.get("max_command_step")
    return SimulatedRobot(env, speed=rate_hz / float(task_rate), max_episode_steps=max_steps,
                          max_step=None if max_step is None else float(max_step))


def run_realtime(policy, robot, steps: int, rate_hz: float, compensated: bool, blend: int,
                 refill: bool = True, progress: bool = True) -> dict:
    """Episodes from seed 100000 on until ``steps`` ticks ran; aggregated report and per-episode scores.

    The score of an episode is the robot's ``info["score"]`` (the best reward of the episode) and
    its success whether ``info["is_success"]`` was ever reported (``first_success_step``).
    """
    from dpolicy.control.realtime import RealtimeRunner
    from dpolicy.evaluation.protocols import TEST_START_SEED

    totals: dict[str, float] = {}
    latencies, lateness, work, collections, seeds, scores, successes = [], [], [], [], [], [], []
    ticks = 0

    def episode_over(observation) -> bool:
        return observation.info["terminated"] or observation.info["truncated"]

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=f"realtime {'compensated' if compensated else 'naive'}", unit="step",
               disable=not progress, dynamic_ncols=True, mininterval=2.0)
    with RealtimeRunner(policy, robot, rate_hz=rate_hz, latency_compensation=compensated, blend_steps=blend,
                        refill_from_prediction=refill) as runner:
        while ticks < steps:
            seed = TEST_START_SEED + len(seeds)
            runner.collect_garbage()  # the whole-heap collection before the episode starts, not in it
            robot.reset(seed=seed)
            report = runner.run(until=episode_over)
            final = robot.observe().info
            runner.worker.wait_idle(timeout=30.0)  # a request of the finished episode, discarded
            seeds.append(seed)
            scores.append(float(final["score"]) if np.isfinite(final["score"]) else 0.0)
            successes.append(final["first_success_step"] > 0)
            ticks += report.ticks
            bar.update(report.ticks)
            bar.set_postfix(score=f"{np.mean(scores):.3f}", misses=int(totals.get("deadline_misses", 0)))
            for name, value in report.summary().items():
                if isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
            latencies += report.latencies_s
            lateness += report.lateness_s
            work += report.busy_s
            collections += report.gc_s
    bar.close()

    def pct(values, q):
        return float(np.percentile(values, q) * 1000.0) if values else float("nan")

    return {"mode": "compensated" if compensated else "naive", "episodes": len(seeds), "seeds": seeds,
            "deadline_ms": runner.deadline_s * 1000.0,
            "score": float(np.mean(scores)), "success_rate": float(np.mean(successes)), "episode_scores": scores,
            **totals,
            "latency_p50_ms": pct(latencies, 50), "latency_p99_ms": pct(latencies, 99),
            "lateness_p50_ms": pct(lateness, 50), "lateness_p99_ms": pct(lateness, 99),
            "max_lateness_ms": max(lateness, default=float("nan")) * 1000.0,
            "tick_work_p99_ms": pct(work, 99), "max_tick_work_ms": max(work, default=float("nan")) * 1000.0,
            "max_gc_ms": max(collections, default=0.0) * 1000.0}


def format_mode(f: dict) -> str:
    """The figures of one mode as printed lines."""
    return "\n".join([
        f"\n[{f['mode']}] {f['ticks']} steps in {f['episodes']} episodes, {f['wall_s']:.0f} s",
        f"  deadline misses  {f['deadline_misses']} (command later than {f['deadline_ms']:.0f} ms after its "
        f"tick; skipped ticks {f['skipped_ticks']})",
        f"  held ticks       {f['held_ticks']} (no fresh action: episode starts, starvation); "
        f"watchdog trips {f['watchdog_trips']}",
        f"  chunks           {f['chunks_received']} used, {f['chunks_stale']} stale, {f['chunks_rejected']} "
        f"rejected, {f['actions_dropped']} late actions dropped",
        f"  chunk latency    p50 {f['latency_p50_ms']:.1f} ms, p99 {f['latency_p99_ms']:.1f} ms "
        "(observation capture -> chunk ready)",
        f"  command lateness p50 {f['lateness_p50_ms']:.2f} ms, p99 {f['lateness_p99_ms']:.2f} ms, max "
        f"{f['max_lateness_ms']:.1f} ms (tick due -> command sent)",
        f"  tick work        p99 {f['tick_work_p99_ms']:.2f} ms, max {f['max_tick_work_ms']:.1f} ms (the loop's own: "
        f"wake-up -> command sent); {f.get('gc_collections', 0)} young gc collections after commands, "
        f"max {f['max_gc_ms']:.1f} ms",
        f"  score            {f['score']:.3f} (success {f['success_rate']:.2f})",
    ])


def run(args: argparse.Namespace) -> int:
    import torch

    from dpolicy.evaluation.rollout import evaluate
    from dpolicy.training.checkpoint import load_policy

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, trained = resolve_checkpoint(args.checkpoint, Path(scratch))
        policy, cfg = load_policy(checkpoint, device="cpu")
    if args.scheduler is not None or args.sampling_steps is not None:
        policy.set_inference(args.scheduler, args.sampling_steps)
    env_id = str(cfg.task.env_id)
    env_kwargs = dict(cfg.task.get("env_kwargs") or {})
    max_steps = cfg.task.get("max_steps")
    max_steps = None if max_steps is None else int(max_steps)
    label = str(checkpoint) if trained else "UNTRAINED CPU-recipe policy (random weights)"
    sampler = (f"{policy.inference_scheduler_name} x{policy.num_inference_steps}"
               if hasattr(policy, "inference_scheduler_name") else type(policy).__name__)
    print(f"policy: {label}; {sampler}; {args.threads} torch thread(s); rate {args.rate:g} Hz; "
          f"extra delay {args.delay * 1000:.0f} ms per chunk; blend {args.blend}; "
          f"refill from prediction {'off' if args.no_refill else 'on'}")
    planner = policy
    if args.server is not None:
        from dpolicy.control.client import PolicyClient

        planner = PolicyClient(args.server)
        print(f"planning with the policy server at {args.server}: {planner.info().get('checkpoint', '?')}")
    served = SlowedPolicy(planner, args.delay) if args.delay > 0 else planner
    results = {"checkpoint": str(checkpoint), "trained": trained, "server": args.server, "rate_hz": args.rate,
               "delay_s": args.delay,
               "threads": args.threads, "sampler": sampler, "blend": args.blend,
               "refill_from_prediction": not args.no_refill, "modes": []}
    for mode in modes:
        start = time.perf_counter()
        robot = make_robot(cfg, args.rate)
        try:
            figures = run_realtime(served, robot, args.steps, args.rate, mode == "compensated", args.blend,
                                   refill=not args.no_refill)
        finally:
            robot.env.close()
        figures["wall_s"] = time.perf_counter() - start
        results["modes"].append(figures)
        print(format_mode(figures))
    if planner is not policy:
        planner.close()
    if not args.no_sync:
        seeds = results["modes"][0]["seeds"]
        sync = evaluate(policy, env_id, seeds, env_kwargs=env_kwargs, vector="sync", n_envs=min(len(seeds), 10),
                        max_steps=max_steps, progress=True)
        results["sync"] = {"score": sync["score"], "success_rate": sync["success_rate"], "seeds": seeds}
        print(f"\n[synchronous evaluation, same {len(seeds)} seeds] score {sync['score']:.3f} "
              f"(success {sync['success_rate']:.2f})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
