"""Run logs: JSON lines always; tensorboard and wandb when installed and asked for; a PNG of the curves."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any


class RunLogger:
    """Append-only ``log.jsonl`` in the run directory plus optional mirrors.

    ``fresh`` truncates an old log (a new run), otherwise records are appended (a resumed run).
    Every record carries ``step``; records with other keys (train, val, eval) interleave freely.
    ``plot()`` draws every logged series against the step into ``curves.png``.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, fresh: bool = True, tensorboard: bool = False,
                 wandb: bool = False, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "log.jsonl"
        # A fresh run starts a new log; a resumed one appends to it.
        self._file = open(self.path, "w" if fresh else "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                warnings.warn("training.tensorboard=true but tensorboard is not installed; logging to JSON only",
                              stacklevel=2)
        if wandb:
            try:
                import wandb as wandb_module

                self._wandb = wandb_module.init(project="dpolicy", dir=str(self.run_dir), config=config,
                                                resume="allow")
            except ImportError:
                warnings.warn("training.wandb=true but wandb is not installed; logging to JSON only", stacklevel=2)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        step = int(record["step"])
        scalars = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if any(k.startswith(("val_", "eval/")) for k in record):
            self.plot()

    def plot(self) -> Path | None:
        """Write ``curves.png``: train/val loss, learning rate and rollout score against the step."""
        if not self.enabled:
            return None
        return plot_curves(self.path, self.run_dir / "curves.png")

    def close(self) -> None:
        if not self.enabled:
            return
        self.plot()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return records


CURVE_PANELS = (("loss", ("train_loss", "val_loss", "val_infonce_trivial")), ("learning rate", ("lr",)),
                ("held-out action error", ("val_action_error",)),
                ("rollout", ("eval/score", "eval/success_rate")))


def curve_panels(records: list[dict]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels of ``curves.png`` that have something to draw (no rollouts: no rollout panel)."""
    panels = [(title, keys) for title, keys in CURVE_PANELS
              if any(key in r and math.isfinite(float(r[key])) for r in records for key in keys)]
    return panels or list(CURVE_PANELS[:1])


def plot_curves(log_path: Path, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    panels = curve_panels(records)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(float(r[key]))]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if key.startswith(("val", "eval")) else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title == "loss":
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
