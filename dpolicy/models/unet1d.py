"""1D temporal-convolution UNet over an action sequence, conditioned by FiLM.

The network denoises a sequence ``(B, T, action_dim)``. Every residual block is modulated
(per-channel scale and bias, "FiLM") by a conditioning vector made of a sinusoidal embedding
of the diffusion step (passed through an MLP) and the flattened observation features.

Speed-minded layout: the FiLM projections of all blocks are one linear layer, and because it
is linear in its input the step part and the observation part can be computed separately
(:meth:`ConditionalUnet1D.film_parts`): sampling computes the observation part once per chunk
and the step part once per denoising step of the schedule, then each step costs one add.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sin/cos embedding of integer (or real) diffusion steps: (N,) -> (N, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"step embedding size must be an even number >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        angles = steps.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


#: How the temporal (de)convolutions are computed: "matmul" (im2col + one matrix product, fast
#: on CPU and bf16-autocast friendly) or "native" (torch's convolution kernels, e.g. for GPUs).
CONV_IMPLS = ("matmul", "native")


class TemporalConv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters) applied to time-major input (B, T, C) -> (B, T', C_out).

    With ``impl="matmul"`` it is one matrix product over unfolded windows (im2col): on CPU this
    beats the native convolution for these short sequences with many channels, and it runs in
    bf16 under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """

    impl = "matmul"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "native":
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        weight = self.weight.reshape(self.out_channels, -1)
        if k == 1 and stride == 1 and pad == 0:
            return F.linear(x, weight, self.bias)
        if torch.is_autocast_enabled(x.device.type):
            # cast before unfolding: the window copy is then made once, at the lower precision
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if pad:
            x = F.pad(x, (0, 0, pad, pad))
        if x.requires_grad and torch.is_grad_enabled():
            # stacked shifted views: same windows, but a backward ~2x faster than unfold's (bf16 most)
            span = stride * ((x.shape[1] - k) // stride) + 1
            windows = torch.stack([x[:, j:j + span:stride] for j in range(k)], dim=-1)
        else:
            windows = x.unfold(1, k, stride)  # (B, T', C, k): fewer operations for inference
        return F.linear(windows.reshape(*windows.shape[:2], -1), weight, self.bias)


class TemporalUpsample(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d(C, C, 4, stride=2, padding=1)`` on time-major input: (B, T, C) -> (B, 2T, C).

    With ``impl="matmul"``: one product with all 4 taps, ``z[i, j] = x[i] @ W[:, :, j]``, then
    ``y[2m] = z[m, 1] + z[m-1, 3]`` and ``y[2m+1] = z[m, 2] + z[m+1, 0]``.
    """

    impl = "matmul"

    def __init__(self, channels: int):
        super().__init__(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "native":
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        b, t, c = x.shape
        z = torch.matmul(x, self.weight.reshape(c, -1)).view(b, t, self.out_channels, 4)
        even = z[..., 1] + F.pad(z[:, :-1, :, 3], (0, 0, 1, 0))
        odd = z[..., 2] + F.pad(z[:, 1:, :, 0], (0, 0, 0, 1))
        return torch.stack((even, odd), dim=2).reshape(b, 2 * t, self.out_channels) + self.bias


class TemporalGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over the channels of time-major input (B, T, C) -> contiguous (B, T, C).

    Computed on a channel-major copy: the channels-last kernel would avoid the copies, but its
    result depends on the number of threads, and seeded sampling should not. The output is made
    contiguous time-major again (elementwise backward kernels such as Mish's are ~10x slower on
    mixed layouts). Always float32: under bf16 autocast only the matrix products run in bf16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            x = x.float()
        y = F.group_norm(x.transpose(1, 2), self.num_groups, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).contiguous()


class Conv1dBlock(nn.Module):
    """Conv1d (same padding) -> GroupNorm -> Mish, on time-major (B, T, C) tensors."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__()
        if out_channels % n_groups:
            raise ValueError(f"GroupNorm: {out_channels} channels are not divisible into {n_groups} groups")
        self.conv = TemporalConv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = TemporalGroupNorm(n_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))


class FiLMResidualBlock1D(nn.Module):
    """Two conv blocks; the first one's output is modulated ``scale * h + bias``; 1x1-conv skip."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.out_channels = out_channels
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.skip = (TemporalConv1d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C_in); scale, bias: (B, 1, C_out)."""
        h = torch.addcmul(bias, self.block1(x), scale)
        return self.block2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser ``(noisy sequence, diffusion step, global condition) -> (B, T, input_dim)``.

    Args:
        input_dim: channels of the sequence (the action dimension).
        global_cond_dim: size of the flattened observation features (0 for none).
        down_dims: channels per resolution level; the sequence is halved between levels,
            so the horizon must be divisible by ``2 ** (len(down_dims) - 1)``.
        kernel_size: temporal kernel of every convolution block.
        n_groups: GroupNorm groups (every entry of ``down_dims`` must be divisible by it).
        step_embed_dim: size of the diffusion-step embedding.
        conv_impl: "matmul" or "native", see :data:`CONV_IMPLS` (same parameters, same results).
    """

    def __init__(self, input_dim: int, global_cond_dim: int, down_dims: Sequence[int] = (256, 512, 1024),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 256,
                 conv_impl: str = "matmul"):
        super().__init__()
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("down_dims must name at least one level")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.input_dim = int(input_dim)
        self.global_cond_dim = int(global_cond_dim)
        self.down_dims = down_dims
        self.step_embed_dim = int(step_embed_dim)

        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )

        def block(cin: int, cout: int) -> FiLMResidualBlock1D:
            return FiLMResidualBlock1D(cin, cout, kernel_size, n_groups)

        level_io = list(zip([self.input_dim] + down_dims[:-1], down_dims, strict=True))
        n_levels = len(level_io)
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(level_io):
            self.down.append(nn.ModuleDict({
                "res1": block(cin, cout),
                "res2": block(cout, cout),
                "resample": (TemporalConv1d(cout, cout, 3, stride=2, padding=1) if i < n_levels - 1
                             else nn.Identity()),
            }))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        # Up path: level i (deepest first, down to 1) takes the running features concatenated with
        # the skip of down level i and ends one level up, at double length. The output of down
        # level 0 has no partner (as in the original design).
        self.up = nn.ModuleList()
        for cin, cout in reversed(level_io[1:]):
            self.up.append(nn.ModuleDict({
                "res1": block(2 * cout, cin),
                "res2": block(cin, cin),
                "resample": TemporalUpsample(cin),
            }))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   TemporalConv1d(down_dims[0], self.input_dim, 1))

        blocks = [b for level in self.down for b in (level["res1"], level["res2"])] + list(self.mid)
        blocks += [b for level in self.up for b in (level["res1"], level["res2"])]
        # FiLM of every block in one projection: [scale_1, bias_1, scale_2, bias_2, ...].
        self._film_sizes = [c for b in blocks for c in (b.out_channels, b.out_channels)]
        self.cond_dim = self.step_embed_dim + self.global_cond_dim
        self.film = nn.Linear(self.cond_dim, sum(self._film_sizes))
        self.conv_impl = conv_impl
        for module in self.modules():
            if isinstance(module, (TemporalConv1d, TemporalUpsample)):
                module.impl = conv_impl

    @property
    def time_reduction(self) -> int:
        """The horizon must be a multiple of this."""
        return 2 ** (len(self.down_dims) - 1)

    # ----------------------------------------------------------------- conditioning
    def conditioning(self, timesteps: torch.Tensor, global_cond: torch.Tensor | None) -> torch.Tensor:
        """FiLM parameters of all blocks, (B, n_film): steps (B,) and global_cond (B, G)."""
        parts = [self.step_encoder(timesteps)]
        if self.global_cond_dim:
            parts.append(global_cond)
        return self.film(F.mish(torch.cat(parts, dim=-1)))

    def film_parts(self, timesteps: torch.Tensor, global_cond: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The FiLM parameters split by source: (K, n_film) for K steps and (B, n_film) for B observations.

        ``step_part[k] + obs_part[b]`` equals ``conditioning(timesteps[k], global_cond[b])``; the bias
        is carried by the observation part.
        """
        d = self.step_embed_dim
        weight, bias = self.film.weight, self.film.bias
        step_part = F.linear(F.mish(self.step_encoder(timesteps)), weight[:, :d])
        if self.global_cond_dim:
            obs_part = F.linear(F.mish(global_cond), weight[:, d:], bias)
        else:
            obs_part = bias.unsqueeze(0)
        return step_part, obs_part

    # ----------------------------------------------------------------- denoising
    def denoise(self, sample: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """Run the UNet on (B, T, input_dim) with precomputed FiLM parameters (B or 1, n_film)."""
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"sample must be (B, T, {self.input_dim}), got {tuple(sample.shape)}")
        if sample.shape[1] % self.time_reduction:
            raise ValueError(f"sequence length {sample.shape[1]} must be divisible by {self.time_reduction} "
                             f"for {len(self.down_dims)} levels")
        film_iter = iter(torch.split(film.unsqueeze(1), self._film_sizes, dim=2))
        x = sample
        skips = []
        for i, level in enumerate(self.down):
            x = level["res1"](x, next(film_iter), next(film_iter))
            x = level["res2"](x, next(film_iter), next(film_iter))
            if i > 0:
                skips.append(x)
            x = level["resample"](x)
        for res in self.mid:
            x = res(x, next(film_iter), next(film_iter))
        for level in self.up:
            x = torch.cat((x, skips.pop()), dim=2)
            x = level["res1"](x, next(film_iter), next(film_iter))
            x = level["res2"](x, next(film_iter), next(film_iter))
            x = level["resample"](x)
        return self.final(x)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor | int,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, T, input_dim), timesteps (B,) or scalar, global_cond (B, global_cond_dim)."""
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (sample.shape[0], self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"global_cond must be ({sample.shape[0]}, {self.global_cond_dim}), "
                                 f"got {got}")
        timesteps = torch.as_tensor(timesteps, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(sample.shape[0])
        return self.denoise(sample, self.conditioning(timesteps, global_cond))
