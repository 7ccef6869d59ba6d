"""`dpolicy demo`: the newcomer's main job, end to end on the embedded expert dataset.

Trains the low-dim Diffusion Policy recipe for the expert's data (``pusht_lowdim_expert``: the
default recipe, re-planning every 2 actions) on ``data/pusht/pusht_expert.zarr`` for a fixed
number of steps, evaluates the EMA policy with the paper protocol (seeds 100000..100049),
and writes a report (``report.md``), metrics (JSON + per-episode CSV), training curves and
rollout videos into the output directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dpolicy.commands import at_least
from dpolicy.paths import EMBEDDED_PUSHT

#: The recipe the demo trains: the one for the scripted expert's demonstrations.
DEMO_CONFIG = "pusht_lowdim_expert"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--steps", type=at_least(1), default=15000,
                        help="training steps at batch 64 (default 15000: about 15 minutes on 2 CPU cores with bf16 "
                             "units, 20 in float32, a minute or two of it compiling on a fresh machine; much longer "
                             "beside other jobs)")
    parser.add_argument("--dataset", default=str(EMBEDDED_PUSHT),
                        help="zarr dataset to train on (default: the embedded expert dataset)")
    parser.add_argument("--config", default=DEMO_CONFIG,
                        help=f"training recipe (default {DEMO_CONFIG}: the default recipe re-planning every 2 actions, "
                             "as the expert's data needs; use pusht_lowdim for human demonstrations)")
    parser.add_argument("--protocol", default="paper", help="evaluation protocol: paper (50 seeds) or large (500)")
    parser.add_argument("--videos", type=at_least(0), default=4, help="number of rollout videos to write (default 4)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides key=value for the training config")


def run(args: argparse.Namespace) -> int:
    from dpolicy.config import compose_config
    from dpolicy.evaluation import evaluate, protocol_seeds
    from dpolicy.training.checkpoint import load_policy
    from dpolicy.training.trainer import Trainer

    out = Path(args.out)
    if not Path(args.dataset).exists():
        raise FileNotFoundError(f"dataset not found: {args.dataset} (the embedded one is {EMBEDDED_PUSHT})")
    overrides = [f"task.dataset.path={Path(args.dataset).resolve()}", f"run_dir={out}",
                 f"training.max_steps={args.steps}", f"device={args.device}",
                 "training.eval_every=0", *args.overrides]
    cfg = compose_config(args.config, overrides)
    print(f"[1/2] training Diffusion Policy ({args.config}) on {args.dataset} for {args.steps} steps -> {out}")
    t0 = time.perf_counter()
    summary = Trainer(cfg).train()
    train_min = (time.perf_counter() - t0) / 60
    if summary["interrupted"]:
        print(f"training was interrupted at step {summary['step']}; continue it with "
              f"`dpolicy train --config {args.config} task.dataset.path={args.dataset} run_dir={out} resume=true`")
        return 130

    print(f"[2/2] evaluating the EMA policy with the {args.protocol} protocol")
    policy, cfg = load_policy(out / "checkpoints" / "latest.safetensors")
    metrics = evaluate(policy, env_id=cfg.task.env_id, seeds=protocol_seeds(args.protocol),
                       env_kwargs=dict(cfg.task.env_kwargs), max_steps=int(cfg.task.max_steps),
                       out_dir=out / "eval", n_videos=args.videos, progress=True)
    report = out / "report.md"
    report.write_text(_report_text(args, summary, train_min, metrics, out, policy.n_action_steps))
    print(json.dumps({k: metrics[k] for k in ("score", "success_rate", "mean_length") if k in metrics}))
    print(f"report: {report}")
    return 0


#: Figures the demo's report states beside the run's own (paper protocol, Push-T keypoints).
#: Sources: the Diffusion Policy paper's Table (best / mean checkpoint, 3 training seeds), and the
#: package's default recipe on the human demonstrations (docs/results.md, 3 training seeds).
REFERENCE_ROWS = (
    ("Diffusion Policy paper, CNN, keypoints (best / mean)", "0.95 / 0.91", "-"),
    ("default recipe `dpolicy train`, human data, ~40 CPU-min", "0.956 +- 0.018", "66.5% +- 5.1% (large protocol)"),
)


def _report_text(args, summary: dict, train_min: float, metrics: dict, out: Path, action_steps: int) -> str:
    eval_dir = out / "eval"
    videos = [name for name in metrics.get("files", []) if name.endswith((".mp4", ".gif"))]
    lo, hi = metrics["success_ci95"]
    lines = [
        "# dpolicy demo report",
        "",
        f"- dataset: `{args.dataset}`",
        f"- recipe: `{args.config}`, {action_steps} actions executed per plan",
        f"- training: {summary['step']} steps in {train_min:.1f} min (checkpoint `checkpoints/latest.safetensors`)",
        f"- evaluation: `{args.protocol}` protocol, {metrics.get('n_episodes')} episodes",
        "",
        "| run | score | success |",
        "| --- | --- | --- |",
        f"| **this run** | **{metrics['score']:.3f}** | **{metrics['success_rate']:.1%}** "
        f"(95% CI {lo:.1%} - {hi:.1%}) |",
        *(f"| {name} | {score} | {success} |" for name, score, success in REFERENCE_ROWS),
        "",
        "Score: mean over episodes of the best reward, clip(coverage / 0.95, 0, 1); success: coverage > 0.95 "
        f"at some step. Mean episode length {metrics['mean_length']:.1f} steps; chunk latency p50 / p95 "
        f"{metrics['latency_p50_ms']:.1f} / {metrics['latency_p95_ms']:.1f} ms.",
        "",
        "## Training curves",
        "",
        "![training curves](curves.png)",
        "",
    ]
    if (eval_dir / "final_frames.png").exists():
        lines += ["## Final frames (green border: success)", "", "![final frames](eval/final_frames.png)", ""]
    lines += ["## Videos", ""]
    lines += [f"- [{name}](eval/{name})" for name in videos] or ["none written (`--videos 0`)"]
    lines += ["", "Per-episode results: [eval/episodes.csv](eval/episodes.csv), metrics: "
              "[eval/metrics.json](eval/metrics.json).", ""]
    return "\n".join(lines)
