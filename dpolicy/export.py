"""`dpolicy export CHECKPOINT --out DIR`: the diffusion policy as TorchScript, for non-Python stacks.

The export is one TorchScript archive, ``policy_torchscript.pt`` (load it with ``torch.jit.load``
in Python or ``torch::jit::load`` in C++/libtorch), holding the observation encoder, the
denoising UNet, the normalizer and the sampler's tables. Export on the device it will run on
(``--device cuda``): the image encoder's traced code creates tensors on that device.

Its methods (observations are a list of tensors in the order of ``export.json``'s ``obs_keys``,
each ``(B, To, *shape)`` in env units: float32 low-dim vectors, uint8 HWC images):

- ``forward(obs) -> (action (B, Ta, D), action_pred (B, Tp, D))``: a whole chunk, noise drawn
  from torch's global generator (``torch.manual_seed`` makes it reproducible);
- ``sample_with_noise(obs, noise (B, Tp, D), step_noise (K, B, Tp, D)) -> action_pred``: the same,
  deterministic given the noise (used by the parity check);
- ``encode(obs) -> cond (B, F)`` and ``denoise(x, film) -> out``: the two networks, for writing the
  loop yourself. ``step_film`` (K, F) and ``coefficients`` (K, 6) are attributes of the module.

The sampling loop (DDPM or DDIM, K steps, ``p, q, c0, c1, c2, sigma = coefficients[k]``)::

    cond = encode(obs)                      # normalizes the observations, encodes them (B, F)
    x = noise                               # (B, Tp, D) standard normal
    for k in range(K):
        out = denoise(x, cond + step_film[k])
        x0 = p * x + q * out                # the predicted clean sequence
        if clip_sample: x0 = clamp(x0, -clip_range, clip_range)
        x = c0 * x0 + c1 * x + c2 * out + sigma * step_noise[k]
    action_pred = (x - action_offset) / action_scale      # back to env units
    action = action_pred[:, To - 1 : To - 1 + Ta]         # the chunk to execute

ONNX is not produced: torch's ONNX exporter needs the ``onnx`` package, which the package does
not depend on. The command checks the archive against the eager policy on random observations
(max abs difference of the chunk, same noise) and prints the chunk latency of both.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ARCHIVE_NAME = "policy_torchscript.pt"
METADATA_NAME = "export.json"
EXPORT_FORMAT = "dpolicy-torchscript-v1"
#: Largest max-abs difference to the eager policy accepted by the export check (env units).
PARITY_TOLERANCE = 1e-4


class _ObservationEncoder(nn.Module):
    """Observations in env units (list, spec order) -> the observation part of the UNet's FiLM (B, F)."""

    def __init__(self, policy):
        super().__init__()
        self.keys = policy.obs_keys()
        self.normalizer = policy.normalizer
        self.obs_encoder = policy.obs_encoder
        self.unet = policy.model

    def forward(self, obs: list[torch.Tensor]) -> torch.Tensor:
        nobs = {key: self.normalizer.normalize(key, x) for key, x in zip(self.keys, obs, strict=True)}
        cond = self.obs_encoder(nobs)
        steps = cond.new_zeros(1, dtype=torch.long)  # traced without a fixed device
        return self.unet.film_parts(steps, cond)[1]


