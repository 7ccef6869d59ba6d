"""Diffusion Policy (Chi et al., RSS 2023) with the 1D temporal-conv UNet.

The denoiser predicts a whole action sequence of ``horizon`` steps, conditioned (FiLM, "global
conditioning") on the flattened encoding of the last ``n_obs_steps`` observations. Training
follows DDPM with ``num_train_timesteps`` steps; sampling uses any scheduler of
:data:`dpolicy.models.noise_schedulers.SCHEDULERS` with any number of steps, switchable after
training with :meth:`DiffusionPolicy.set_inference`.

Every constructor argument is a plain value so that a config (``policy.name: diffusion`` plus
these arguments) or a checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from dpolicy.data.normalizer import Normalizer
from dpolicy.models.noise_schedulers import (
    ReverseDiffusion,
    make_inference_scheduler,
    make_training_scheduler,
    training_target,
)
from dpolicy.models.obs_encoder import ObservationEncoder
from dpolicy.models.unet1d import ConditionalUnet1D
from dpolicy.policies.base import Policy


class DiffusionPolicy(Policy):
    """Diffusion Policy: observation encoder + conditional 1D UNet + noise schedule.

    Args:
        shape_meta, normalizer, horizon, n_obs_steps, n_action_steps: see :class:`Policy`.
        down_dims, kernel_size, n_groups, step_embed_dim, conv_impl: the UNet (see
            :class:`ConditionalUnet1D`).
        num_train_timesteps, beta_schedule, prediction_type ("epsilon" | "sample" | "v_prediction"),
            clip_sample: the DDPM training schedule.
        inference_scheduler, num_inference_steps: sampling defaults (None steps: as many as in training).
        fast_sampling: use the precomputed DDPM/DDIM update instead of diffusers' ``step`` (same result).
        encoder_options: the observation encoder's arguments (lowdim_mlp, crop_shape, num_keypoints,
            image_feature_dim, share_rgb_encoder, resnet_width, resnet_stages; see :class:`ObservationEncoder`).
    """

    def __init__(self, shape_meta: Mapping, normalizer: Normalizer, horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8,
                 down_dims: Sequence[int] = (256, 512, 1024), kernel_size: int = 5, n_groups: int = 8,
                 step_embed_dim: int = 256, conv_impl: str = "matmul",
                 num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 prediction_type: str = "epsilon", clip_sample: bool = True,
                 inference_scheduler: str = "ddpm", num_inference_steps: int | None = None,
                 fast_sampling: bool = True,
                 **encoder_options):
        super().__init__(shape_meta, normalizer, horizon, n_obs_steps, n_action_steps)
        self.obs_encoder = ObservationEncoder(self.shape_meta["obs"], n_obs_steps, **encoder_options)
        self.model = ConditionalUnet1D(self.action_dim, self.obs_encoder.output_dim, down_dims=down_dims,
                                       kernel_size=kernel_size, n_groups=n_groups,
                                       step_embed_dim=step_embed_dim, conv_impl=conv_impl)
        if self.horizon % self.model.time_reduction:
            raise ValueError(f"horizon {self.horizon} must be divisible by {self.model.time_reduction} "
                             f"for a UNet with {len(self.model.down_dims)} levels "
                             f"(down_dims={list(down_dims)})")
        with torch.device("cpu"):  # schedule tables are CPU numbers, also when the nets are built elsewhere
            self.noise_scheduler = make_training_scheduler(num_train_timesteps, beta_schedule, prediction_type,
                                                           clip_sample)
        self.fast_sampling = bool(fast_sampling)
        self.inference_scheduler_name = inference_scheduler
        self._sampler: ReverseDiffusion | None = None
        self.set_inference(inference_scheduler, num_inference_steps or num_train_timesteps)

    # ------------------------------------------------------------------ sampling setup
    def set_inference(self, scheduler: str | None = None, steps: int | None = None,
                      fast: bool | None = None) -> None:
        """Choose the sampling scheduler (e.g. "ddpm", "ddim"), its number of steps and the fast path.

        Arguments left out keep their current value. The weights do not change: DDPM and DDIM
        sample from the same trained model.
        """
        name = scheduler if scheduler is not None else self.inference_scheduler_name
        n_steps = int(steps) if steps is not None else self._sampler.num_steps
        if fast is not None:
            self.fast_sampling = bool(fast)
        with torch.device("cpu"):
            self._sampler = ReverseDiffusion(make_inference_scheduler(name, self.noise_scheduler), n_steps,
                                             fast=self.fast_sampling)
        self.inference_scheduler_name = name

    @property
    def num_inference_steps(self) -> int:
        return self._sampler.num_steps

    @property
    def sampler(self) -> ReverseDiffusion:
        """The reverse-diffusion loop that :meth:`sample_actions` runs (see :meth:`set_inference`)."""
        return self._sampler

    # ------------------------------------------------------------------ training
    def loss(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising MSE: noise the demonstrated sequence at a random DDPM step and predict the
        schedule's target (noise, sample or velocity) from it."""
        global_cond = self.obs_encoder(nobs, generator=generator)
        n = naction.shape[0]
        noise = torch.randn(naction.shape, generator=generator, device=naction.device, dtype=naction.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,),
                                  generator=generator).to(naction.device)
        noisy, target = training_target(self.noise_scheduler, naction, noise, timesteps)
        pred = self.model(noisy, timesteps, global_cond)
        return F.mse_loss(pred.float(), target)

    # ------------------------------------------------------------------ inference
    def sample_actions(self, nobs: dict[str, torch.Tensor], generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """Normalized action sequence (B, horizon, D) from normalized observations (B, To, ...).

        The observations are encoded once; the FiLM parameters of every denoising step are
        precomputed, so each step runs only the UNet's convolutions and the scheduler update.
        """
        sampler = self._sampler
        with torch.inference_mode():
            global_cond = self.obs_encoder(nobs)
            batch = global_cond.shape[0]
            step_part, obs_part = self.model.film_parts(sampler.timesteps.to(self.device), global_cond)

            def denoise(x: torch.Tensor, k: int) -> torch.Tensor:
                return self.model.denoise(x, obs_part + step_part[k])

            x = torch.randn((batch, self.horizon, self.action_dim), generator=generator, device=self.device,
                            dtype=global_cond.dtype)
            x = sampler(denoise, x, generator)
        return x.clone()  # a normal tensor again (not an inference tensor)
