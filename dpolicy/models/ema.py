"""Exponential moving average of a model's weights, with the warm-up schedule of Diffusion Policy.

After ``n`` calls of :meth:`EMA.step` the next update uses

    decay = 1 - (1 + s / inv_gamma) ** -power,   s = n - update_after_step - 1,

clipped to ``[min_value, max_value]`` (decay 0, a plain copy, while ``s <= 0``). With
``power=0.75`` the average forgets its random start quickly and settles near ``max_value``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds ``averaged_model``, a frozen copy of ``model`` whose floating parameters track the EMA.

    Buffers (e.g. a normalizer's statistics) and non-trainable parameters are copied as they are.
    """

    def __init__(self, model: nn.Module, power: float = 0.75, max_value: float = 0.9999,
                 min_value: float = 0.0, inv_gamma: float = 1.0, update_after_step: int = 0):
        if not 0.0 <= min_value <= max_value <= 1.0:
            raise ValueError(f"need 0 <= min_value <= max_value <= 1, got {min_value}, {max_value}")
        if inv_gamma <= 0 or power <= 0:
            raise ValueError(f"inv_gamma and power must be positive, got {inv_gamma}, {power}")
        self.averaged_model = copy.deepcopy(model)
        self.averaged_model.eval()
        self.averaged_model.requires_grad_(False)
        self.power = float(power)
        self.max_value = float(max_value)
        self.min_value = float(min_value)
        self.inv_gamma = float(inv_gamma)
        self.update_after_step = int(update_after_step)
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, optimization_step: int) -> float:
        """Decay used by the update that follows ``optimization_step`` earlier updates."""
        s = optimization_step - self.update_after_step - 1
        if s <= 0:
            return 0.0
        value = 1.0 - (1.0 + s / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture) into the average."""
        self.decay = self.get_decay(self.optimization_step)
        averaged, current = [], []
        for (name, avg), (other_name, param) in zip(self.averaged_model.named_parameters(),
                                                     model.named_parameters(), strict=True):
            if name != other_name:
                raise ValueError(f"EMA.step: parameter {other_name!r} does not match the averaged {name!r}")
            if param.requires_grad and param.is_floating_point():
                averaged.append(avg)
                current.append(param.detach())
            else:
                avg.copy_(param)
        if averaged:
            # avg <- decay * avg + (1 - decay) * param
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for avg_buf, buf in zip(self.averaged_model.buffers(), model.buffers(), strict=True):
            avg_buf.copy_(buf)
        self.optimization_step += 1

    def state_dict(self) -> dict:
        return {"averaged_model": self.averaged_model.state_dict(),
                "optimization_step": self.optimization_step, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.averaged_model.load_state_dict(state["averaged_model"])
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state.get("decay", self.get_decay(max(self.optimization_step - 1, 0))))
