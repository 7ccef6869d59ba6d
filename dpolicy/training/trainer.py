"""One trainer for every policy of the package.

The trainer knows nothing about diffusion or energies: it builds the dataset and the policy from
the config (``cfg.task.dataset`` declares its keys or names a preset, ``cfg.policy.name`` picks a
registered policy; every other value is a plain argument), then runs AdamW with a warm-up + cosine
learning-rate schedule, gradient clipping and an EMA of the weights. Every ``checkpoint_every``
steps it writes ``checkpoints/latest.safetensors`` (atomically), so ``resume=true`` continues a
killed run from there with the same data order, RNG streams, optimizer and EMA state. Periodic
evaluations score the EMA policy and keep the top-k checkpoints: rollouts in the task's simulator,
or, for a task without one, chunks against held-out demonstrations (:mod:`dpolicy.evaluation.offline`).

Launched under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, nccl on CUDA);
each process draws its own shard of every epoch and ``batch_size`` is per process.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dpolicy.config import check_writable, validate_config
from dpolicy.data.datasets import build_dataset
from dpolicy.errors import ConfigError
from dpolicy.processes import peak_rss_mb
from dpolicy.training.checkpoint import LATEST, build_policy, read_checkpoint, save_checkpoint
from dpolicy.training.devices import resolve_bf16, resolve_device
from dpolicy.training.logging import RunLogger


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 0 to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def budget_clock_step(step: int, elapsed_s: float, warmup_steps: int, total_steps: int, budget_s: float) -> float:
    """Where a schedule on the time budget's clock stands: after the warm-up, the further of ``step``
    and the step that the spent share of ``budget_s`` maps to, so the cosine ends at ``total_steps``
    or when the budget is spent, whichever comes first (a slower machine still finishes its decay)."""
    if step < warmup_steps or budget_s <= 0:
        return step
    return max(step, warmup_steps + (total_steps - warmup_steps) * min(1.0, elapsed_s / budget_s))


class _DistributedContext:
    """Rank / world size from torchrun's environment; a no-op context for a single process."""

    def __init__(self, device_name: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_name, self.local_rank)
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """Train ``cfg.policy`` on ``cfg.task.dataset``; see the module docstring."""

    def __init__(self, cfg: DictConfig):
        validate_config(cfg)  # before anything is read or written
        self.cfg = cfg
        self.tcfg = cfg.training
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if not cfg.resume and (self.ckpt_dir / LATEST).exists():
            raise ConfigError(f"{self.run_dir} already holds a run ({self.ckpt_dir / LATEST}): continue it "
                              f"with resume=true or choose another run_dir")
        self.ctx = _DistributedContext(str(cfg.device))
        if self.ctx.is_main:
            check_writable(self.ckpt_dir)
        if self.tcfg.get("num_threads"):
            torch.set_num_threads(int(self.tcfg.num_threads))

        _seed_everything(int(cfg.seed) + self.ctx.rank)
        self.dataset = build_dataset(OmegaConf.to_container(cfg.task.dataset, resolve=True))
        if len(self.dataset) == 0:
            raise ValueError(f"dataset {cfg.task.dataset.get('path')} has no training windows")
        self.val_dataset = self.dataset.get_validation_dataset()
        self.eval_mode = evaluation_mode(cfg)
        if self.eval_mode == "offline" and int(self.tcfg.eval_every) > 0 and len(self.val_dataset) == 0:
            raise ConfigError("training evaluates offline on held-out episodes (task.env_id is null or "
                              "training.eval.mode=offline), but task.dataset.val_ratio holds none out: "
                              "set it above 0, or training.eval_every=0")
        self.shape_meta = self.dataset.shape_meta
        self.policy = build_policy(cfg, self.shape_meta, self.dataset.fit_normalizer()).to(self.ctx.device)
        self.ema = None
        if self.tcfg.ema.enabled:
            from dpolicy.models.ema import EMA

            self.ema = EMA(self.policy, power=float(self.tcfg.ema.power), max_value=float(self.tcfg.ema.max_value))
        # bf16 autocast: matrix products in bfloat16, the rest (and the weights) in float32.
        self.use_bf16 = resolve_bf16(self.tcfg.get("bf16", False), self.ctx.device)
        if self.tcfg.get("bf16") == "auto" and self.ctx.is_main:
            tqdm.write(f"training.bf16=auto: bf16 autocast {'on' if self.use_bf16 else 'off'} "
                       f"({'native' if self.use_bf16 else 'no native'} bf16 on {self.ctx.device.type})")
        # The fused AdamW kernel: one pass over all parameters instead of a loop of small ops per
        # tensor (measured on one busy CPU core: 10 instead of 25 ms per step of the 4.6M-parameter UNet).
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=float(self.tcfg.lr), betas=tuple(self.tcfg.betas),
            weight_decay=float(self.tcfg.weight_decay), fused=self.ctx.device.type in ("cpu", "cuda"))
        self.elapsed_s = 0.0  # training wall-clock accumulated over resumed segments
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_multiplier)
        if self.tcfg.get("compile", False):
            compile_networks(self.policy)
        self.model = self.policy
        if self.ctx.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.policy, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.top_k: list[dict[str, Any]] = []  # [{"score", "step", "path"}], best first
        self.logger = RunLogger(self.run_dir, enabled=self.ctx.is_main, fresh=not cfg.resume,
                                tensorboard=bool(self.tcfg.tensorboard),
                                wandb=bool(self.tcfg.wandb), config=OmegaConf.to_container(cfg, resolve=True))
        if cfg.resume:
            self._load_for_resume()

    def _lr_multiplier(self, step: int) -> float:
        t = self.tcfg
        total, warmup = int(t.max_steps), int(t.warmup_steps)
        if t.get("schedule_clock", "steps") == "budget":
            step = budget_clock_step(step, self.elapsed_s, warmup, total, float(t.max_minutes) * 60)
        return warmup_cosine(step, warmup, total, float(t.get("min_lr_ratio", 0.0)))

    # ------------------------------------------------------------------ data order
    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """This process's batches of window indices for an epoch: a seeded permutation, sharded by rank."""
        rng = np.random.default_rng([int(self.cfg.seed), epoch])
        perm = rng.permutation(len(self.dataset))[self.ctx.rank::self.ctx.world_size]
        bs = int(self.tcfg.batch_size)
        n_batches = len(perm) // bs if len(perm) >= bs else 1
        if self.ctx.enabled:  # every rank must take the same number of steps
            n = torch.tensor([n_batches])
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            n_batches = int(n.item())
        return perm[: n_batches * bs].reshape(n_batches, -1) if len(perm) >= bs else perm[None]

    def _to_device(self, batch: dict) -> dict:
        dev = self.ctx.device
        return {"obs": {k: v.to(dev, non_blocking=True) for k, v in batch["obs"].items()},
                "action": batch["action"].to(dev, non_blocking=True)}

    # ------------------------------------------------------------------ main loop
    def train(self) -> dict[str, Any]:
        """Run until ``max_steps`` (or ``max_minutes``); returns the final summary."""
        t = self.tcfg
        max_steps, max_seconds = int(t.max_steps), (float(t.max_minutes) * 60 if t.get("max_minutes") else None)
        stop_requested = {"flag": False}

        def request_stop(signum, _frame):
            # SIGTERM and a first Ctrl-C stop at the next step boundary, so the checkpoint is written
            # from a consistent state; a second Ctrl-C stops at once.
            if signum == signal.SIGINT and stop_requested["flag"]:
                raise KeyboardInterrupt
            stop_requested["flag"] = True

        handled = (signal.SIGTERM, signal.SIGINT)
        previous_handlers = {s: signal.getsignal(s) for s in handled}
        if self.ctx.is_main and not self.ctx.enabled:
            for s in handled:
                signal.signal(s, request_stop)

        bar = tqdm(total=max_steps, initial=self.step, disable=not self.ctx.is_main or not t.progress,
                   desc="train", dynamic_ncols=True)
        segment_start, last_log_time, last_log_step = time.perf_counter(), time.perf_counter(), self.step
        base_elapsed = self.elapsed_s
        loss_sum, loss_n = 0.0, 0
        interrupted = False
        try:
            while self.step < max_steps:
                batches = self._epoch_batches(self.epoch)
                while self.batch_in_epoch < len(batches) and self.step < max_steps:
                    self.policy.train()
                    batch = self._to_device(self.dataset.get_batch(batches[self.batch_in_epoch]))
                    with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                        loss = self.model(batch)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), float(t.grad_clip))
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    if self.ema is not None:
                        self.ema.step(self.policy)
                    self.step += 1
                    self.batch_in_epoch += 1
                    loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
                    self.elapsed_s = base_elapsed + time.perf_counter() - segment_start

                    if self.step % int(t.log_every) == 0 or self.step == max_steps:
                        now = time.perf_counter()
                        rate = (self.step - last_log_step) / max(now - last_log_time, 1e-9)
                        lr = self.optimizer.param_groups[0]["lr"]
                        record = {"step": self.step, "epoch": self.epoch, "train_loss": loss_sum / loss_n,
                                  "lr": lr, "steps_per_s": rate, "elapsed_min": self.elapsed_s / 60}
                        self.logger.log(record)
                        bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{lr:.2e}", it_s=f"{rate:.1f}")
                        bar.update(self.step - bar.n)
                        loss_sum, loss_n, last_log_time, last_log_step = 0.0, 0, now, self.step
                    self._periodic(max_steps)
                    if stop_requested["flag"] or (max_seconds is not None and self.elapsed_s >= max_seconds):
                        raise _StopTraining
                if self.batch_in_epoch >= len(batches):
                    self.epoch += 1
                    self.batch_in_epoch = 0
        except (_StopTraining, KeyboardInterrupt) as exc:
            # Ctrl-C and SIGTERM stop right away; only a spent time budget still gets its final rollouts.
            interrupted = isinstance(exc, KeyboardInterrupt) or stop_requested["flag"]
            if self.ctx.is_main:
                reason = "interrupted" if interrupted else f"time budget of {t.max_minutes} min spent"
                bar.write(f"stopping at step {self.step} ({reason}); writing checkpoint")
        finally:
            bar.close()
            if self.ctx.is_main and not self.ctx.enabled:
                for s, handler in previous_handlers.items():
                    signal.signal(s, handler)

        if self.ctx.is_main:
            self._save(LATEST)
        summary = {"step": self.step, "epoch": self.epoch, "train_minutes": self.elapsed_s / 60,
                   "interrupted": interrupted, "run_dir": str(self.run_dir), "top_k": self.top_k,
                   "peak_rss_mb": peak_rss_mb()}
        if self.ctx.is_main:
            if not interrupted and int(t.eval_every) > 0 and self.step % int(t.eval_every) != 0:
                summary["final_eval"] = self._evaluate()
            self.logger.close()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.ctx.barrier()
        self.ctx.close()
        return summary

    def _periodic(self, max_steps: int) -> None:
        t = self.tcfg
        if self.ctx.is_main and int(t.val_every) > 0 and self.step % int(t.val_every) == 0:
            self.logger.log({"step": self.step, **self.validation()})
        if self.ctx.is_main and int(t.eval_every) > 0 and self.step % int(t.eval_every) == 0:
            self._evaluate()
        if self.ctx.is_main and (self.step % int(t.checkpoint_every) == 0):
            self._save(LATEST)

    # ------------------------------------------------------------------ validation and rollouts
    def eval_policy(self) -> torch.nn.Module:
        """The policy that is evaluated and deployed: the EMA weights when EMA is on."""
        return self.ema.averaged_model if self.ema is not None else self.policy

    @torch.no_grad()
    def validation(self) -> dict[str, float]:
        """``val_loss``, the mean loss over up to ``val_batches`` fixed validation batches (noise
        seeded, RNG untouched), and ``val_<name>`` for every figure of the policy's ``diagnostics``."""
        ds = self.val_dataset
        if ds is None or len(ds) == 0:
            return {"val_loss": float("nan")}
        model = self.eval_policy()
        model.eval()
        bs = int(self.tcfg.batch_size)
        idx = np.arange(len(ds))
        figures: dict[str, list[float]] = {"val_loss": []}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed))
            for start in range(0, min(len(ds), bs * int(self.tcfg.val_batches)), bs):
                batch = self._to_device(ds.get_batch(idx[start:start + bs]))
                figures["val_loss"].append(float(model.compute_loss(batch)))
                for name, value in model.diagnostics(batch).items():
                    figures.setdefault(f"val_{name}", []).append(value)
        return {name: float(np.mean(values)) for name, values in figures.items()}

    def _evaluate(self) -> dict[str, Any]:
        if self.eval_mode == "offline":
            return self._evaluate_offline()
        from dpolicy.evaluation import evaluate, protocol_seeds

        ecfg = self.tcfg.eval
        model = self.eval_policy()
        model.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed))
            metrics = evaluate(model, env_id=self.cfg.task.env_id, seeds=protocol_seeds(ecfg.protocol),
                               env_kwargs=OmegaConf.to_container(self.cfg.task.env_kwargs, resolve=True),
                               n_envs=ecfg.get("n_envs"), vector=str(ecfg.vector),
                               max_steps=int(self.cfg.task.max_steps), progress=False,
                               out_dir=self.run_dir / "eval" / f"step_{self.step:07d}",
                               n_videos=int(ecfg.get("n_videos", 0)))
        record = {"step": self.step, "elapsed_min": self.elapsed_s / 60,
                  **{f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.logger.log(record)
        self._keep_top_k(float(metrics["score"]), f"score={float(metrics['score']):.3f}")
        return metrics

    def _evaluate_offline(self) -> dict[str, Any]:
        """Chunks of the EMA policy against the held-out demonstrations (tasks without a simulator)."""
        from dpolicy.evaluation.offline import SELECTION_METRIC, evaluate_offline
        from dpolicy.evaluation.report import write_metrics

        ecfg = self.tcfg.eval
        metrics = evaluate_offline(self.eval_policy(), self.val_dataset, n_samples=int(ecfg.get("offline_samples", 8)),
                                   max_windows=int(ecfg.get("offline_windows", 256)), seed=int(self.cfg.seed))
        out_dir = self.run_dir / "eval" / f"step_{self.step:07d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(out_dir / "metrics.json", metrics)
        record = {"step": self.step, "elapsed_min": self.elapsed_s / 60,
                  **{f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.logger.log(record)
        error = float(metrics[SELECTION_METRIC])
        self._keep_top_k(-error, f"{SELECTION_METRIC}={error:.4g}")
        return metrics

    def _keep_top_k(self, score: float, label: str) -> None:
        """Keep this step's weights if ``score`` (higher is better) is among the k best; ``label`` names it."""
        k = int(self.tcfg.top_k)
        if k <= 0:
            return
        worst = self.top_k[-1]["score"] if len(self.top_k) >= k else -math.inf
        if score <= worst:
            return
        name = f"step={self.step:07d}-{label}.safetensors"
        self._save(name)
        self.top_k.append({"score": score, "step": self.step, "path": str(self.ckpt_dir / name)})
        self.top_k.sort(key=lambda e: (-e["score"], e["step"]))
        for dropped in self.top_k[k:]:
            Path(dropped["path"]).unlink(missing_ok=True)
        self.top_k = self.top_k[:k]
        self._save(LATEST)  # the top-k list is part of the resumable state

    # ------------------------------------------------------------------ checkpoints
    def _save(self, name: str) -> Path:
        """Write a checkpoint: weights, EMA weights and everything ``resume=true`` needs."""
        meta = {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "shape_meta": self.shape_meta,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed_s": self.elapsed_s,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema_state": ({k: v for k, v in self.ema.state_dict().items() if k != "averaged_model"}
                          if self.ema is not None else None),
            "top_k": self.top_k,
        }
        return save_checkpoint(self.ckpt_dir / name, meta, self.policy.state_dict(),
                               ema_model=self.ema.averaged_model.state_dict() if self.ema is not None else None,
                               optimizer=self.optimizer.state_dict(), rng=True)

    def _load_for_resume(self) -> None:
        path = self.ckpt_dir / LATEST
        if not path.is_file():
            raise FileNotFoundError(f"resume=true but there is no checkpoint to resume from at {path}")
        checkpoint = read_checkpoint(path, device=self.ctx.device)
        meta = checkpoint.meta
        saved_name = meta["config"]["policy"].get("name")
        if saved_name != self.cfg.policy.get("name"):
            raise ValueError(f"{path} holds a {saved_name!r} policy, the config asks for {self.cfg.policy.name!r}")
        optimizer_state = checkpoint.optimizer_state()
        if optimizer_state is None:
            raise ValueError(f"{path} holds no optimizer state: it cannot resume a run")
        self.policy.load_state_dict(checkpoint.weights(use_ema=False))
        if self.ema is not None and meta.get("ema_state") is not None:
            self.ema.load_state_dict({**meta["ema_state"], "averaged_model": checkpoint.weights(use_ema=True)})
        self.optimizer.load_state_dict(optimizer_state)
        self.lr_scheduler.load_state_dict(meta["lr_scheduler"])
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])
        self.batch_in_epoch, self.elapsed_s = int(meta["batch_in_epoch"]), float(meta["elapsed_s"])
        self.top_k = list(meta.get("top_k", []))
        if self.ctx.enabled:
            # Only rank 0's RNG streams are saved: give every rank a fresh, distinct stream instead.
            _seed_everything(int(self.cfg.seed) + self.ctx.rank + 1_000_003 * self.step)
        else:
            checkpoint.restore_rng()
        if self.ctx.is_main:
            tqdm.write(f"resumed from {path} at step {self.step} (epoch {self.epoch})")


def evaluation_mode(cfg: DictConfig) -> str:
    """How the trainer evaluates: ``rollouts`` in ``task.env_id``, or ``offline`` on held-out episodes.

    ``training.eval.mode: auto`` (the default) rolls out when the task names an environment.
    """
    mode = str(OmegaConf.select(cfg, "training.eval.mode", default="auto"))
    if mode not in ("auto", "rollouts", "offline"):
        raise ConfigError(f"training.eval.mode is {mode!r}; expected auto, rollouts or offline")
    has_env = bool(cfg.task.get("env_id"))
    if mode == "rollouts" and not has_env:
        raise ConfigError("training.eval.mode=rollouts needs a simulator, but task.env_id is null")
    return mode if mode != "auto" else ("rollouts" if has_env else "offline")


class _StopTraining(Exception):
    """Raised inside the loop to stop cleanly (time budget or SIGTERM)."""


def compile_networks(policy: torch.nn.Module) -> list[str]:
    """``torch.compile`` each network of ``policy`` in place (its children that hold parameters).

    In place, so parameter names, checkpoints and the EMA copy (made before, kept eager) are
    unaffected. The first training step pays the compilation (minutes on a small CPU); on CPU it
    needs a C++ compiler, without one this warns and stays eager.
    Returns the names of the compiled children.
    """
    if next(policy.parameters()).device.type == "cpu" and not any(
            shutil.which(cxx) for cxx in ("g++", "clang++", "c++")):
        warnings.warn("training.compile: no C++ compiler (g++, clang++ or c++) on PATH, training eagerly",
                      stacklevel=2)
        return []
    compiled = []
    for name, module in policy.named_children():
        if next(module.parameters(), None) is not None:
            module.compile()
            compiled.append(name)
    return compiled


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
