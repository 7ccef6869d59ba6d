"""Benchmark of evaluation rollouts: wall time of a protocol per vector mode and environment count.

``--policy diffusion`` uses an untrained CPU-config diffusion policy (the time does not depend
on the weights) with an identity normalizer; ``--policy scripted`` a free scripted policy, which
isolates the cost of the simulator and of the vector environment.

Run as ``dpolicy bench eval``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

KEYPOINTS_ENV = "envs/PushTKeypoints-v0"
DEFAULT_SETUPS = "sync:50,async:50,async:50:2,sync:10"


class ChasePolicy:
    """Free scripted policy: walks the agent toward the block (keypoint observations)."""

    n_obs_steps = 2
    n_action_steps = 8

    def predict_action(self, obs):
        o = np.asarray(obs["obs"], dtype=np.float32)
        agent = o[:, -1, -2:]
        block = o[:, -1, :18].reshape(len(o), 9, 2).mean(axis=1)
        ramp = np.linspace(0.2, 1.2, self.n_action_steps, dtype=np.float32)[None, :, None]
        return {"action": agent[:, None] + (block - agent)[:, None] * ramp}


def build_untrained_diffusion(down_dims: list[int], inference_steps: int):
    """CPU-config diffusion policy for keypoint observations, random weights, identity normalizer."""
    from dpolicy.data.normalizer import Normalizer
    from dpolicy.policies.diffusion import DiffusionPolicy

    shape_meta = {"obs": {"obs": {"shape": [20], "type": "low_dim"}}, "action": {"shape": [2]}}
    normalizer = Normalizer.from_spec({"obs": shape_meta["obs"]["obs"], "action": {"shape": [2]}})
    policy = DiffusionPolicy(shape_meta, normalizer, horizon=16, n_obs_steps=2, n_action_steps=8,
                             down_dims=down_dims, step_embed_dim=128, inference_scheduler="ddim",
                             num_inference_steps=inference_steps)
    return policy.eval()


def parse_setups(text: str) -> list[tuple[str, int, int | None]]:
    """``"sync:50,async:50:2"`` -> [(vector, n_envs, max_concurrency), ...]."""
    setups = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or parts[0] not in ("sync", "async"):
            raise ValueError(f"bad setup {item!r}: use VECTOR:N_ENVS[:MAX_CONCURRENCY], e.g. async:50:2")
        setups.append((parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None))
    return setups


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", choices=("diffusion", "scripted"), default="diffusion")
    parser.add_argument("--protocol", default="paper", help="seeds (default: paper, 50 episodes)")
    parser.add_argument("--setups", default=DEFAULT_SETUPS,
                        help=f"comma list of VECTOR:N_ENVS[:MAX_CONCURRENCY] (default {DEFAULT_SETUPS})")
    parser.add_argument("--down-dims", default="64,128,256", help="UNet widths of the diffusion policy")
    parser.add_argument("--inference-steps", type=int, default=10, help="DDIM steps (default 10)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def run(args: argparse.Namespace) -> int:
    import torch

    from dpolicy.evaluation.rollout import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.policy == "diffusion":
        dims = [int(d) for d in args.down_dims.split(",")]
        policy = build_untrained_diffusion(dims, args.inference_steps)
        n_params = sum(p.numel() for p in policy.parameters())
        label = (f"untrained diffusion UNet {dims} ({n_params / 1e6:.1f} M params), "
                 f"DDIM-{args.inference_steps}")
    else:
        policy, label = ChasePolicy(), "scripted (free) policy"
    print(f"evaluation benchmark: {label}, protocol {args.protocol}, {args.max_steps} steps, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'vector':>6} {'envs':>4} {'conc':>4} {'wall s':>7} {'steps/s':>8} {'calls':>5} {'batch':>5} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'score':>6}")
    for vector, n_envs, concurrency in parse_setups(args.setups):
        m = evaluate(policy, KEYPOINTS_ENV, args.protocol, n_envs=n_envs, vector=vector,
                     max_steps=args.max_steps, progress=False, max_concurrency=concurrency)
        print(f"{vector:>6} {m['n_envs']:>4} {concurrency or '-':>4} {m['wall_s']:>7.1f} "
              f"{m['steps_per_s']:>8.0f} {m['n_policy_calls']:>5} {m['mean_policy_batch']:>5.1f} "
              f"{m['latency_p50_ms']:>7.1f} {m['latency_p95_ms']:>7.1f} {m['score']:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="dpolicy bench eval", description=__doc__)
    configure(parser)
    sys.exit(run(parser.parse_args()))
