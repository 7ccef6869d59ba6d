"""Noise schedules (diffusers) and the reverse-diffusion loop.

Training uses a :class:`diffusers.DDPMScheduler` with N steps. Sampling may use any scheduler
built from the same configuration (:data:`SCHEDULERS`) with any K <= N steps.

:class:`ReverseDiffusion` runs the loop. For DDPM ("fixed_small" variance) and DDIM (eta 0)
without thresholding it precomputes, per step, the scalar coefficients of the update

    x0 = clip(p * x + q * out),   x_prev = c0 * x0 + c1 * x + c2 * out + sigma * z

and skips diffusers' per-step bookkeeping (timestep look-ups, 0-d tensor arithmetic), which
costs about as much as a small denoiser at batch 1. The result equals diffusers' ``step`` to
float32 rounding, with the same random draws from the same generator; any other scheduler
runs through its own ``step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: Inference schedulers by name; each is built from the training scheduler's configuration.
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
}

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def make_training_scheduler(num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                            prediction_type: str = "epsilon", clip_sample: bool = True) -> DDPMScheduler:
    """The DDPM forward process the denoiser is trained on."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=clip_sample)


def make_inference_scheduler(name: str, training_scheduler: SchedulerMixin) -> SchedulerMixin:
    """Scheduler ``name`` (a key of :data:`SCHEDULERS`) sharing the training noise schedule.

    The training schedule's ``clip_sample`` (clip the predicted clean sample to +-range) carries
    over: DDPM and DDIM take it as is; DPM-Solver has no such option and gets its thresholding
    with ``sample_max_value`` = the range instead (for the default range 1 that is the same clip).
    Without it the first steps of a ``squaredcos_cap_v2`` schedule, where alpha_bar is ~0, blow the
    clean-sample estimate up and DPM-Solver returns garbage (measured: Push-T score 0.07 instead of
    0.98). Euler-ancestral has neither option and samples unclipped.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    cls, config = SCHEDULERS[name], training_scheduler.config
    overrides = {}
    accepted = inspect.signature(cls.__init__).parameters
    if config.get("clip_sample", False) and "clip_sample" not in accepted and "thresholding" in accepted:
        overrides = {"thresholding": True, "sample_max_value": float(config.get("clip_sample_range", 1.0))}
    return cls.from_config(config, **overrides)


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy input, regression target) for the scheduler's prediction type."""
    noisy = scheduler.add_noise(clean, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noisy, noise
    if kind == "sample":
        return noisy, clean
    return noisy, scheduler.get_velocity(clean, noise, timesteps)


class ReverseDiffusion:
    """Denoise from pure noise in ``num_steps`` steps of ``scheduler``.

    ``fast=True`` uses the precomputed update for DDPM/DDIM (see the module docstring);
    ``fast=False`` or another scheduler calls ``scheduler.step``.
    """

    def __init__(self, scheduler: SchedulerMixin, num_steps: int, fast: bool = True):
        n_train = scheduler.config.num_train_timesteps
        if not 1 <= num_steps <= n_train:
            raise ValueError(f"num_steps must be in [1, {n_train}] (the training steps), got {num_steps}")
        self.scheduler = scheduler
        self.num_steps = int(num_steps)
        scheduler.set_timesteps(self.num_steps)
        self.timesteps = scheduler.timesteps.clone()
        self.coefficients = _affine_coefficients(scheduler, self.timesteps) if fast else None
        config = scheduler.config
        clips = config.get("clip_sample", False)
        self.clip_range = float(config.get("clip_sample_range", 1.0)) if clips else None
        self._step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    @property
    def is_fast(self) -> bool:
        return self.coefficients is not None

    def __call__(self, denoise: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``denoise(x, k)`` returns the model output at ``self.timesteps[k]``; ``x`` is the initial noise."""
        if self.coefficients is None:
            return self._run_scheduler(denoise, x, generator)
        clip = self.clip_range
        for k, (p, q, c0, c1, c2, sigma) in enumerate(self.coefficients):
            out = denoise(x, k)
            if clip is None:
                # x0 is not clipped: fold it into the update.
                nxt = x * (c0 * p + c1)
                nxt.add_(out, alpha=c0 * q + c2)
            else:
                x0 = (x * p).add_(out, alpha=q).clamp_(-clip, clip)
                nxt = x0.mul_(c0).add_(x, alpha=c1)
                if c2:
                    nxt.add_(out, alpha=c2)
            if sigma:
                noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
                nxt.add_(noise, alpha=sigma)
            x = nxt
        return x

    def _run_scheduler(self, denoise, x, generator):
        scheduler = self.scheduler
        scheduler.set_timesteps(self.num_steps)  # multistep schedulers keep state between steps
        extra = {"generator": generator} if self._step_takes_generator else {}
        for k, t in enumerate(scheduler.timesteps):
            out = denoise(scheduler.scale_model_input(x, t), k)
            x = scheduler.step(out, t, x, **extra).prev_sample
        return x


def _affine_coefficients(scheduler: SchedulerMixin, timesteps: torch.Tensor
                         ) -> list[tuple[float, float, float, float, float, float]] | None:
    """Per-step (p, q, c0, c1, c2, sigma) of DDPM / DDIM updates, or None if the scheduler is not covered.

    Computed with the same float32 arithmetic as the schedulers' ``step``.
    """
    config = scheduler.config
    if config.get("thresholding", False):
        return None
    if isinstance(scheduler, DDPMScheduler):
        if config.variance_type != "fixed_small":
            return None
        kind = "ddpm"
    elif isinstance(scheduler, DDIMScheduler):
        kind = "ddim"
    else:
        return None
    prediction = config.prediction_type
    acp = scheduler.alphas_cumprod.to(torch.float32)
    one = torch.tensor(1.0)
    final = scheduler.final_alpha_cumprod if kind == "ddim" else one
    n_train, n_steps = config.num_train_timesteps, len(timesteps)
    coefficients = []
    for k, t in enumerate(int(t) for t in timesteps):
        if kind == "ddpm":
            prev = int(timesteps[k + 1]) if k + 1 < n_steps else -1
        else:
            prev = t - n_train // n_steps
        a_t = acp[t]
        a_prev = acp[prev] if prev >= 0 else final
        b_t, b_prev = 1 - a_t, 1 - a_prev
        # x0 = p * x + q * out
        if prediction == "epsilon":
            p, q = 1 / a_t ** 0.5, -(b_t ** 0.5) / a_t ** 0.5
        elif prediction == "sample":
            p, q = torch.tensor(0.0), one
        else:  # v_prediction
            p, q = a_t ** 0.5, -(b_t ** 0.5)
        if kind == "ddpm":
            alpha_t = a_t / a_prev
            beta_t = 1 - alpha_t
            c0 = a_prev ** 0.5 * beta_t / b_t
            c1 = alpha_t ** 0.5 * b_prev / b_t
            c2 = torch.tensor(0.0)
            sigma = torch.clamp(b_prev / b_t * beta_t, min=1e-20) ** 0.5 if t > 0 else torch.tensor(0.0)
        else:
            # eps = a * x + b * out (from the unclipped prediction);
            # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps
            if prediction == "epsilon":
                a, b = torch.tensor(0.0), one
            elif prediction == "sample":
                a, b = 1 / b_t ** 0.5, -(a_t ** 0.5) / b_t ** 0.5
            else:
                a, b = b_t ** 0.5, a_t ** 0.5
            c0 = a_prev ** 0.5
            c1, c2 = b_prev ** 0.5 * a, b_prev ** 0.5 * b
            sigma = torch.tensor(0.0)
        coefficients.append(tuple(float(v) for v in (p, q, c0, c1, c2, sigma)))
    return coefficients
