"""`dpolicy bench env`: Push-T simulator throughput on one core.

Prints control steps per second for the state, keypoints and image observation types (physics,
reward and observation included, resets every ``--episode-steps``), plus the cost of the parts:
physics step, coverage, a 96 px render and a 512 px render. Targets: >= 3000 steps/s (state)
and >= 1500 steps/s (image).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from tqdm import tqdm


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5000, help="control steps per observation type")
    parser.add_argument("--episode-steps", type=int, default=300, help="steps between resets")
    parser.add_argument("--seed", type=int, default=0, help="seed of resets and actions")
    parser.add_argument("--pin", action="store_true",
                        help="also pin the process to one CPU core (the run is single-threaded either way)")


def _single_thread(pin: bool) -> str:
    """Make OpenCV single-threaded; optionally pin the process to its first allowed core."""
    import cv2

    cv2.setNumThreads(1)
    if not pin:
        return "single-threaded"
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to CPU {core}"
    return "not pinned (no sched_setaffinity on this platform)"


def _action_stream(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random walk of targets (like a teleoperator's mouse), so the agent moves and pushes."""
    steps = rng.normal(0.0, 15.0, size=(n, 2))
    path = 256.0 + np.cumsum(steps, axis=0)
    return np.clip(np.abs((path % 1024.0) - 512.0), 20.0, 492.0)  # reflect into the workspace


def _time_env(obs_type: str, actions: np.ndarray, episode_steps: int, seed: int) -> float:
    from envs.pusht.env import PushTEnv

    env = PushTEnv(obs_type=obs_type, max_episode_steps=episode_steps)
    env.reset(seed=seed)
    start = time.perf_counter()
    for i, action in enumerate(tqdm(actions, desc=f"env {obs_type}", leave=False, mininterval=0.5)):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated or (i + 1) % episode_steps == 0:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def _time_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def run(args: argparse.Namespace) -> int:
    from envs.pusht.render import render_state
    from envs.pusht.sim import PushTSim

    if args.steps < 1 or args.episode_steps < 1:
        raise SystemExit("--steps and --episode-steps must be >= 1")
    pinned = _single_thread(args.pin)
    rng = np.random.default_rng(args.seed)
    actions = _action_stream(rng, args.steps)
    print(f"Push-T environment throughput ({pinned}; {args.steps} steps per type, "
          f"reset every {args.episode_steps})")
    results = {}
    for obs_type in ("state", "keypoints", "image"):
        results[obs_type] = _time_env(obs_type, actions, args.episode_steps, args.seed)
        print(f"  {obs_type:<10s} {results[obs_type]:9.0f} steps/s")

    sim = PushTSim()
    sim.reset_legacy(args.seed)
    state = sim.get_state()
    n = min(args.steps, 2000)
    cycle = iter(np.resize(actions, (n + 1, 2)))
    print("  parts (microseconds per call):")
    print(f"    physics step (10 substeps) {_time_call(lambda: sim.step(next(cycle)), n):8.1f}")
    print(f"    coverage                   {_time_call(sim.coverage, n):8.1f}")
    print(f"    render 96 px               {_time_call(lambda: render_state(state, 96), n):8.1f}")
    print(f"    render 512 px              {_time_call(lambda: render_state(state, 512), n):8.1f}")
    full = sim.get_full_state()
    print(f"    set_full_state (replica)   {_time_call(lambda: sim.set_full_state(full), n):8.1f}")
    targets = {"state": 3000.0, "image": 1500.0}
    for obs_type, target in targets.items():
        verdict = "meets" if results[obs_type] >= target else "BELOW"
        print(f"  {obs_type}: {verdict} the target of {target:.0f} steps/s")
    return 0
