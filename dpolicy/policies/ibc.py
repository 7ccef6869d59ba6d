"""Implicit behavioral cloning (Florence et al. 2021): an energy model trained with InfoNCE.

The policy scores (observation history, action chunk) pairs with a scalar energy and acts by
minimising it. Training contrasts the demonstrated chunk with ``n_counter_examples`` chunks drawn
uniformly in the action box (the training min/max, widened by ``action_margin`` of the half-range
on each side, in normalized units). Inference is derivative-free optimisation (DFO): uniform
samples, rounds of softmax resampling plus Gaussian noise of shrinking scale, final argmin; or,
optionally, Langevin MCMC (train it with ``grad_penalty_weight`` > 0, as the IBC paper does).

Counter-examples can instead come from a proposal centred on the agent (``proposal: local``): a
box of ``proposal_radius`` (env units) around the agent's current position, which
``anchor_key``/``anchor_index`` locate in the observation, mixed with a ``proposal_global_share``
of uniform samples. The negatives' logits get ``log u(a) - log q(a)`` (u: the uniform box, q: the
proposal), so the InfoNCE normaliser estimates the same quantity as with uniform negatives; DFO
starts from the same proposal. This is a sample-efficiency variant, not the IBC paper's method.

Chunks: the energy covers the ``n_action_steps`` actions that are executed, i.e. positions
``[To-1, To-1+Ta)`` of the dataset window, so ``horizon`` should be ``To - 1 + Ta``. The predicted
sequence returned by ``sample_actions`` fills the positions before ``To-1`` (already in the past)
with the first planned action.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dpolicy.data.normalizer import Normalizer
from dpolicy.models.obs_encoder import ObservationEncoder
from dpolicy.policies.base import Policy


class EnergyMLP(nn.Module):
    """Scalar energy of (observation features, flattened action chunk).

    ``residual=False``: the paper's plain MLP (Linear + ReLU + Dropout) x n_layers.
    ``residual=True``: pre-activation residual blocks of the same width.
    The first layer is split so that the observation part is computed once per observation,
    not once per candidate action (the hot path of both InfoNCE training and DFO).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 1024, n_layers: int = 4,
                 dropout: float = 0.1, residual: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.obs_in = nn.Linear(obs_dim, hidden_dim)
        self.act_in = nn.Linear(action_dim, hidden_dim, bias=False)
        self.residual = residual
        self.blocks = nn.ModuleList()
        for _ in range(n_layers - 1):
            if residual:
                self.blocks.append(nn.Sequential(nn.LayerNorm(hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                                 nn.Linear(hidden_dim, hidden_dim)))
            else:
                self.blocks.append(nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim)))
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1))

    def forward(self, obs_feat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """obs_feat (B, F), actions (B, N, A) -> energies (B, N)."""
        h = self.obs_in(obs_feat).unsqueeze(1) + self.act_in(actions)
        for block in self.blocks:
            h = h + block(h) if self.residual else block(h)
        return self.out(h).squeeze(-1)


class IbcPolicy(Policy):
    """Energy-based policy with InfoNCE training and DFO / Langevin inference.

    ``encoder_options`` are the observation encoder's arguments (see :class:`ObservationEncoder`).
    """

    def __init__(self, shape_meta: Mapping, normalizer: Normalizer, horizon: int = 2, n_obs_steps: int = 2,
                 n_action_steps: int = 1, hidden_dim: int = 1024, n_layers: int = 4, dropout: float = 0.1,
                 residual: bool = False, n_counter_examples: int = 1024, temperature: float = 1.0,
                 action_margin: float = 0.05, sampler: str = "dfo", dfo_samples: int = 1024, dfo_iters: int = 3,
                 dfo_noise_scale: float = 0.33, dfo_noise_shrink: float = 0.5, langevin_steps: int = 50,
                 langevin_step_size: float = 0.1, langevin_noise_scale: float = 0.5,
                 grad_penalty_weight: float = 0.0, grad_penalty_margin: float = 1.0,
                 proposal: str = "uniform", anchor_key: str | None = None, anchor_index: int = 0,
                 proposal_radius: float | None = None, proposal_global_share: float = 0.2,
                 **encoder_options):
        super().__init__(shape_meta, normalizer, horizon, n_obs_steps, n_action_steps)
        if horizon < n_obs_steps - 1 + n_action_steps:
            raise ValueError(f"IBC needs horizon >= n_obs_steps - 1 + n_action_steps, got {horizon}")
        if sampler not in ("dfo", "langevin"):
            raise ValueError(f"sampler must be 'dfo' or 'langevin', got {sampler!r}")
        self._check_anchor(anchor_key, int(anchor_index))
        self.anchor_key, self.anchor_index = anchor_key, int(anchor_index)
        if proposal not in ("uniform", "local"):
            raise ValueError(f"proposal must be 'uniform' or 'local', got {proposal!r}")
        if proposal == "local" and (anchor_key is None or proposal_radius is None or not proposal_radius > 0):
            raise ValueError("proposal 'local' needs anchor_key (the observation holding the agent's position) "
                             f"and proposal_radius > 0 (env units), got {anchor_key!r} and {proposal_radius!r}")
        if not 0.0 <= proposal_global_share <= 1.0:
            raise ValueError(f"proposal_global_share must be in [0, 1], got {proposal_global_share}")
        self.proposal = proposal
        self.proposal_radius = None if proposal_radius is None else float(proposal_radius)
        self.proposal_global_share = float(proposal_global_share)
        self.encoder = ObservationEncoder(shape_meta["obs"], self.n_obs_steps, **encoder_options)
        self.chunk_steps = self.n_action_steps  # actions the energy scores: fixed by the network
        self.chunk_dim = self.chunk_steps * self.action_dim
        self.energy = EnergyMLP(self.encoder.output_dim, self.chunk_dim, hidden_dim,
                                n_layers, dropout, residual)
        self.n_counter_examples = int(n_counter_examples)
        self.temperature = float(temperature)
        self.bound = 1.0 + float(action_margin)  # normalized actions live in [-1, 1] on the training set
        self.sampler = sampler
        self.dfo_samples, self.dfo_iters = int(dfo_samples), int(dfo_iters)
        self.dfo_noise_scale, self.dfo_noise_shrink = float(dfo_noise_scale), float(dfo_noise_shrink)
        self.langevin_steps, self.langevin_step_size = int(langevin_steps), float(langevin_step_size)
        self.langevin_noise_scale = float(langevin_noise_scale)
        self.grad_penalty_weight, self.grad_penalty_margin = float(grad_penalty_weight), float(grad_penalty_margin)

    def set_search(self, samples: int | None = None, iters: int | None = None) -> None:
        """Change the inference search: ``samples`` candidates per action (DFO and Langevin) and
        ``iters`` DFO rounds of resampling. Arguments left out keep their value; the weights do not
        change, so one trained energy can be evaluated at several search budgets."""
        for name, value, least in (("samples", samples, 1), ("iters", iters, 0)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < least):
                raise ValueError(f"search {name} must be an integer >= {least}, got {value!r}")
        if samples is not None:
            self.dfo_samples = int(samples)
        if iters is not None:
            self.dfo_iters = int(iters)

    @property
    def max_action_steps(self) -> int:
        """Only the scored chunk is planned: executing fewer of its actions is possible, more is not."""
        return self.chunk_steps

    # ------------------------------------------------------------------ helpers
    def _check_anchor(self, key: str | None, index: int) -> None:
        if key is None:
            return
        item = self.shape_meta["obs"].get(key)
        if item is None or item.get("type", "low_dim") != "low_dim":
            raise ValueError(f"anchor_key {key!r} must name a low_dim observation key; the spec has "
                             f"{self.obs_keys()}")
        if not 0 <= index <= int(item["shape"][0]) - self.action_dim:
            raise ValueError(f"anchor_index {index}: observation {key!r} has {item['shape'][0]} numbers, the "
                             f"agent's position ({self.action_dim} of them) must fit from that index")

    def _features(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(nobs)

    def _uniform(self, batch: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(batch, n, self.chunk_dim, device=self.device, generator=generator)
        return (2 * u - 1) * self.bound

    def anchor_positions(self, nobs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The agent's (current, previous) positions (B, D) in normalized action units."""
        window = self.normalizer.unnormalize(self.anchor_key, nobs[self.anchor_key])
        position = window[..., self.anchor_index:self.anchor_index + self.action_dim]
        current = self.normalizer.normalize("action", position[:, -1])
        previous = self.normalizer.normalize("action", position[:, -2]) if position.shape[1] > 1 else current
        return current, previous

    def _radius(self) -> torch.Tensor:
        """The proposal's half-width per action dimension, in normalized action units (D,)."""
        zero = torch.zeros(self.action_dim, device=self.device)
        r = self.normalizer.normalize("action", zero + self.proposal_radius) - self.normalizer.normalize("action", zero)
        return r.abs().clamp(max=self.bound)

    def sample_proposal(self, nobs: Mapping[str, torch.Tensor], n: int, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` candidate chunks (B, n, Ta*D) from the proposal and their ``log u - log q`` (B, n).

        Uniform proposal: the action box, zero correction. Local: a box around the agent's current
        position (kept inside the action box) with a share of uniform samples; q is that mixture.
        """
        batch = next(iter(nobs.values())).shape[0]
        if self.proposal == "uniform":
            return self._uniform(batch, n, generator), torch.zeros(batch, n, device=self.device)
        half = self._radius().repeat(self.chunk_steps)  # (Ta*D,)
        centre = self.anchor_positions(nobs)[0].repeat(1, self.chunk_steps)  # (B, Ta*D)
        centre = torch.maximum(torch.minimum(centre, self.bound - half), half - self.bound)
        n_global = int(round(n * self.proposal_global_share))
        u = torch.rand(batch, n - n_global, self.chunk_dim, device=self.device, generator=generator)
        local = centre[:, None] + (2 * u - 1) * half
        samples = torch.cat([local, self._uniform(batch, n_global, generator)], dim=1)
        share = self.proposal_global_share
        log_volume_global = self.chunk_dim * torch.log(torch.tensor(2 * self.bound, device=self.device))
        log_volume_local = torch.log(2 * half).sum()
        inside = ((samples - centre[:, None]).abs() <= half + 1e-6).all(dim=-1)
        density_ratio = share + (1 - share) * inside * torch.exp(log_volume_global - log_volume_local)  # q / u
        return samples, -torch.log(density_ratio)

    def energies(self, nobs: Mapping[str, torch.Tensor], nactions: torch.Tensor) -> torch.Tensor:
        """Energies (B, N) of normalized candidate chunks (B, N, Ta*D) given normalized obs."""
        return self.energy(self._features(nobs), nactions)

    # ------------------------------------------------------------------ training
    def _executed(self, naction: torch.Tensor) -> torch.Tensor:
        """The scored chunk of a window (B, Ta*D): positions [To-1, To-1+Ta)."""
        start = self.n_obs_steps - 1
        return naction[:, start:start + self.chunk_steps].reshape(naction.shape[0], self.chunk_dim)

    def _candidates(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(candidates (B, 1+N, Ta*D), label of the positive (B,), logit correction (B, 1+N))."""
        target = self._executed(naction)[:, None]
        bsz = target.shape[0]
        negatives, correction = self.sample_proposal(nobs, self.n_counter_examples, generator)
        candidates = torch.cat([target, negatives], dim=1)
        correction = torch.cat([torch.zeros(bsz, 1, device=self.device), correction], dim=1)
        # Put the positive at a random slot so the network cannot learn a position.
        perm = torch.argsort(torch.rand(bsz, candidates.shape[1], device=self.device, generator=generator), dim=1)
        candidates = torch.gather(candidates, 1, perm.unsqueeze(-1).expand_as(candidates))
        correction = torch.gather(correction, 1, perm)
        labels = torch.argmin(perm, dim=1)  # where index 0 (the positive) went
        return candidates, labels, correction

    def infonce(self, energy: torch.Tensor, labels: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
        """InfoNCE of energies (B, 1+N) with the positive at ``labels`` and the proposal's correction."""
        return F.cross_entropy(-energy / self.temperature + correction, labels)

    def loss(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """InfoNCE: the demonstrated chunk against ``n_counter_examples`` drawn from the proposal."""
        candidates, labels, correction = self._candidates(nobs, naction, generator)
        feat = self._features(nobs)
        if self.grad_penalty_weight > 0:
            candidates = candidates.detach().requires_grad_(True)
        energy = self.energy(feat, candidates)
        loss = self.infonce(energy, labels, correction)
        if self.grad_penalty_weight > 0:
            grad = torch.autograd.grad(energy.sum(), candidates, create_graph=True)[0]
            excess = (grad.norm(dim=-1) - self.grad_penalty_margin).clamp_min(0)
            loss = loss + self.grad_penalty_weight * (excess ** 2).mean()
        return loss

    @torch.no_grad()
    def diagnostics(self, batch: Mapping, generator: torch.Generator | None = None) -> dict[str, float]:
        """Held-out figures of a batch: ``infonce`` (the model's loss), ``infonce_trivial`` (the loss of
        a parameter-free energy on the same candidates: a Gaussian around the agent's position plus
        its last velocity, width fitted to the batch; needs ``anchor_key``) and ``action_error``
        (mean distance per step between the sampler's chunk and the demonstrated one, env units).

        A model that does not beat the trivial energy has learned no more than the kinematics.
        """
        nobs, naction = self.normalize_batch(batch)
        candidates, labels, correction = self._candidates(nobs, naction, generator)
        feat = self._features(nobs)
        out = {"infonce": float(self.infonce(self.energy(feat, candidates), labels, correction))}
        if self.anchor_key is not None:
            current, previous = self.anchor_positions(nobs)
            steps = torch.arange(1, self.chunk_steps + 1, device=self.device, dtype=current.dtype)
            guess = (current[:, None] + steps[:, None] * (current - previous)[:, None]).reshape(-1, self.chunk_dim)
            variance = ((self._executed(naction) - guess) ** 2).mean().clamp_min(1e-8)
            trivial = ((candidates - guess[:, None]) ** 2).sum(-1) / (2 * variance)
            out["infonce_trivial"] = float(self.infonce(trivial * self.temperature, labels, correction))
        chunk = self.sample_actions(nobs, generator)[:, self.n_obs_steps - 1:self.n_obs_steps - 1 + self.chunk_steps]
        start = self.n_obs_steps - 1
        demonstrated = torch.as_tensor(batch["action"], device=self.device)[:, start:start + self.chunk_steps]
        planned = self.normalizer.unnormalize("action", chunk)
        out["action_error"] = float((planned - demonstrated).norm(dim=-1).mean())
        return out

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _dfo(self, feat: torch.Tensor, samples: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """DFO from initial candidate chunks ``samples`` (B, N, Ta*D)."""
        bsz = feat.shape[0]
        scale = self.dfo_noise_scale
        for _ in range(self.dfo_iters):
            energy = self.energy(feat, samples)
            probs = torch.softmax(-energy / self.temperature, dim=1)
            idx = torch.multinomial(probs, self.dfo_samples, replacement=True, generator=generator)
            samples = torch.gather(samples, 1, idx.unsqueeze(-1).expand_as(samples))
            noise = torch.randn(samples.shape, device=samples.device, generator=generator)
            samples = (samples + scale * noise).clamp(-self.bound, self.bound)
            scale *= self.dfo_noise_shrink
        best = self.energy(feat, samples).argmin(dim=1)
        return samples[torch.arange(bsz, device=samples.device), best]

    def _langevin(self, feat: torch.Tensor, samples: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        bsz = feat.shape[0]
        with torch.enable_grad():
            for i in range(self.langevin_steps):
                # Polynomially decaying step size, as in the IBC paper's Langevin sampler.
                step = self.langevin_step_size * (1 - i / self.langevin_steps) ** 2 + 1e-5
                samples = samples.detach().requires_grad_(True)
                grad = torch.autograd.grad(self.energy(feat, samples).sum(), samples)[0]
                noise = torch.randn(samples.shape, device=samples.device, generator=generator)
                samples = samples - step * grad + (2 * step) ** 0.5 * self.langevin_noise_scale * noise
                samples = samples.clamp(-self.bound, self.bound)
        with torch.no_grad():
            best = self.energy(feat, samples).argmin(dim=1)
        return samples.detach()[torch.arange(bsz, device=samples.device), best]

    def sample_actions(self, nobs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        was_training = self.training
        self.eval()  # no dropout while optimising the energy
        feat = self._features(nobs)
        start, _ = self.sample_proposal(nobs, self.dfo_samples, generator)
        chunk = (self._dfo if self.sampler == "dfo" else self._langevin)(feat, start, generator)
        self.train(was_training)
        chunk = chunk.reshape(-1, self.chunk_steps, self.action_dim)
        past = chunk[:, :1].expand(-1, self.n_obs_steps - 1, -1)
        tail = chunk[:, -1:].expand(-1, self.horizon - (self.n_obs_steps - 1) - self.chunk_steps, -1)
        return torch.cat([past, chunk, tail], dim=1)
