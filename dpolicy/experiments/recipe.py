"""Summarise training runs across seeds: a results table and a score-vs-minutes plot.

Each ``--group LABEL=RUN_DIR[,RUN_DIR...]`` names the runs (one per training seed) of one recipe.
Per run it reads what `dpolicy train` and `dpolicy eval` wrote:

- ``summary.json``: training minutes (the trainer's clock: steps, periodic rollouts and checkpoints);
- ``log.jsonl``: the periodic rollouts (``eval/score`` against ``elapsed_min``) for the plot;
- ``eval/latest_paper/metrics.json`` and ``eval/latest_large/metrics.json``: the final policy on the
  paper protocol (score) and the large one (success rate), from
  ``dpolicy eval RUN/checkpoints/latest.safetensors --protocol paper|large``.

    python -m dpolicy.experiments.recipe --group "Diffusion Policy=runs/dp_s0,runs/dp_s1,runs/dp_s2" \\
        --plot docs/score_vs_minutes.png

prints a markdown table (mean +- std over the runs, each run's figures beside it) and, with
``--plot``, draws every group's periodic-rollout score against training minutes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from dpolicy.training.logging import read_log


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_figures(run_dir: Path) -> dict:
    """Training minutes, final paper score, large-protocol success rate and the rollout curve of one run."""
    run_dir = Path(run_dir)
    if not (run_dir / "log.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: no log.jsonl; is this a `dpolicy train` run folder?")
    summary = _read_json(run_dir / "summary.json") or {}
    paper = _read_json(run_dir / "eval" / "latest_paper" / "metrics.json") or {}
    large = _read_json(run_dir / "eval" / "latest_large" / "metrics.json") or {}
    rollouts = [r for r in read_log(run_dir / "log.jsonl") if "eval/score" in r and "elapsed_min" in r]
    curve = [(r["elapsed_min"], r["eval/score"], r.get("eval/success_rate", math.nan)) for r in rollouts]
    return {"run": str(run_dir), "steps": summary.get("step"), "minutes": summary.get("train_minutes"),
            "score": paper.get("score"), "success": large.get("success_rate"),
            "curve": curve, "rollout_seeds": sorted({_seed_range(r) for r in rollouts})}


def _seed_range(record: dict) -> str:
    """The reset seeds of a periodic rollout, in words ("50 paper seeds", "seeds 0..49")."""
    first, n = record.get("eval/first_seed"), record.get("eval/n_seeds")
    if first is None or n is None:
        return "rollout seeds not logged"
    if first == 100000 and n == 50:
        return "50 paper seeds"
    return f"seeds {first}..{first + n - 1}"


def _mean_std(values: list) -> str:
    values = [float(v) for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"


def markdown_table(groups: dict[str, list[dict]]) -> str:
    """One row per group: runs, training minutes, paper score and large success (mean +- std, and per run)."""
    lines = ["| recipe | seeds | steps | training min | score (paper) | success (large) | per seed (score / success) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, runs in groups.items():
        minutes = [r["minutes"] for r in runs if r["minutes"] is not None]
        minutes_text = f"{min(minutes):.1f}-{max(minutes):.1f}" if minutes else "-"
        steps = sorted({r["steps"] for r in runs if r["steps"] is not None})
        steps_text = f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else (str(steps[0]) if steps else "-")
        per_seed = ", ".join(
            f"{r['score']:.3f}" if r["score"] is not None else "-" for r in runs) + " / " + ", ".join(
            f"{r['success']:.1%}" if r["success"] is not None else "-" for r in runs)
        lines.append(f"| {label} | {len(runs)} | {steps_text} | "
                     f"{minutes_text} | "
                     f"{_mean_std([r['score'] for r in runs])} | {_mean_std([r['success'] for r in runs])} | "
                     f"{per_seed} |")
    return "\n".join(lines)


def plot_score_vs_minutes(groups: dict[str, list[dict]], out_path: Path, target: float | None = 0.91) -> Path:
    """Periodic-rollout score and success rate against training minutes: each seed thin, the seed
    mean +- std bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, runs), color in zip(groups.items(), colors, strict=False):
        curves = [r["curve"] for r in runs if r["curve"]]
        n = min((len(c) for c in curves), default=0)
        for column, ax in enumerate(axes, start=1):
            for curve in curves:
                ax.plot([p[0] for p in curve], [p[column] for p in curve], color=color, alpha=0.3, lw=1)
            if n:  # the rollouts happen at the same steps in every seed: average them point by point
                xs = np.mean([[p[0] for p in c[:n]] for c in curves], axis=0)
                ys = np.array([[p[column] for p in c[:n]] for c in curves])
                ax.plot(xs, ys.mean(axis=0), color=color, lw=2, marker="o", ms=3,
                        label=f"{label} ({len(curves)} seeds)")
                if len(curves) > 1:
                    std = ys.std(axis=0, ddof=1)
                    ax.fill_between(xs, ys.mean(axis=0) - std, ys.mean(axis=0) + std, color=color, alpha=0.15)
    if target is not None and math.isfinite(target):
        axes[0].axhline(target, color="gray", ls="--", lw=1, label=f"paper, mean of last 10 checkpoints ({target})")
    names = ["score (best clip(cov / 0.95))", "success rate (coverage > 0.95)"]
    seeds = {seed for runs in groups.values() for r in runs for seed in r.get("rollout_seeds", [])}
    seeds_text = seeds.pop() if len(seeds) == 1 else "rollout seeds differ between runs"
    for ax, name in zip(axes, names, strict=True):
        ax.set_xlabel("training wall-clock (minutes, trainer clock, rollouts included)")
        ax.set_ylabel(f"{name}, {seeds_text}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _group(text: str) -> tuple[str, list[Path]]:
    label, sep, runs = text.partition("=")
    if not sep or not runs:
        raise argparse.ArgumentTypeError(f"a group looks like 'LABEL=RUN_DIR,RUN_DIR', got {text!r}")
    return label, [Path(r) for r in runs.split(",") if r]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", type=_group, action="append", required=True,
                        help="LABEL=RUN_DIR[,RUN_DIR...]: the training seeds of one recipe (repeatable)")
    parser.add_argument("--plot", type=Path, default=None, help="write the score-vs-minutes plot here (png)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    parser.add_argument("--target", type=float, default=0.91,
                        help="the paper's mean score drawn as a reference line (default 0.91, keypoints; "
                             "0.84 for images)")
    args = parser.parse_args(argv)
    groups = {label: [run_figures(r) for r in runs] for label, runs in args.group}
    print(markdown_table(groups))
    if args.plot:
        print(f"plot: {plot_score_vs_minutes(groups, args.plot, target=args.target)}")
    if args.json:
        args.json.write_text(json.dumps(groups, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
