"""Run a ``dpolicy export --format onnx`` folder with onnxruntime and numpy only (no torch).

This module imports neither torch nor the rest of the package's models, so a robot computer needs
only ``numpy`` and ``onnxruntime`` (copy this file, or install the package with ``[onnx]``)::

    from dpolicy.onnx_runtime import OnnxPolicy

    policy = OnnxPolicy("runs/pusht_lowdim/export_onnx", intra_op_num_threads=1, seed=0)
    obs = [history]                           # one array per key of policy.obs_keys, (B, To, *shape)
    action, action_pred = policy.predict(obs) # (B, Ta, D) to execute, (B, Tp, D) the whole plan

:meth:`OnnxPolicy.sample_with_noise` runs the sampling loop of ``dpolicy/export.py`` (also in the
folder's README) in float32 with the given noise, which makes it reproducible and comparable with
the eager policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

try:  # the package's error classes, so that the CLI prints one line; plain ones for a copied file
    from dpolicy.errors import UserError
except ImportError:  # pragma: no cover - only when this file is used on its own
    class UserError(Exception):  # type: ignore[no-redef]
        exit_code = 1

ONNX_FORMAT = "dpolicy-onnx-v1"
ENCODER_NAME = "encoder.onnx"
DENOISER_NAME = "denoiser.onnx"
METADATA_NAME = "export.json"
INSTALL_HINT = 'pip install "dpolicy[onnx]"'


class MissingOnnxError(UserError, ImportError):
    """onnx, onnxscript or onnxruntime is not installed."""


class OnnxFolderError(UserError, ValueError):
    """A folder that does not hold a ``dpolicy-onnx-v1`` export."""


def import_onnxruntime():
    """The ``onnxruntime`` module, or :class:`MissingOnnxError` with the install command."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingOnnxError(f"running an ONNX export needs onnxruntime: {INSTALL_HINT}") from exc
    return onnxruntime


def read_metadata(folder: str | Path) -> dict:
    """``export.json`` of an ONNX export folder, checked for the format."""
    path = Path(folder) / METADATA_NAME
    if not path.is_file():
        raise OnnxFolderError(f"{folder}: no {METADATA_NAME}; expected a folder written by "
                              "`dpolicy export CKPT --format onnx --out DIR`")
    info = json.loads(path.read_text())
    if info.get("format") != ONNX_FORMAT:
        raise OnnxFolderError(f"{path}: format {info.get('format')!r}, expected {ONNX_FORMAT!r}")
    return info


def _axpy(y: np.ndarray, alpha: float, x: np.ndarray) -> np.ndarray:
    """``y + alpha * x`` in float32 with one rounding, as torch's ``add(x, alpha=alpha)`` (a fused
    multiply-add): the float64 product of two float32 numbers is exact."""
    return (y.astype(np.float64) + x.astype(np.float64) * np.float64(np.float32(alpha))).astype(np.float32)