class _Denoiser(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.unet.denoise(x, film)


class ExportedSampler(nn.Module):
    """The TorchScript-able sampler around traced encoder and denoiser (see the module docstring)."""

    def __init__(self, encoder: torch.jit.ScriptModule, denoiser: torch.jit.ScriptModule,
                 step_film: torch.Tensor, coefficients: list[list[float]], clip_range: float,
                 action_scale: torch.Tensor, action_offset: torch.Tensor, n_obs_steps: int,
                 n_action_steps: int, horizon: int, action_dim: int):
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser
        self.register_buffer("step_film", step_film.clone())
        self.register_buffer("action_scale", action_scale.clone())
        self.register_buffer("action_offset", action_offset.clone())
        self.coefficients = [[float(v) for v in row] for row in coefficients]  # inferred List[List[float]]
        self.clip_range = float(clip_range)  # <= 0: no clipping
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)

    @torch.jit.export
    def encode(self, obs: list[torch.Tensor]) -> torch.Tensor:
        return self.encoder(obs)

    @torch.jit.export
    def denoise(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, film)

    @torch.jit.export
    def sample_with_noise(self, obs: list[torch.Tensor], noise: torch.Tensor,
                          step_noise: torch.Tensor) -> torch.Tensor:
        # The update is written with the same operations, in the same order and with the same
        # double-precision coefficients as the eager fast sampler (ReverseDiffusion), so that
        # both give the same floats.
        cond = self.encoder(obs)
        x = noise
        clip = self.clip_range
        for k in range(len(self.coefficients)):
            c = self.coefficients[k]
            p, q, c0, c1, c2, sigma = c[0], c[1], c[2], c[3], c[4], c[5]
            out = self.denoiser(x, cond + self.step_film[k])
            if clip > 0:
                x0 = (x * p).add_(out, alpha=q).clamp_(-clip, clip)
                nxt = x0.mul_(c0).add_(x, alpha=c1)
                if c2 != 0.0:
                    nxt.add_(out, alpha=c2)
            else:
                nxt = x * (c0 * p + c1)
                nxt.add_(out, alpha=c0 * q + c2)
            if sigma != 0.0:
                nxt.add_(step_noise[k], alpha=sigma)
            x = nxt
        return (x - self.action_offset) / self.action_scale

    def forward(self, obs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = obs[0].shape[0]
        shape = [batch, self.horizon, self.action_dim]
        noise = torch.randn(shape, device=self.step_film.device)
        step_noise = torch.randn([len(self.coefficients)] + shape, device=self.step_film.device)
        action_pred = self.sample_with_noise(obs, noise, step_noise)
        start = self.n_obs_steps - 1
        return action_pred[:, start:start + self.n_action_steps], action_pred


# ---------------------------------------------------------------------------------------- building
def example_observations(policy, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Random observations in env units (spec order), spread over each key's fitted data range."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for key, item in policy.shape_meta["obs"].items():
        shape = (batch, policy.n_obs_steps, *[int(s) for s in item["shape"]])
        if item.get("type", "low_dim") == "rgb":
            out.append(torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
        else:
            lo, hi = policy.normalizer.input_range(key)
            lo, hi = lo.detach().cpu().float(), hi.detach().cpu().float()
            out.append(lo + (hi - lo) * torch.rand(shape, generator=gen))
    return [x.to(policy.device) for x in out]


def _sampler_tables(policy) -> tuple[torch.Tensor, list[list[float]], float]:
    sampler = policy.sampler
    if not getattr(sampler, "is_fast", False):
        raise ValueError(f"export supports the DDPM (fixed_small) and DDIM samplers; this policy samples "
                         f"with {policy.inference_scheduler_name!r}: call policy.set_inference('ddim', "
                         "steps) or pass --scheduler ddim")
    coefficients = [list(row) for row in sampler.coefficients]
    clip = sampler.clip_range if sampler.clip_range is not None else 0.0
    with torch.no_grad():
        dummy = torch.zeros(1, policy.obs_encoder.output_dim, device=policy.device)
        step_film = policy.model.film_parts(sampler.timesteps.to(policy.device), dummy)[0]
    return step_film.float(), coefficients, float(clip)


def export_policy(policy) -> torch.jit.ScriptModule:
    """TorchScript module of a :class:`~dpolicy.policies.diffusion.DiffusionPolicy` (eval mode)."""
    from dpolicy.policies.diffusion import DiffusionPolicy

    if not isinstance(policy, DiffusionPolicy):
        raise TypeError(f"export supports DiffusionPolicy checkpoints, got {type(policy).__name__}")
    policy.eval()
    step_film, coefficients, clip = _sampler_tables(policy)
    obs = example_observations(policy, batch=2)
    noise = torch.zeros(2, policy.horizon, policy.action_dim, device=policy.device)
    with torch.no_grad(), warnings.catch_warnings():
        # The traced code checks fixed sizes (time steps, action dim, image size) with Python ifs;
        # the tracer warns that they become constants, which is what they are.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        encoder = torch.jit.trace(_ObservationEncoder(policy), (obs,), check_trace=False)
        film = encoder(obs)
        denoiser = torch.jit.trace(_Denoiser(policy.model), (noise, film), check_trace=False)
    action_map = policy.normalizer.maps["action"]
    sampler = ExportedSampler(encoder, denoiser, step_film, coefficients, clip, action_map.scale.detach(),
                              action_map.offset.detach(), policy.n_obs_steps, policy.n_action_steps,
                              policy.horizon, policy.action_dim)
    return torch.jit.script(sampler.eval())


def noise_like_policy(policy, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, step_noise) drawn in the order the eager sampler draws them from ``generator``."""
    shape = (batch, policy.horizon, policy.action_dim)
    noise = torch.randn(shape, generator=generator, device=policy.device)
    coefficients = policy.sampler.coefficients
    step_noise = torch.zeros((len(coefficients), *shape), device=policy.device)
    for k, row in enumerate(coefficients):
        if row[5]:  # sigma: the eager loop draws noise only for these steps
            step_noise[k] = torch.randn(shape, generator=generator, device=policy.device)
    return noise, step_noise


def parity(policy, module, batch: int = 4, seed: int = 0) -> float:
    """Max abs difference (env units) of the exported and the eager plan, same observations and noise."""
    obs = example_observations(policy, batch=batch, seed=seed)
    noise, step_noise = noise_like_policy(policy, batch, torch.Generator(policy.device).manual_seed(seed))
    with torch.no_grad():
        eager = policy.predict_action(dict(zip(policy.obs_keys(), obs, strict=True)),
                                      generator=torch.Generator(policy.device).manual_seed(seed))["action_pred"]
        exported = module.sample_with_noise(obs, noise, step_noise)
    return float((eager - exported).abs().max())


def chunk_latency_ms(fn, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """(p50, p99) wall-clock milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def write_export(policy, out_dir: Path, metadata: dict | None = None) -> tuple[Path, dict]:
    """Write the archive, ``export.json`` and ``README.md`` to ``out_dir``; returns (archive, metadata)."""
    import dpolicy

    module = export_policy(policy)
    clip = float(module.clip_range)
    info = {
        "format": EXPORT_FORMAT, "package_version": dpolicy.__version__, "archive": ARCHIVE_NAME,
        "obs_keys": policy.obs_keys(),
        "obs": {key: {"shape": [int(s) for s in item["shape"]], "type": item.get("type", "low_dim"),
                      "dtype": "uint8" if item.get("type") == "rgb" else "float32"}
                for key, item in policy.shape_meta["obs"].items()},
        "n_obs_steps": policy.n_obs_steps, "n_action_steps": policy.n_action_steps,
        "horizon": policy.horizon, "action_dim": policy.action_dim,
        "scheduler": policy.inference_scheduler_name, "num_inference_steps": policy.num_inference_steps,
        "timesteps": [int(t) for t in policy.sampler.timesteps],
        "coefficients_columns": ["p", "q", "c0", "c1", "c2", "sigma"],
        "coefficients": [list(row) for row in module.coefficients],
        "clip_sample": clip > 0, "clip_range": clip,
        "film_dim": int(module.step_film.shape[1]),
        **dict(metadata or {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / ARCHIVE_NAME
    module.save(str(archive), _extra_files={METADATA_NAME: json.dumps(info)})
    (out_dir / METADATA_NAME).write_text(json.dumps(info, indent=2) + "\n")
    title = f"# TorchScript export of {info.get('checkpoint', 'a dpolicy policy')}\n\n"
    (out_dir / "README.md").write_text(title + __doc__.split("\n", 2)[2])  # how to call it, the sampling loop
    return archive, info
