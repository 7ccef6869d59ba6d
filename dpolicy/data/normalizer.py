"""Per-key normalisation that travels inside a policy's state dict.

Low-dim keys are min-max scaled to [-1, 1] per dimension (a constant dimension is only
shifted to 0); image keys map 0..255 to [-1, 1]. Parameters are torch buffers, so saving a
policy saves its normalizer and loading needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

#: A dimension whose range is below this is treated as constant.
CONSTANT_RANGE_EPS = 1e-4


class _Affine(nn.Module):
    """y = x * scale + offset, elementwise over the trailing dimensions."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("offset", torch.zeros(shape))
        self.register_buffer("input_min", torch.zeros(shape))
        self.register_buffer("input_max", torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.scale.dtype) * self.scale + self.offset

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y.to(self.scale.dtype) - self.offset) / self.scale


class Normalizer(nn.Module):
    """A set of named affine maps, one per observation/action key.

    Build an empty one with :meth:`from_spec` (shapes only, identity maps, e.g. before loading a
    checkpoint) or fit one with :meth:`fit` on training data.
    """

    def __init__(self):
        super().__init__()
        self.maps = nn.ModuleDict()
        self.kinds: dict[str, str] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: Mapping[str, Mapping]) -> Normalizer:
        """Identity normalizer for ``{key: {"shape": [...], "type": "low_dim"|"rgb"}}``."""
        norm = cls()
        for key, item in spec.items():
            kind = item.get("type", "low_dim")
            norm.kinds[key] = kind
            if kind == "rgb":
                norm.maps[key] = _image_affine()
            else:
                norm.maps[key] = _Affine(tuple(int(s) for s in item["shape"]))
        return norm

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray | torch.Tensor],
            image_keys: tuple[str, ...] = ()) -> Normalizer:
        """Min-max fit: ``data[key]`` has shape (N, *feature_shape); image keys are not fitted."""
        norm = cls()
        for key, values in data.items():
            if key in image_keys:
                norm.kinds[key] = "rgb"
                norm.maps[key] = _image_affine()
                continue
            x = torch.as_tensor(np.asarray(values), dtype=torch.float32)
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(f"Normalizer.fit: key {key!r} needs shape (N, ...) with N > 0, "
                                 f"got {tuple(x.shape)}")
            if not torch.isfinite(x).all():
                raise ValueError(f"Normalizer.fit: key {key!r} contains NaN or inf")
            lo, hi = x.min(dim=0).values, x.max(dim=0).values
            rng = hi - lo
            constant = rng < CONSTANT_RANGE_EPS
            scale = torch.where(constant, torch.ones_like(rng), 2.0 / rng.clamp_min(CONSTANT_RANGE_EPS))
            offset = torch.where(constant, -lo, -1.0 - lo * scale)
            affine = _Affine(tuple(x.shape[1:]))
            affine.scale.copy_(scale)
            affine.offset.copy_(offset)
            affine.input_min.copy_(lo)
            affine.input_max.copy_(hi)
            norm.kinds[key] = "low_dim"
            norm.maps[key] = affine
        return norm

    # ------------------------------------------------------------------ use
    def __contains__(self, key: str) -> bool:
        return key in self.maps

    def _map(self, key: str) -> _Affine:
        if key not in self.maps:
            raise KeyError(f"normalizer has no key {key!r}; it has {list(self.maps)}")
        return self.maps[key]

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Data units -> [-1, 1] (images: 0..255 -> [-1, 1])."""
        return self._map(key)(x)

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> data units; the inverse of :meth:`normalize`."""
        return self._map(key).inverse(y)

    def normalize_dict(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.normalize(k, v) for k, v in data.items()}

    def input_range(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max) of the fitted data for a low-dim key, in data units."""
        m = self._map(key)
        return m.input_min, m.input_max

    def get_extra_state(self):
        return {"kinds": dict(self.kinds)}

    def set_extra_state(self, state):
        self.kinds = dict(state["kinds"])


def _image_affine() -> _Affine:
    affine = _Affine((1,))
    affine.scale.fill_(2.0 / 255.0)
    affine.offset.fill_(-1.0)
    affine.input_min.fill_(0.0)
    affine.input_max.fill_(255.0)
    return affine