class OnnxPolicy:
    """The exported encoder and denoiser in onnxruntime sessions, and the sampler in numpy.

    Args:
        folder: the export folder (``encoder.onnx``, ``denoiser.onnx``, ``export.json``).
        intra_op_num_threads: onnxruntime's threads per operator (None: onnxruntime's choice).
        providers: onnxruntime execution providers, in order of preference.
        seed: seed of the generator that :meth:`predict` draws its noise from.
    """

    def __init__(self, folder: str | Path, intra_op_num_threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), seed: int | None = None):
        ort = import_onnxruntime()
        self.folder = Path(folder)
        self.info = info = read_metadata(self.folder)
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        options.inter_op_num_threads = 1  # the graphs are chains: one operator at a time
        options.log_severity_level = 3  # errors only
        sessions = []
        for name in (info["encoder"], info["denoiser"]):
            path = self.folder / name
            if not path.is_file():
                raise OnnxFolderError(f"{self.folder}: {name} is missing")
            sessions.append(ort.InferenceSession(str(path), options, providers=list(providers)))
        self.encoder, self.denoiser = sessions
        self.obs_keys: list[str] = list(info["obs_keys"])
        self.obs_spec: dict[str, dict] = info["obs"]
        self.n_obs_steps = int(info["n_obs_steps"])
        self.n_action_steps = int(info["n_action_steps"])
        self.horizon = int(info["horizon"])
        self.action_dim = int(info["action_dim"])
        self.coefficients = [tuple(float(v) for v in row) for row in info["coefficients"]]
        self.clip_range = float(info["clip_range"])  # <= 0: no clipping
        self.step_film = np.asarray(info["step_film"], dtype=np.float32)  # (K, F)
        self.action_scale = np.asarray(info["action_scale"], dtype=np.float32)
        self.action_offset = np.asarray(info["action_offset"], dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ the two networks
    def _inputs(self, obs: Sequence | Mapping) -> dict[str, np.ndarray]:
        if isinstance(obs, Mapping):
            missing = [key for key in self.obs_keys if key not in obs]
            if missing:
                raise ValueError(f"observation is missing keys {missing}; expected {self.obs_keys}")
            obs = [obs[key] for key in self.obs_keys]
        if len(obs) != len(self.obs_keys):
            raise ValueError(f"expected {len(self.obs_keys)} observation arrays ({self.obs_keys}), got {len(obs)}")
        feeds = {}
        for key, x in zip(self.obs_keys, obs, strict=True):
            spec = self.obs_spec[key]
            x = np.ascontiguousarray(x, dtype=spec["dtype"])
            expected = (self.n_obs_steps, *spec["shape"])
            if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
                raise ValueError(f"observation {key!r}: expected (B, {', '.join(map(str, expected))}), "
                                 f"got {tuple(x.shape)}")
            feeds[key] = x
        return feeds

    def encode(self, obs: Sequence | Mapping) -> np.ndarray:
        """Observations in env units -> the observation part of the FiLM conditioning (B, F)."""
        return self.encoder.run(None, self._inputs(obs))[0]

    def denoise(self, x: np.ndarray, film: np.ndarray) -> np.ndarray:
        """The UNet on ``x`` (B, Tp, D) with the FiLM conditioning ``film`` (B, F)."""
        return self.denoiser.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32),
                                        "film": np.ascontiguousarray(film, dtype=np.float32)})[0]

    # ------------------------------------------------------------------ the sampler
    def sample_with_noise(self, obs: Sequence | Mapping, noise: np.ndarray, step_noise: np.ndarray) -> np.ndarray:
        """``action_pred`` (B, Tp, D) in env units, given ``noise`` (B, Tp, D) and ``step_noise`` (K, B, Tp, D)."""
        cond = self.encode(obs)
        x = np.asarray(noise, dtype=np.float32)
        step_noise = np.asarray(step_noise, dtype=np.float32)
        clip = self.clip_range
        for k, (p, q, c0, c1, c2, sigma) in enumerate(self.coefficients):
            out = self.denoise(x, cond + self.step_film[k])
            # The eager sampler's update, operation by operation (unclipped, x0 folds into one
            # affine step), so that both give the same floats.
            if clip > 0:
                x0 = np.clip(_axpy(x * np.float32(p), q, out), -clip, clip)
                nxt = _axpy(x0 * np.float32(c0), c1, x)
                if c2 != 0.0:
                    nxt = _axpy(nxt, c2, out)
            else:
                nxt = _axpy(x * np.float32(c0 * p + c1), c0 * q + c2, out)
            if sigma != 0.0:
                nxt = _axpy(nxt, sigma, step_noise[k])
            x = nxt
        return (x - self.action_offset) / self.action_scale

    def noise(self, batch: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(noise, step_noise) of standard normal float32; step noise only where a step uses it."""
        rng = self.rng if rng is None else rng
        shape = (batch, self.horizon, self.action_dim)
        noise = rng.standard_normal(shape, dtype=np.float32)
        step_noise = np.zeros((len(self.coefficients), *shape), dtype=np.float32)
        for k, row in enumerate(self.coefficients):
            if row[5]:
                step_noise[k] = rng.standard_normal(shape, dtype=np.float32)
        return noise, step_noise

    def predict(self, obs: Sequence | Mapping, rng: np.random.Generator | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(action (B, Ta, D), action_pred (B, Tp, D))`` in env units; noise from ``rng`` or the seeded one."""
        feeds = self._inputs(obs)
        batch = next(iter(feeds.values())).shape[0]
        action_pred = self.sample_with_noise(feeds, *self.noise(batch, rng))
        start = self.n_obs_steps - 1
        return action_pred[:, start:start + self.n_action_steps], action_pred
