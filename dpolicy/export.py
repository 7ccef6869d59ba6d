"""`dpolicy export CHECKPOINT --out DIR [--format torchscript|onnx]`: the diffusion policy for non-Python stacks.

Both formats hold the observation encoder (with the normalizer), the denoising UNet and the
sampler's tables. Observations are a list of arrays in the order of ``export.json``'s
``obs_keys``, each ``(B, To, *shape)`` in env units: float32 low-dim vectors, uint8 HWC images.
The batch size B is free.

TorchScript (``--format torchscript``, the default)
---------------------------------------------------

One archive, ``policy_torchscript.pt`` (load it with ``torch.jit.load`` in Python or
``torch::jit::load`` in C++/libtorch). Export on the device it will run on (``--device cuda``):
the image encoder's traced code creates tensors on that device. Its methods:

- ``forward(obs) -> (action (B, Ta, D), action_pred (B, Tp, D))``: a whole chunk, noise drawn
  from torch's global generator (``torch.manual_seed`` makes it reproducible);
- ``sample_with_noise(obs, noise (B, Tp, D), step_noise (K, B, Tp, D)) -> action_pred``: the same,
  deterministic given the noise (used by the parity check);
- ``encode(obs) -> cond (B, F)`` and ``denoise(x, film) -> out``: the two networks, for writing the
  loop yourself. ``step_film`` (K, F) and ``coefficients`` (K, 6) are attributes of the module.

ONNX (``--format onnx``)
------------------------

Two graphs (exported on the CPU) and the tables in JSON, for onnxruntime or another ONNX
runtime:

- ``encoder.onnx``: one input per observation key, named after the key -> ``film`` (B, F), the
  ``encode`` below;
- ``denoiser.onnx``: inputs ``x`` (B, Tp, D) and ``film`` (B, F) -> ``out`` (B, Tp, D), the
  ``denoise`` below;
- ``export.json``: ``step_film`` (K lists of F numbers), ``coefficients`` (K rows of
  ``coefficients_columns``), ``clip_range``, ``action_scale`` and ``action_offset`` (D numbers
  each), the sizes and the observation specs.

In Python, ``dpolicy.onnx_runtime.OnnxPolicy(DIR)`` runs the loop with numpy and onnxruntime
only (no torch): ``predict(obs) -> (action, action_pred)``, ``sample_with_noise(obs, noise,
step_noise)``.

The sampling loop
-----------------

DDPM or DDIM, K steps, ``p, q, c0, c1, c2, sigma = coefficients[k]``::

    cond = encode(obs)                      # normalizes the observations, encodes them (B, F)
    x = noise                               # (B, Tp, D) standard normal
    for k in range(K):
        out = denoise(x, cond + step_film[k])
        x0 = p * x + q * out                # the predicted clean sequence
        if clip_sample: x0 = clamp(x0, -clip_range, clip_range)
        x = c0 * x0 + c1 * x + c2 * out + sigma * step_noise[k]
    action_pred = (x - action_offset) / action_scale      # back to env units
    action = action_pred[:, To - 1 : To - 1 + Ta]         # the chunk to execute

Checks
------

The command loads what it wrote and compares it with the eager policy on random observations,
same observations and same noise: the max abs difference of ``action_pred`` must stay under
``PARITY_TOLERANCE`` (env units) for TorchScript, under ``ONNX_PARITY_TOLERANCE`` (normalized
action units: onnxruntime's kernels round differently from torch's) for ONNX; else it exits 1.
It prints the chunk latency at batch 1 of the eager policy and of the export.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpolicy.errors import UserError
from dpolicy.onnx_runtime import (
    DENOISER_NAME,
    ENCODER_NAME,
    INSTALL_HINT,
    METADATA_NAME,
    ONNX_FORMAT,
    MissingOnnxError,
)

ARCHIVE_NAME = "policy_torchscript.pt"
EXPORT_FORMAT = "dpolicy-torchscript-v1"
FORMATS = ("torchscript", "onnx")
#: Largest max-abs difference of the TorchScript plan to the eager one (env units): both run torch's
#: kernels, so they agree to a few float32 roundings.
PARITY_TOLERANCE = 1e-4
#: The same for ONNX, in normalized action units (the fitted action range spans [-1, 1]):
#: onnxruntime's kernels round differently from torch's, a few float32 ulps per network call that
#: the K steps carry on, so the gap is a fraction of the action range, not a fixed env-unit size.
ONNX_PARITY_TOLERANCE = 1e-4


class ExportError(UserError, ValueError):
    """A policy, sampler or setting that the export cannot express."""


class NotExportableError(ExportError, TypeError):
    """A policy of another class than DiffusionPolicy."""


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
        raise ExportError(f"export supports the DDPM (fixed_small) and DDIM samplers; this policy samples "
                          f"with {policy.inference_scheduler_name!r}: call policy.set_inference('ddim', "
                          "steps) or pass --scheduler ddim")
    coefficients = [list(row) for row in sampler.coefficients]
    clip = sampler.clip_range if sampler.clip_range is not None else 0.0
    with torch.no_grad():
        dummy = torch.zeros(1, policy.obs_encoder.output_dim, device=policy.device)
        step_film = policy.model.film_parts(sampler.timesteps.to(policy.device), dummy)[0]
    return step_film.float(), coefficients, float(clip)


def _check_exportable(policy) -> None:
    from dpolicy.policies.diffusion import DiffusionPolicy

    if not isinstance(policy, DiffusionPolicy):
        raise NotExportableError(f"export supports diffusion policies only, got {type(policy).__name__} "
                                 "(expected a DiffusionPolicy checkpoint)")


def export_policy(policy) -> torch.jit.ScriptModule:
    """TorchScript module of a :class:`~dpolicy.policies.diffusion.DiffusionPolicy` (eval mode)."""
    _check_exportable(policy)
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


def plan_differences(policy, exported, batch: int = 4, seed: int = 0) -> tuple[float, float]:
    """Max abs difference of the exported and the eager plan, same observations and noise, in env
    units and in normalized action units.

    ``exported`` is a TorchScript module (torch tensors in and out) or an
    :class:`~dpolicy.onnx_runtime.OnnxPolicy` (numpy arrays in and out).
    """
    obs = example_observations(policy, batch=batch, seed=seed)
    noise, step_noise = noise_like_policy(policy, batch, torch.Generator(policy.device).manual_seed(seed))
    with torch.no_grad():
        eager = policy.predict_action(dict(zip(policy.obs_keys(), obs, strict=True)),
                                      generator=torch.Generator(policy.device).manual_seed(seed))["action_pred"]
        if isinstance(exported, nn.Module):
            plan = exported.sample_with_noise(obs, noise, step_noise)
        else:
            plan = torch.from_numpy(exported.sample_with_noise(
                [x.cpu().numpy() for x in obs], noise.cpu().numpy(), step_noise.cpu().numpy())).to(eager.device)
        diff = (eager - plan).abs()
        scale = policy.normalizer.maps["action"].scale.detach().abs()
    return float(diff.max()), float((diff * scale).max())


def parity(policy, exported, batch: int = 4, seed: int = 0) -> float:
    """Max abs difference (env units) of the exported and the eager plan (see :func:`plan_differences`)."""
    return plan_differences(policy, exported, batch, seed)[0]


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


def _metadata(policy, coefficients: list[list[float]], clip: float, film_dim: int) -> dict:
    """The fields both formats share: the observations, the sizes and the sampler."""
    import dpolicy

    return {
        "package_version": dpolicy.__version__,
        "obs_keys": policy.obs_keys(),
        "obs": {key: {"shape": [int(s) for s in item["shape"]], "type": item.get("type", "low_dim"),
                      "dtype": "uint8" if item.get("type") == "rgb" else "float32"}
                for key, item in policy.shape_meta["obs"].items()},
        "n_obs_steps": policy.n_obs_steps, "n_action_steps": policy.n_action_steps,
        "horizon": policy.horizon, "action_dim": policy.action_dim,
        "scheduler": policy.inference_scheduler_name, "num_inference_steps": policy.num_inference_steps,
        "timesteps": [int(t) for t in policy.sampler.timesteps],
        "coefficients_columns": ["p", "q", "c0", "c1", "c2", "sigma"],
        "coefficients": [list(row) for row in coefficients],
        "clip_sample": clip > 0, "clip_range": clip,
        "film_dim": int(film_dim),
    }


_SECTION = re.compile(r"^(.+)\n-{3,}\n", re.MULTILINE)


def readme_text(fmt: str, title: str) -> str:
    """README of an export folder: the module docstring without the other format's section."""
    body = __doc__.split("\n", 2)[2]  # one place for the sampling loop and how to call the export
    parts = _SECTION.split(body)  # [introduction, title, text, title, text, ...]
    other = "ONNX" if fmt == "torchscript" else "TorchScript"
    sections = zip(parts[1::2], parts[2::2], strict=True)
    keep = [parts[0]] + [f"{head}\n{'-' * len(head)}\n{text}" for head, text in sections
                         if not head.startswith(other)]
    return f"# {title}\n\n" + "".join(keep)


