"""Device choice: cuda when present, then Apple mps, then cpu; any can be forced."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` picks cuda (the local rank's GPU under torchrun), mps, else cpu."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was requested but CUDA is not available on this machine")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (so autocast to bf16 speeds
    training up): CUDA GPUs that support it, CPUs with AVX-512 BF16 / AMX units. Elsewhere bf16 is
    emulated and several times slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_bf16(setting, device: torch.device) -> bool:
    """``training.bf16``: true, false, or "auto" (on where :func:`bf16_is_fast`)."""
    if setting == "auto":
        return bf16_is_fast(device)
    if isinstance(setting, bool):
        return setting
    from dpolicy.errors import ConfigError

    raise ConfigError(f"config key training.bf16={setting!r}: expected true, false or auto")
