"""Two equally good actions for the same observation: who keeps both modes?

Toy task: observation ``o ~ U(-1, 1)``; the demonstrated action chunk is ``(-0.5, o/2)`` or
``(+0.5, o/2)`` with equal probability (the same for every step of the chunk). A policy that
models the action distribution (Diffusion Policy, IBC) places its samples on the two modes;
a mean-squared-error regressor predicts their average ``(0, o/2)``, an action nobody demonstrated.

    python -m dpolicy.experiments.multimodal --out docs/multimodal.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.diffusion import DiffusionPolicy
from dpolicy.policies.ibc import IbcPolicy
from dpolicy.policies.regression import MseRegressionPolicy

MODE_X = 0.5
HORIZON = 4
SPEC = {"obs": {"obs": {"shape": [1], "type": "low_dim"}}, "action": {"shape": [2]}}


def sample_demonstrations(n: int, rng: np.random.Generator) -> dict:
    obs = rng.uniform(-1, 1, size=(n, 1, 1)).astype(np.float32)
    side = rng.choice([-MODE_X, MODE_X], size=(n, 1, 1))
    action = np.concatenate([np.broadcast_to(side, (n, HORIZON, 1)),
                             np.broadcast_to(obs / 2, (n, HORIZON, 1))], axis=2).astype(np.float32)
    return {"obs": {"obs": torch.from_numpy(obs)}, "action": torch.from_numpy(action)}


def build_policies(normalizer_data: dict) -> dict[str, torch.nn.Module]:
    def norm() -> Normalizer:
        return Normalizer.fit(normalizer_data)

    common = dict(shape_meta=SPEC, n_obs_steps=1)
    return {
        "Diffusion Policy": DiffusionPolicy(normalizer=norm(), horizon=HORIZON, n_action_steps=HORIZON,
                                            down_dims=[32, 64], kernel_size=3, n_groups=4, step_embed_dim=32,
                                            num_train_timesteps=50, inference_scheduler="ddim",
                                            num_inference_steps=10, **common),
        "IBC": IbcPolicy(normalizer=norm(), horizon=1, n_action_steps=1, hidden_dim=128, n_layers=3, dropout=0.0,
                         n_counter_examples=64, dfo_samples=512, dfo_iters=3, **common),
        "MSE regression": MseRegressionPolicy(normalizer=norm(), horizon=HORIZON, n_action_steps=HORIZON,
                                              hidden_dim=128, n_layers=3, **common),
    }


def run_comparison(steps: int = 1000, batch_size: int = 128, n_samples: int = 200, query_obs: float = 0.2,
                   seed: int = 0) -> dict:
    """Train the three policies on the toy data; return samples and mode statistics at ``query_obs``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and robust on a busy machine
    try:
        return _train_and_sample(steps, batch_size, n_samples, query_obs, seed)
    finally:
        torch.set_num_threads(threads)


def _train_and_sample(steps: int, batch_size: int, n_samples: int, query_obs: float, seed: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fit = sample_demonstrations(4096, rng)
    policies = build_policies({"obs": fit["obs"]["obs"].reshape(-1, 1),
                               "action": fit["action"].reshape(-1, 2)})
    results = {}
    for name, policy in policies.items():
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=1e-6)
        policy.train()
        for _ in range(steps):
            batch = sample_demonstrations(batch_size, rng)
            batch["action"] = batch["action"][:, :policy.horizon]  # IBC scores a one-step chunk
            loss = policy.compute_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        policy.eval()
        obs = {"obs": torch.full((n_samples, 1, 1), query_obs)}
        actions = policy.predict_action(obs)["action"][:, 0].numpy()
        results[name] = {"samples": actions, **mode_statistics(actions, query_obs)}
    return results


def mode_statistics(actions: np.ndarray, query_obs: float, radius: float = 0.15) -> dict:
    """Share of samples within ``radius`` of either mode, and the share of the less used mode."""
    modes = np.array([[-MODE_X, query_obs / 2], [MODE_X, query_obs / 2]])
    dist = np.linalg.norm(actions[:, None, :] - modes[None], axis=2)
    near = dist.min(axis=1) < radius
    left = float(np.mean(near & (dist[:, 0] < dist[:, 1])))
    right = float(np.mean(near & (dist[:, 1] <= dist[:, 0])))
    return {"on_mode": float(near.mean()), "minority_mode": min(left, right),
            "mean_abs_x": float(np.abs(actions[:, 0]).mean())}


def plot(results: dict, query_obs: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6), sharex=True, sharey=True)
    for ax, (name, res) in zip(axes, results.items(), strict=True):
        s = res["samples"]
        ax.scatter(s[:, 0], s[:, 1], s=8, alpha=0.5, label="policy samples")
        ax.scatter([-MODE_X, MODE_X], [query_obs / 2] * 2, marker="x", s=120, c="red", label="demonstrated modes")
        ax.set_title(f"{name}\non a mode: {res['on_mode']:.0%}, minority mode: {res['minority_mode']:.0%}",
                     fontsize=9)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-0.6, 0.8)
        ax.set_xlabel("action x")
    axes[0].set_ylabel("action y")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/multimodal.png"), help="plot to write")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per policy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = run_comparison(steps=args.steps, seed=args.seed)
    print(json.dumps({k: {m: v for m, v in r.items() if m != "samples"} for k, r in results.items()}, indent=2))
    print(f"plot: {plot(results, 0.2, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