def write_export(policy, out_dir: Path, metadata: dict | None = None) -> tuple[Path, dict]:
    """Write the archive, ``export.json`` and ``README.md`` to ``out_dir``; returns (archive, metadata)."""
    module = export_policy(policy)
    clip = float(module.clip_range)
    shared = _metadata(policy, module.coefficients, clip, int(module.step_film.shape[1]))
    info = {"format": EXPORT_FORMAT, "package_version": shared.pop("package_version"), "archive": ARCHIVE_NAME,
            **shared, **dict(metadata or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / ARCHIVE_NAME
    module.save(str(archive), _extra_files={METADATA_NAME: json.dumps(info)})
    (out_dir / METADATA_NAME).write_text(json.dumps(info, indent=2) + "\n")
    title = f"TorchScript export of {info.get('checkpoint', 'a dpolicy policy')}"
    (out_dir / "README.md").write_text(readme_text("torchscript", title))
    return archive, info


# -------------------------------------------------------------------------------------------- ONNX
def require_onnx(runtime: bool = True) -> None:
    """:class:`~dpolicy.onnx_runtime.MissingOnnxError` unless the ONNX exporter (and onnxruntime) import."""
    names = ["onnx", "onnxscript"] + (["onnxruntime"] if runtime else [])
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingOnnxError(f"the ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


class _OnnxEncoder(nn.Module):
    """The observation encoder with one positional input per key: one named graph input each."""

    def __init__(self, policy):
        super().__init__()
        self.encoder = _ObservationEncoder(policy)

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(list(obs))


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Silence the exporter's progress lines and its notes about optional packages (torchvision)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(policy, out_dir: Path) -> tuple[Path, Path]:
    """Write ``encoder.onnx`` and ``denoiser.onnx`` (dynamic batch) of a CPU policy; returns their paths."""
    _check_exportable(policy)
    require_onnx(runtime=False)
    if policy.device.type != "cpu":
        raise ExportError(f"the ONNX export is made on the CPU (the graphs do not depend on the device), got a "
                          f"policy on {policy.device}: load it with device='cpu'")
    policy.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    obs = example_observations(policy, batch=2)  # batch 2: a batch of 1 would be taken for a constant
    encoder = _OnnxEncoder(policy).eval()
    with torch.no_grad():
        film = encoder(*obs)
    x = torch.zeros(2, policy.horizon, policy.action_dim)
    batch = torch.export.Dim("batch")
    paths = out_dir / ENCODER_NAME, out_dir / DENOISER_NAME
    options = {"dynamo": True, "external_data": False, "verbose": False}
    with torch.no_grad(), _quiet_onnx_exporter():
        torch.onnx.export(encoder, tuple(obs), paths[0], input_names=policy.obs_keys(), output_names=["film"],
                          dynamic_shapes=(tuple({0: batch} for _ in obs),), **options)
        torch.onnx.export(_Denoiser(policy.model).eval(), (x, film), paths[1], input_names=["x", "film"],
                          output_names=["out"], dynamic_shapes=({0: batch}, {0: batch}), **options)
    return paths


def onnx_metadata(policy, metadata: dict | None = None) -> dict:
    """``export.json`` of an ONNX export: the shared fields, the step FiLM table and the action map."""
    _check_exportable(policy)
    step_film, coefficients, clip = _sampler_tables(policy)
    action_map = policy.normalizer.maps["action"]
    return {"format": ONNX_FORMAT, "encoder": ENCODER_NAME, "denoiser": DENOISER_NAME,
            "encoder_inputs": policy.obs_keys(), "encoder_outputs": ["film"],
            "denoiser_inputs": ["x", "film"], "denoiser_outputs": ["out"],
            **_metadata(policy, coefficients, clip, int(step_film.shape[1])),
            "step_film": step_film.detach().cpu().tolist(),
            "action_scale": action_map.scale.detach().cpu().float().reshape(-1).tolist(),
            "action_offset": action_map.offset.detach().cpu().float().reshape(-1).tolist(),
            **dict(metadata or {})}


def write_onnx_metadata(out_dir: Path, info: dict) -> Path:
    """``export.json`` with one line per field (``step_film`` alone is K x F numbers)."""
    path = out_dir / METADATA_NAME
    path.write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in info.items()) + "\n}\n")
    return path


def write_onnx_export(policy, out_dir: Path, metadata: dict | None = None) -> dict:
    """Write ``encoder.onnx``, ``denoiser.onnx``, ``export.json`` and ``README.md``; returns the metadata."""
    info = onnx_metadata(policy, metadata)  # first: refuses samplers it cannot express before exporting
    export_onnx(policy, out_dir)
    write_onnx_metadata(out_dir, info)
    title = f"ONNX export of {info.get('checkpoint', 'a dpolicy policy')}"
    (out_dir / "README.md").write_text(readme_text("onnx", title))
    return info
