"""Observation encoder: normalized observation dict (B, To, ...) -> flat conditioning vector.

Low-dim keys are concatenated (optionally through an MLP); every image key goes through a
ResNet-18 keypoint encoder (one per key, or one shared by all keys) after a crop: random in
training mode, centered in evaluation mode. Per-frame features are concatenated in a fixed
order (image keys, then low-dim keys, each in spec order) and flattened over the To frames.

A key may use fewer than To frames (``"frames": k`` in its spec): only its last ``k`` frames are
encoded, so an expensive camera can condition on the newest image while the joint state keeps
its history. The windows the policy receives still hold To frames of every key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dpolicy.models.resnet import ResNetImageEncoder


def crop_images(images: torch.Tensor, crop_shape: tuple[int, int], random: bool,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop (N, C, H, W) images to (N, C, h, w): an independent random window per image, or the center."""
    n, _, height, width = images.shape
    ch, cw = crop_shape
    if (ch, cw) == (height, width):
        return images
    if not random:
        top, left = (height - ch) // 2, (width - cw) // 2
        return images[:, :, top:top + ch, left:left + cw]
    top = torch.randint(0, height - ch + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, width - cw + 1, (n,), generator=generator).to(images.device)
    rows = (top[:, None] + torch.arange(ch, device=images.device))[:, None, :, None]  # (N, 1, h, 1)
    cols = (left[:, None] + torch.arange(cw, device=images.device))[:, None, None, :]  # (N, 1, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channels, rows, cols]


class MLP(nn.Sequential):
    """Linear layers with Mish between them (none after the last)."""

    def __init__(self, in_dim: int, dims: Sequence[int]):
        layers: list[nn.Module] = []
        for i, d in enumerate(dims):
            layers.append(nn.Linear(in_dim if i == 0 else dims[i - 1], d))
            if i < len(dims) - 1:
                layers.append(nn.Mish())
        super().__init__(*layers)


