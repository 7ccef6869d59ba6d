"""The one interface every policy implements (diffusion, IBC, ...).

Conventions (env units everywhere outside the policy):
- observation dict ``{key: (B, To, *shape)}``; a single observation without the batch
  dimension ``{key: (To, *shape)}`` is accepted too. Low-dim keys are float, image keys
  (spec type ``"rgb"``) are HWC uint8 as the environment renders them.
- actions ``(B, T, action_dim)``.
- a training batch is ``{"obs": {key: (B, To, *shape)}, "action": (B, Tp, action_dim)}``.

The shape spec ``{"obs": {key: {"shape": [...], "type": "low_dim"|"rgb"}}, "action": {"shape": [D]}}``
describes the keys; it is saved in checkpoints so a policy can be rebuilt from one alone.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from dpolicy.data.normalizer import Normalizer


class Policy(nn.Module, metaclass=abc.ABCMeta):
    """Base class: holds the spec, the horizons and the normalizer."""

    def __init__(self, shape_meta: Mapping, normalizer: Normalizer, horizon: int, n_obs_steps: int,
                 n_action_steps: int):
        super().__init__()
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(
                f"need 1 <= n_obs_steps <= horizon and 1 <= n_action_steps <= horizon - n_obs_steps + 1, got "
                f"horizon={horizon}, n_obs_steps={n_obs_steps}, n_action_steps={n_action_steps}")
        self.shape_meta = {"obs": {k: dict(v) for k, v in shape_meta["obs"].items()},
                           "action": dict(shape_meta["action"])}
        self.normalizer = normalizer
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.action_dim = int(shape_meta["action"]["shape"][0])
        missing = [k for k in [*self.obs_keys(), "action"] if k not in normalizer]
        if missing:
            raise ValueError(f"normalizer has no entry for {missing}; it must cover every observation key "
                             f"and 'action' (build it with Normalizer.fit or Normalizer.from_spec)")

    @property
    def max_action_steps(self) -> int:
        """Longest executable chunk: the plan's actions from the current step to its end."""
        return self.horizon - self.n_obs_steps + 1

    def set_action_steps(self, n_action_steps: int) -> None:
        """Execute ``n_action_steps`` actions of every plan (1 .. :attr:`max_action_steps`); the
        network is unchanged, only the slice that :meth:`predict_action` returns."""
        if not 1 <= n_action_steps <= self.max_action_steps:
            raise ValueError(f"n_action_steps must be in 1..{self.max_action_steps} (horizon {self.horizon}, "
                             f"{self.n_obs_steps} observation steps), got {n_action_steps}")
        self.n_action_steps = int(n_action_steps)

    # -------------------------------------------------------------- to implement
    @abc.abstractmethod
    def loss(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The method's scalar training loss on normalized tensors: ``nobs`` {key: (B, To, ...)}
        (the first To frames of the window) and ``naction`` (B, horizon, action_dim)."""

    @abc.abstractmethod
    def sample_actions(self, nobs: dict[str, torch.Tensor], generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """Normalized action sequence (B, Tp, action_dim) from normalized obs (B, To, ...)."""

    # -------------------------------------------------------------- training
    def compute_loss(self, batch: Mapping, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of a batch ``{"obs": {key: (B, To', ...)}, "action": (B, horizon, D)}`` in env units.

        Validates the batch, normalizes it once and calls the method's :meth:`loss`. Observation
        windows longer than ``n_obs_steps`` are cut to their first To frames (the frames that
        precede the first executed action in a training window). ``generator`` seeds the
        method's training noise where it uses one.
        """
        nobs, naction = self.normalize_batch(batch)
        return self.loss(nobs, naction, generator=generator)

    def normalize_batch(self, batch: Mapping) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Checked, normalized ``(nobs, naction)`` of a training batch (see :meth:`compute_loss`)."""
        if not isinstance(batch, Mapping) or "obs" not in batch or "action" not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"a training batch needs keys 'obs' and 'action', got {keys}")
        action = torch.as_tensor(batch["action"], device=self.device)
        expected = (self.horizon, self.action_dim)
        if action.ndim != 3 or tuple(action.shape[1:]) != expected:
            raise ValueError(f"batch['action'] must be (B, {expected[0]}, {expected[1]}), "
                             f"got {tuple(action.shape)}")
        batch_size = action.shape[0]
        nobs = {}
        for key, item in self.shape_meta["obs"].items():
            if key not in batch["obs"]:
                raise KeyError(f"batch['obs'] is missing key {key!r}; expected keys {self.obs_keys()}")
            x = torch.as_tensor(batch["obs"][key], device=self.device)
            shape = tuple(int(s) for s in item["shape"])
            if x.ndim != len(shape) + 2 or x.shape[0] != batch_size or tuple(x.shape[2:]) != shape \
                    or x.shape[1] < self.n_obs_steps:
                raise ValueError(f"batch['obs'][{key!r}] must be ({batch_size}, >={self.n_obs_steps}, "
                                 f"{', '.join(map(str, shape))}), got {tuple(x.shape)}")
            nobs[key] = self.normalizer.normalize(key, x[:, :self.n_obs_steps])
        return nobs, self.normalizer.normalize("action", action)

    def diagnostics(self, batch: Mapping, generator: torch.Generator | None = None) -> dict[str, float]:
        """Method-specific figures of a held-out training batch, logged as ``val_<name>`` beside the
        validation loss; none by default."""
        return {}

    # -------------------------------------------------------------- shared
    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def obs_keys(self) -> list[str]:
        return list(self.shape_meta["obs"].keys())

    def prepare_obs(self, obs: Mapping) -> tuple[dict[str, torch.Tensor], bool]:
        """To tensors on the policy's device, with a batch dimension; reports if one was added."""
        out, unbatched = {}, None
        for key, item in self.shape_meta["obs"].items():
            if key not in obs:
                raise KeyError(f"observation is missing key {key!r}; expected keys {self.obs_keys()}")
            x = obs[key]
            x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
            feat_ndim = len(item["shape"])
            if x.ndim == feat_ndim + 1:
                is_unbatched = True
                x = x.unsqueeze(0)
            elif x.ndim == feat_ndim + 2:
                is_unbatched = False
            else:
                raise ValueError(f"observation {key!r}: expected (B, To, {tuple(item['shape'])}) or "
                                 f"(To, {tuple(item['shape'])}), got {tuple(x.shape)}")
            if unbatched is not None and unbatched != is_unbatched:
                raise ValueError("observation keys disagree on having a batch dimension")
            unbatched = is_unbatched
            if tuple(x.shape[2:]) != tuple(item["shape"]):
                raise ValueError(f"observation {key!r}: feature shape {tuple(x.shape[2:])}, "
                                 f"expected {tuple(item['shape'])}")
            if x.shape[1] < self.n_obs_steps:
                raise ValueError(f"observation {key!r}: {x.shape[1]} steps, need n_obs_steps={self.n_obs_steps}")
            out[key] = x[:, -self.n_obs_steps:].to(self.device)
        return out, bool(unbatched)

    @torch.no_grad()
    def predict_action(self, obs: Mapping, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Plan from the last To observations (env units in, env units out).

        Returns ``action`` (B, Ta, D): the executable chunk, actions To-1 .. To-1+Ta of the plan,
        and ``action_pred`` (B, Tp, D): the whole predicted sequence. Without a batch dimension
        in ``obs`` the outputs have none either. ``generator`` seeds the policy's sampling noise.
        """
        nobs_raw, unbatched = self.prepare_obs(obs)
        nobs = {k: self.normalizer.normalize(k, v) for k, v in nobs_raw.items()}
        naction = self.sample_actions(nobs, generator=generator)
        action_pred = self.normalizer.unnormalize("action", naction)
        start = self.n_obs_steps - 1
        action = action_pred[:, start:start + self.n_action_steps]
        if unbatched:
            action, action_pred = action[0], action_pred[0]
        return {"action": action, "action_pred": action_pred}

    def forward(self, batch: Mapping) -> torch.Tensor:
        """Training loss; lets torch DDP wrap the policy (its hooks run on ``forward``)."""
        return self.compute_loss(batch)
