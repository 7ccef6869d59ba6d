"""ResNet-18 in plain torch with GroupNorm, and spatial-softmax keypoint pooling.

No torchvision and no pretrained weights: the image encoder of the diffusion policy is trained
from scratch, with BatchNorm replaced by GroupNorm (``channels // 16`` groups) so that it
behaves the same in training and evaluation and works at any batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: GroupNorm uses ``channels // GROUPNORM_CHANNELS_PER_GROUP`` groups.
GROUPNORM_CHANNELS_PER_GROUP = 16


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // GROUPNORM_CHANNELS_PER_GROUP), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """Convolutional part of ResNet-18 (stem, 4 stages of 2 blocks): (N, 3, H, W) -> (N, 512, H/32, W/32).

    ``width`` (64 in ResNet-18) sets the channels of the first stage, doubled at every further stage;
    ``stages`` (1-4) keeps the first stages only. Both shrink the encoder for small images or a small
    CPU: with fewer stages the feature map stays larger (H / 2**(stages + 1)), which the spatial
    softmax needs on images of a few dozen pixels.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, stages: int = 4):
        super().__init__()
        if width < GROUPNORM_CHANNELS_PER_GROUP or not 1 <= stages <= 4:
            raise ValueError(f"ResNet trunk: need width >= {GROUPNORM_CHANNELS_PER_GROUP} and 1 <= stages <= 4, "
                             f"got width={width}, stages={stages}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            group_norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, channels = [], width
        for stage in range(stages):
            out, stride = width * 2**stage, (1 if stage == 0 else 2)
            blocks += [BasicBlock(channels, out, stride), BasicBlock(out, out)]
            channels = out
        self.stages = nn.Sequential(*blocks)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Feature map (N, C, H, W) -> expected image coordinates in [-1, 1] of K learned keypoints, (N, 2K).

    A 1x1 convolution makes K heat maps; a softmax over each map's pixels weights the pixel
    coordinates (x then y per keypoint).
    """

    def __init__(self, in_channels: int, num_keypoints: int = 32):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.keypoint_conv = nn.Conv2d(in_channels, num_keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, _, h, w = features.shape
        heat = self.keypoint_conv(features).flatten(2).softmax(dim=-1)  # (N, K, H*W)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=heat.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=heat.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)  # (H*W, [x, y])
        return (heat @ grid).reshape(n, 2 * self.num_keypoints)


class ResNetImageEncoder(nn.Module):
    """ResNet-18 trunk -> spatial softmax (K keypoints) -> linear: (N, 3, H, W) in [-1, 1] -> (N, F)."""

    def __init__(self, num_keypoints: int = 32, feature_dim: int = 64, in_channels: int = 3, width: int = 64,
                 stages: int = 4):
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels, width, stages)
        self.pool = SpatialSoftmax(self.trunk.out_channels, num_keypoints)
        self.proj = nn.Linear(2 * num_keypoints, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.trunk(images)))
