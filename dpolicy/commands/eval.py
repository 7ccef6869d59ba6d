"""`dpolicy eval CHECKPOINT`: roll a trained policy out in its task's simulator, or score it offline.

The environment, its arguments and the episode limit come from the checkpoint's config
(``task.env_id``, ``task.env_kwargs``, ``task.max_steps``); the command line can override them.
Writes metrics.json, episodes.csv, final_frames.png and videos into ``--out``.

A task without a simulator (``task.env_id: null``, or trained with ``training.eval.mode=offline``),
or ``--offline``, is evaluated on the held-out episodes of its dataset instead (or on every episode
of ``--dataset``): predicted chunks against the demonstrated actions
(:mod:`dpolicy.evaluation.offline`); metrics.json only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpolicy.commands import at_least
from dpolicy.evaluation.protocols import PROTOCOLS
from dpolicy.evaluation.report import VIDEO_FORMATS
from dpolicy.evaluation.vector import VECTOR_KINDS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint file written by `dpolicy train`")
    parser.add_argument("--protocol", default="paper",
                        help=f"seeds: one of {', '.join(PROTOCOLS)} ('train': the training seeds 0..49), "
                             "or a list such as '100000-100009' or '1,5,9' (default: paper)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run>/eval/<checkpoint name>_<protocol> next to the "
                             "checkpoints folder, plus a tag such as _dfo256x2 or _ddim-steps5 naming the "
                             "inference settings changed below)")
    parser.add_argument("--n-envs", type=at_least(1), default=None,
                        help="environments run at once (default: all episodes, at most 50)")
    parser.add_argument("--vector", choices=VECTOR_KINDS, default="async",
                        help="async: environments in worker processes (default); sync: in this process")
    parser.add_argument("--max-steps", type=at_least(1), default=None,
                        help="episode limit (default: the task's)")
    parser.add_argument("--videos", type=at_least(0), default=4, help="videos of the first K episodes (default 4)")
    parser.add_argument("--video-format", choices=VIDEO_FORMATS, default="mp4")
    parser.add_argument("--replan-threshold", type=at_least(0), default=0,
                        help="plan a new chunk when this many actions are still queued "
                             "(default 0: at the end of each chunk)")
    parser.add_argument("--action-steps", type=at_least(1), default=None,
                        help="actions executed from each plan before the next one (default: the checkpoint's "
                             "n_action_steps; at most horizon - n_obs_steps + 1)")
    parser.add_argument("--sampler", default=None,
                        help="diffusion sampling scheduler, e.g. ddim or ddpm (default: the checkpoint's)")
    parser.add_argument("--inference-steps", type=at_least(1), default=None,
                        help="denoising steps per chunk (default: the checkpoint's)")
    parser.add_argument("--dfo-samples", type=at_least(1), default=None,
                        help="IBC: candidate actions scored per search round (default: the checkpoint's)")
    parser.add_argument("--dfo-iters", type=at_least(0), default=None,
                        help="IBC: DFO rounds of resampling before the final argmin (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="torch device for the policy (default: auto)")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch CPU threads (default: torch's; 1 is much faster on a busy machine)")
    parser.add_argument("--no-ema", action="store_true",
                        help="use the plain weights instead of the EMA weights")
    parser.add_argument("--env-id", default=None, help="override the checkpoint's task.env_id")
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the policy's sampling noise (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    offline = parser.add_argument_group("offline evaluation (tasks without a simulator)")
    offline.add_argument("--offline", action="store_true",
                         help="score predicted chunks against held-out demonstrations instead of rolling out "
                              "(the default when the checkpoint's task has no env_id or was trained with "
                              "training.eval.mode=offline; --env-id rolls out in that environment instead)")
    offline.add_argument("--dataset", type=Path, default=None,
                         help="evaluate on every episode of this zarr dataset (same layout as the training data) "
                              "instead of the training run's held-out episodes")
    offline.add_argument("--samples", type=at_least(1), default=8,
                         help="chunks sampled per window; the best is compared (default 8)")
    offline.add_argument("--windows", type=at_least(1), default=256,
                         help="windows spread over the episodes (default 256)")


def default_out_dir(checkpoint: Path, protocol: str, settings: str = "") -> Path:
    """``runs/x/checkpoints/latest.safetensors`` -> ``runs/x/eval/latest_<protocol>[_<settings>]``.

    ``settings`` names the inference overrides (see :func:`settings_tag`), so that evaluations of one
    checkpoint at different settings do not overwrite each other.
    """
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    tag = protocol if protocol in (*PROTOCOLS, "offline") else "seeds"
    return run_dir / "eval" / (f"{checkpoint.stem}_{tag}" + (f"_{settings}" if settings else ""))


def settings_tag(args: argparse.Namespace) -> str:
    """A folder-name tag for the inference overrides given on the command line ('' for none)."""
    parts = []
    if args.sampler is not None:
        parts.append(str(args.sampler))
    if args.inference_steps is not None:
        parts.append(f"steps{args.inference_steps}")
    if args.dfo_samples is not None or args.dfo_iters is not None:
        samples, iters = ("ckpt" if v is None else v for v in (args.dfo_samples, args.dfo_iters))
        parts.append(f"dfo{samples}x{iters}")
    if args.action_steps is not None:
        parts.append(f"ta{args.action_steps}")
    if args.replan_threshold:
        parts.append(f"replan{args.replan_threshold}")
    if args.no_ema:
        parts.append("noema")
    if args.seed:
        parts.append(f"seed{args.seed}")
    return "-".join(parts)


def format_summary(m: dict) -> str:
    lo, hi = m["success_ci95"]
    lines = [
        f"episodes        {m['n_episodes']}" + (" (interrupted)" if m.get("interrupted") else ""),
        f"score           {m['score']:.4f}   (mean over episodes of the best reward)",
        f"success rate    {m['success_rate']:.3f}   95% CI [{lo:.3f}, {hi:.3f}]",
        f"mean length     {m['mean_length']:.1f} steps",
        f"policy latency  p50 {m['latency_p50_ms']:.1f} ms, p95 {m['latency_p95_ms']:.1f} ms per chunk "
        f"(mean batch {m['mean_policy_batch']:.1f})",
        f"wall            {m['wall_s']:.1f} s ({m['steps_per_s']:.0f} env steps/s, {m['n_envs']} envs, "
        f"{m['vector']})",
    ]
    if m.get("out_dir"):
        lines.append(f"written to      {m['out_dir']}")
    return "\n".join(lines)


def _sampler_info(policy) -> dict:
    if hasattr(policy, "set_search"):
        return {"sampler": policy.sampler, "dfo_samples": policy.dfo_samples, "dfo_iters": policy.dfo_iters}
    if not hasattr(policy, "set_inference"):
        return {}
    return {"sampler": getattr(policy, "inference_scheduler_name", None),
            "inference_steps": getattr(policy, "num_inference_steps", None)}


def run_offline(args: argparse.Namespace, policy, cfg) -> int:
    """Offline evaluation of a loaded policy (see the module docstring)."""
    from omegaconf import OmegaConf

    from dpolicy.data.datasets import build_dataset
    from dpolicy.evaluation.offline import evaluate_offline, format_offline_summary
    from dpolicy.evaluation.report import write_metrics

    dataset_cfg = OmegaConf.to_container(cfg.task.dataset, resolve=True)
    if args.dataset is not None:
        dataset_cfg.update(path=str(args.dataset), val_ratio=0.0, max_train_episodes=None)
        dataset = build_dataset(dataset_cfg)
    else:
        dataset = build_dataset(dataset_cfg).get_validation_dataset()
    metrics = evaluate_offline(policy, dataset, n_samples=args.samples, max_windows=args.windows, seed=args.seed)
    metrics.update(checkpoint=str(args.checkpoint), dataset=str(dataset.path), use_ema=not args.no_ema,
                   **_sampler_info(policy))
    out_dir = args.out or default_out_dir(args.checkpoint, "offline", settings_tag(args))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir / "metrics.json", metrics)
    print(format_offline_summary(metrics))
    print(f"written to      {out_dir / 'metrics.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from dpolicy.evaluation.rollout import EvaluationInterrupted, evaluate
    from dpolicy.training.checkpoint import load_policy
    from dpolicy.training.trainer import evaluation_mode

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    policy, cfg = load_policy(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    if args.sampler is not None or args.inference_steps is not None:
        if not hasattr(policy, "set_inference"):
            raise SystemExit(f"--sampler/--inference-steps: {type(policy).__name__} has no set_inference(); "
                             "only diffusion policies have a sampler to change")
        policy.set_inference(args.sampler, args.inference_steps)
    if args.dfo_samples is not None or args.dfo_iters is not None:
        if not hasattr(policy, "set_search"):
            raise SystemExit(f"--dfo-samples/--dfo-iters: {type(policy).__name__} has no set_search(); "
                             "only energy-based (IBC) policies search for their actions")
        policy.set_search(args.dfo_samples, args.dfo_iters)
    if args.action_steps is not None:
        try:
            policy.set_action_steps(args.action_steps)
        except ValueError as err:
            raise SystemExit(f"--action-steps: {err}") from None
    task = cfg.task
    if args.offline or args.dataset is not None or (args.env_id is None and evaluation_mode(cfg) == "offline"):
        return run_offline(args, policy, cfg)
    env_id = args.env_id or str(task.env_id)
    env_kwargs = OmegaConf.to_container(task.env_kwargs, resolve=True) if task.get("env_kwargs") else {}
    max_steps = args.max_steps or task.get("max_steps")
    out_dir = args.out or default_out_dir(args.checkpoint, args.protocol, settings_tag(args))
    try:
        metrics = evaluate(policy, env_id, args.protocol, env_kwargs=env_kwargs, n_envs=args.n_envs,
                           vector=args.vector, max_steps=max_steps, out_dir=out_dir, n_videos=args.videos,
                           progress=not args.no_progress, replan_threshold=args.replan_threshold,
                           policy_seed=args.seed, video_format=args.video_format,
                           metadata={"checkpoint": str(args.checkpoint), "protocol": args.protocol,
                                     "use_ema": not args.no_ema, "action_steps": policy.n_action_steps,
                                     **_sampler_info(policy)})
    except EvaluationInterrupted as stop:
        print("interrupted: results of the finished episodes")
        print(format_summary(stop.metrics))
        return 130
    print(format_summary(metrics))
    print(json.dumps({k: metrics[k] for k in ("score", "success_rate", "success_ci95", "mean_length")}))
    return 0