class ObservationEncoder(nn.Module):
    """Encode ``{key: (B, To, *shape)}`` normalized observations into (B, To * frame_dim).

    Args:
        obs_spec: ``{key: {"shape": [...], "type": "low_dim"|"rgb", "frames": k}}``; rgb shapes are HWC;
            ``frames`` (optional, 1..To, default To): how many of the newest frames the key contributes.
        n_obs_steps: To, the number of frames that are flattened together.
        lowdim_mlp: layer sizes of an MLP applied to the concatenated low-dim keys (None: identity).
        crop_shape: (h, w) image crop, random in training and centered in eval; None for no crop.
        num_keypoints, image_feature_dim: spatial-softmax keypoints and the per-image feature size.
        share_rgb_encoder: one ResNet for every image key instead of one per key.
        resnet_width, resnet_stages: channels of the ResNet's first stage and how many of its 4 stages
            are kept (64 and 4: ResNet-18); smaller values suit small images and small CPUs.
    """

    def __init__(self, obs_spec: Mapping[str, Mapping], n_obs_steps: int,
                 lowdim_mlp: Sequence[int] | None = None, crop_shape: Sequence[int] | None = (84, 84),
                 num_keypoints: int = 32, image_feature_dim: int = 64, share_rgb_encoder: bool = False,
                 resnet_width: int = 64, resnet_stages: int = 4):
        super().__init__()
        self.n_obs_steps = int(n_obs_steps)
        self.rgb_keys, self.lowdim_keys = [], []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.frames: dict[str, int] = {}
        for key, item in obs_spec.items():
            kind = item.get("type", "low_dim")
            shape = tuple(int(s) for s in item["shape"])
            self.shapes[key] = shape
            frames = item.get("frames")
            self.frames[key] = self.n_obs_steps if frames is None else int(frames)
            if not 1 <= self.frames[key] <= self.n_obs_steps:
                raise ValueError(f"observation {key!r}: frames must be in 1..n_obs_steps ({self.n_obs_steps}), "
                                 f"got {frames}")
            if kind == "rgb":
                if len(shape) != 3 or shape[2] not in (1, 3):
                    raise ValueError(f"rgb observation {key!r} must have shape [H, W, 3] (HWC), "
                                     f"got {list(shape)}")
                self.rgb_keys.append(key)
            elif kind == "low_dim":
                if len(shape) != 1:
                    raise ValueError(f"low_dim observation {key!r} must have shape [D], got {list(shape)}")
                self.lowdim_keys.append(key)
            else:
                raise ValueError(f"observation {key!r}: unknown type {kind!r}, expected 'low_dim' or 'rgb'")
        if not self.shapes:
            raise ValueError("the observation spec names no keys")

        self.crop_shape = tuple(int(s) for s in crop_shape) if crop_shape is not None else None
        if self.crop_shape is not None:
            for key in self.rgb_keys:
                h, w, _ = self.shapes[key]
                if self.crop_shape[0] > h or self.crop_shape[1] > w:
                    raise ValueError(f"crop_shape {list(self.crop_shape)} is larger than image {key!r} "
                                     f"({h}x{w})")

        self.image_encoders = nn.ModuleDict()
        if self.rgb_keys:
            channels = {self.shapes[k][2] for k in self.rgb_keys}
            if share_rgb_encoder and len(channels) > 1:
                raise ValueError("share_rgb_encoder needs the same number of channels in every image key")
            names = ["shared"] if share_rgb_encoder else self.rgb_keys
            for name in names:
                in_ch = self.shapes[self.rgb_keys[0] if name == "shared" else name][2]
                self.image_encoders[name] = ResNetImageEncoder(num_keypoints, image_feature_dim, in_ch,
                                                               int(resnet_width), int(resnet_stages))
        self.share_rgb_encoder = bool(share_rgb_encoder)

        lowdim_dim = sum(self.shapes[k][0] for k in self.lowdim_keys)
        self.lowdim_mlp = MLP(lowdim_dim, [int(d) for d in lowdim_mlp]) if lowdim_mlp and lowdim_dim else None
        if self.lowdim_mlp is not None and len({self.frames[k] for k in self.lowdim_keys}) > 1:
            raise ValueError("lowdim_mlp encodes the low-dim keys together: give them the same frames")
        self.key_dims = {key: int(image_feature_dim) for key in self.rgb_keys}
        self.key_dims.update({key: self.shapes[key][0] for key in self.lowdim_keys})
        lowdim_out = int(lowdim_mlp[-1]) if self.lowdim_mlp is not None else lowdim_dim
        self.frame_dim = len(self.rgb_keys) * int(image_feature_dim) + lowdim_out
        self._all_frames = all(k == self.n_obs_steps for k in self.frames.values())
        if self._all_frames:
            self._output_dim = self.n_obs_steps * self.frame_dim
        else:
            lowdim_frames = max((self.frames[k] for k in self.lowdim_keys), default=0)
            self._output_dim = (sum(self.frames[k] * int(image_feature_dim) for k in self.rgb_keys)
                                + (lowdim_frames * lowdim_out if self.lowdim_mlp is not None
                                   else sum(self.frames[k] * self.shapes[k][0] for k in self.lowdim_keys)))

    @property
    def output_dim(self) -> int:
        """Size of the flattened encoding: the per-frame features summed over the frames each key uses."""
        return self._output_dim

    def encode_image(self, key: str, images: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        """(N, H, W, C) normalized images -> (N, image_feature_dim), cropping as the mode says."""
        x = images.permute(0, 3, 1, 2)
        if self.crop_shape is not None:
            x = crop_images(x, self.crop_shape, random=self.training, generator=generator)
        encoder = self.image_encoders["shared" if self.share_rgb_encoder else key]
        return encoder(x.contiguous())

    def forward(self, nobs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """nobs: ``{key: (B, To, *shape)}`` normalized; returns (B, To * frame_dim)."""
        first = nobs[next(iter(self.shapes))]
        batch, steps = first.shape[:2]
        if steps != self.n_obs_steps:
            raise ValueError(f"expected {self.n_obs_steps} observation steps, got {steps}")
        if not self._all_frames:
            return self._forward_per_key_frames(nobs, batch, generator)
        frames = []
        for key in self.rgb_keys:
            images = nobs[key].reshape(batch * steps, *self.shapes[key])
            frames.append(self.encode_image(key, images, generator).reshape(batch, steps, -1))
        if self.lowdim_keys:
            lowdim = torch.cat([nobs[k] for k in self.lowdim_keys], dim=-1)
            frames.append(self.lowdim_mlp(lowdim) if self.lowdim_mlp is not None else lowdim)
        features = torch.cat(frames, dim=-1) if len(frames) > 1 else frames[0]
        return features.reshape(batch, steps * self.frame_dim)

    def _forward_per_key_frames(self, nobs: Mapping[str, torch.Tensor], batch: int,
                                generator: torch.Generator | None) -> torch.Tensor:
        """Keys with fewer frames: each key's newest frames, still ordered step by step, then by key."""
        per_key: dict[str, torch.Tensor] = {}  # key -> (B, frames, features)
        for key in self.rgb_keys:
            k = self.frames[key]
            images = nobs[key][:, -k:].reshape(batch * k, *self.shapes[key])
            per_key[key] = self.encode_image(key, images, generator).reshape(batch, k, -1)
        if self.lowdim_keys and self.lowdim_mlp is not None:
            k = self.frames[self.lowdim_keys[0]]
            per_key["\0lowdim"] = self.lowdim_mlp(torch.cat([nobs[key][:, -k:] for key in self.lowdim_keys], dim=-1))
        else:
            per_key.update({key: nobs[key][:, -self.frames[key]:] for key in self.lowdim_keys})
        parts = []
        for step in range(self.n_obs_steps):
            for values in per_key.values():
                first_step = self.n_obs_steps - values.shape[1]
                if step >= first_step:
                    parts.append(values[:, step - first_step])
        return torch.cat(parts, dim=-1)
