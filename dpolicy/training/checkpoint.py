"""Self-describing checkpoints: everything needed to rebuild, evaluate or resume a policy.

A checkpoint is one ``torch.save`` file holding the resolved config, the observation/action
spec, the package version, the step, the weights (plain and EMA, normalizer included as
buffers) and, for resuming, the optimizer, LR schedule, EMA and RNG states. It is written to a
temporary file and renamed, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import dpolicy
from dpolicy.data.normalizer import Normalizer

CHECKPOINT_FORMAT = "dpolicy-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus format and version tags) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "package_version": dpolicy.__version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a dpolicy checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return payload


def build_policy(cfg: DictConfig, shape_meta: dict, normalizer: Normalizer) -> torch.nn.Module:
    """Instantiate ``cfg.policy`` (a hydra ``_target_`` node) for the given spec and normalizer."""
    from hydra.utils import instantiate

    return instantiate(cfg.policy, shape_meta=shape_meta, normalizer=normalizer, _convert_="all")


def policy_from_payload(payload: dict[str, Any], use_ema: bool = True) -> torch.nn.Module:
    """Rebuild a policy from an already-read checkpoint payload."""
    cfg = OmegaConf.create(payload["config"])
    shape_meta = payload["shape_meta"]
    spec = dict(shape_meta["obs"])
    spec["action"] = {"shape": shape_meta["action"]["shape"], "type": "low_dim"}
    policy = build_policy(cfg, shape_meta, Normalizer.from_spec(spec))
    key = "ema_model" if use_ema and payload.get("ema_model") is not None else "model"
    policy.load_state_dict(payload[key])
    return policy


def load_policy(path: str | Path, use_ema: bool = True, device: str | torch.device | None = None):
    """Load ``(policy, cfg)`` from a checkpoint; EMA weights by default, as evaluated in training."""
    from dpolicy.training.devices import resolve_device

    payload = read_checkpoint(path)
    policy = policy_from_payload(payload, use_ema=use_ema)
    policy.to(resolve_device(device or "auto")).eval()
    return policy, OmegaConf.create(payload["config"])
