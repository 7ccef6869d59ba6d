"""A plain regression baseline: an MLP from the observation history to the action chunk, trained
with mean squared error. Unimodal by construction: where demonstrations show two equally good
actions it predicts their average, which is the failure Diffusion Policy and IBC avoid."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dpolicy.data.normalizer import Normalizer
from dpolicy.models.obs_encoder import ObservationEncoder
from dpolicy.policies.base import Policy


class MseRegressionPolicy(Policy):
    """MLP(obs features) -> the whole normalized action sequence of length ``horizon``.

    ``encoder_options`` are the observation encoder's arguments (see :class:`ObservationEncoder`).
    """

    def __init__(self, shape_meta: Mapping, normalizer: Normalizer, horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8, hidden_dim: int = 256, n_layers: int = 3,
                 **encoder_options):
        super().__init__(shape_meta, normalizer, horizon, n_obs_steps, n_action_steps)
        self.encoder = ObservationEncoder(shape_meta["obs"], self.n_obs_steps, **encoder_options)
        layers: list[nn.Module] = []
        width = self.encoder.output_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.Mish()]
            width = hidden_dim
        layers.append(nn.Linear(width, self.horizon * self.action_dim))
        self.mlp = nn.Sequential(*layers)

    def _predict(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.mlp(self.encoder(nobs))
        return out.reshape(-1, self.horizon, self.action_dim)

    def loss(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        return F.mse_loss(self._predict(nobs), naction)

    def sample_actions(self, nobs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        return self._predict(nobs)
