"""Offline evaluation: predicted chunks against the demonstrations of held-out episodes.

For a task without a simulator there are no rollouts to score, but the held-out episodes of the
dataset still say what a good action was. For each evaluated window (evenly spread over the
validation episodes) the policy plans ``n_samples`` chunks from the window's observations, and
each chunk is compared with the demonstrated actions it replaces (the executed part of the plan,
``n_action_steps`` actions from step ``n_obs_steps - 1``). The error of one chunk is the mean over
its steps of the Euclidean distance to the demonstrated action, in action units.

Metrics:

- ``action_error_min``: per window the best of the samples, averaged over windows. A multimodal
  policy that knows both ways around an obstacle is not punished for taking the other one in some
  samples; this is the figure the trainer selects checkpoints by.
- ``action_error_mean``: every sample counts.
- ``action_error_per_dim``: mean absolute error of the best sample per action dimension (e.g. a
  gripper channel next to the joints).
- ``sample_spread``: mean distance of the samples from their mean (0 for a deterministic policy).
- ``multimodality``: mean over windows of ``(mean error - min error) / mean error``, in [0, 1): near 0
  when the samples agree; large when some samples are close to the demonstration and others far,
  the mark of a distribution with several modes (or of much noise).
"""

from __future__ import annotations

import time

import numpy as np
import torch

#: Metric the trainer keeps top-k checkpoints by on tasks evaluated offline (lower is better).
SELECTION_METRIC = "action_error_min"


def evaluation_windows(n_windows: int, max_windows: int) -> np.ndarray:
    """``max_windows`` window indices spread evenly over ``range(n_windows)`` (all of them if fewer)."""
    if n_windows <= max_windows:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, max_windows).round().astype(np.int64))


@torch.no_grad()
def evaluate_offline(policy, dataset, n_samples: int = 8, max_windows: int = 256, batch_windows: int = 16,
                     seed: int = 0) -> dict:
    """Metrics of ``policy`` on the windows of ``dataset`` (normally the validation view; see the module).

    ``dataset`` is a :class:`~dpolicy.data.datasets.WindowDataset`; ``seed`` seeds the sampling noise
    so two evaluations of the same weights give the same numbers.
    """
    if len(dataset) == 0:
        raise ValueError(f"{dataset.path}: no held-out windows to evaluate offline (set task.dataset.val_ratio "
                         "above 0 so that some episodes are held out)")
    if n_samples < 1 or max_windows < 1 or batch_windows < 1:
        raise ValueError("n_samples, max_windows and batch_windows must be >= 1")
    was_training = policy.training
    policy.eval()
    start = time.perf_counter()
    generator = torch.Generator(policy.device).manual_seed(int(seed))
    first, count = policy.n_obs_steps - 1, policy.n_action_steps
    windows = evaluation_windows(len(dataset), max_windows)
    best, mean, spread, modal, per_dim = [], [], [], [], []
    try:
        for lo in range(0, len(windows), batch_windows):
            batch = dataset.get_batch(windows[lo:lo + batch_windows])
            obs = {key: value.to(policy.device).repeat_interleave(n_samples, dim=0)
                   for key, value in batch["obs"].items()}
            chunks = policy.predict_action(obs, generator=generator)["action"].float().cpu()
            chunks = chunks.reshape(-1, n_samples, count, chunks.shape[-1])  # (B, S, Ta, D)
            target = batch["action"][:, first:first + count].float()  # (B, Ta, D)
            errors = (chunks - target[:, None]).norm(dim=-1).mean(dim=-1)  # (B, S)
            low, which = errors.min(dim=1)
            average = errors.mean(dim=1)
            best.append(low)
            mean.append(average)
            modal.append(torch.where(average > 0, (average - low) / average.clamp_min(1e-12), 0.0))
            spread.append((chunks - chunks.mean(dim=1, keepdim=True)).norm(dim=-1).mean(dim=(1, 2)))
            chosen = chunks[torch.arange(len(which)), which]  # (B, Ta, D)
            per_dim.append((chosen - target).abs().mean(dim=1))
    finally:
        policy.train(was_training)
    per_dim_error = torch.cat(per_dim).mean(dim=0)
    return {
        "mode": "offline",
        SELECTION_METRIC: float(torch.cat(best).mean()),
        "action_error_mean": float(torch.cat(mean).mean()),
        "action_error_per_dim": [float(v) for v in per_dim_error],
        "sample_spread": float(torch.cat(spread).mean()),
        "multimodality": float(torch.cat(modal).mean()),
        "n_windows": int(len(windows)),
        "n_samples": int(n_samples),
        "n_episodes": int(len(dataset.val_episode_indices if dataset.split == "val"
                             else dataset.train_episode_indices)),
        "wall_s": time.perf_counter() - start,
    }


def format_offline_summary(metrics: dict) -> str:
    """Printed lines of :func:`evaluate_offline`'s metrics."""
    dims = ", ".join(f"{v:.4g}" for v in metrics["action_error_per_dim"])
    return "\n".join([
        f"windows         {metrics['n_windows']} from {metrics['n_episodes']} held-out episodes, "
        f"{metrics['n_samples']} samples each",
        f"action error    min over samples {metrics['action_error_min']:.4g}, mean {metrics['action_error_mean']:.4g} "
        "(action units, per step)",
        f"per dimension   {dims} (best sample, mean absolute)",
        f"samples         spread {metrics['sample_spread']:.4g}, multimodality {metrics['multimodality']:.3f}",
        f"wall            {metrics['wall_s']:.1f} s",
    ])
