"""Observation encoders: crops, the GroupNorm ResNet-18 with spatial softmax, low-dim concatenation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpolicy.models.obs_encoder import ObservationEncoder, crop_images
from dpolicy.models.resnet import ResNetImageEncoder, SpatialSoftmax

IMAGE_SPEC = {"image": {"shape": [96, 96, 3], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}}


def _is_window_of(crop: torch.Tensor, image: torch.Tensor) -> tuple[int, int] | None:
    h, w = crop.shape[-2:]
    for top in range(image.shape[-2] - h + 1):
        for left in range(image.shape[-1] - w + 1):
            if torch.equal(image[..., top:top + h, left:left + w], crop):
                return top, left
    return None


def test_center_crop_is_deterministic_window():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    out = crop_images(images, (6, 8), random=False)
    assert torch.equal(out, images[:, :, 2:8, 2:10])


def test_random_crop_is_an_independent_window_per_image():
    images = torch.randn(16, 3, 10, 12)
    gen = torch.Generator().manual_seed(0)
    out = crop_images(images, (6, 8), random=True, generator=gen)
    assert out.shape == (16, 3, 6, 8)
    offsets = [_is_window_of(out[i], images[i]) for i in range(16)]
    assert all(o is not None for o in offsets)
    assert len(set(offsets)) > 3  # not one offset for the whole batch


def test_encoder_crops_randomly_in_train_and_centered_in_eval():
    torch.manual_seed(0)
    enc = ObservationEncoder(IMAGE_SPEC, n_obs_steps=2, crop_shape=(84, 84))
    nobs = {"image": torch.rand(1, 2, 96, 96, 3) * 2 - 1, "agent_pos": torch.rand(1, 2, 2)}
    enc.train()
    train_a, train_b = enc(nobs), enc(nobs)
    assert not torch.allclose(train_a, train_b)
    enc.eval()
    eval_a, eval_b = enc(nobs), enc(nobs)
    assert torch.equal(eval_a, eval_b)
    # eval features are those of the center crop
    image = nobs["image"][0, 0].permute(2, 0, 1)[None, :, 6:90, 6:90]
    center_features = enc.image_encoders["image"](image)
    torch.testing.assert_close(eval_a[0, :64], center_features[0])


def test_image_encoder_shapes_and_backward():
    torch.manual_seed(0)
    enc = ObservationEncoder(IMAGE_SPEC, n_obs_steps=2, crop_shape=(84, 84), num_keypoints=32,
                             image_feature_dim=64)
    assert enc.frame_dim == 64 + 2 and enc.output_dim == 2 * 66
    nobs = {"image": torch.rand(3, 2, 96, 96, 3) * 2 - 1, "agent_pos": torch.rand(3, 2, 2)}
    out = enc(nobs)
    assert out.shape == (3, 132)
    # the low-dim keys come last, per frame: [image_t0 (64), agent_t0 (2), image_t1, agent_t1]
    torch.testing.assert_close(out[:, 64:66], nobs["agent_pos"][:, 0])
    torch.testing.assert_close(out[:, 130:132], nobs["agent_pos"][:, 1])
    out.square().mean().backward()
    trunk = enc.image_encoders["image"].trunk
    assert trunk.stem[0].weight.grad is not None and trunk.stem[0].weight.grad.abs().sum() > 0


def test_resnet_uses_groupnorm_with_channels_over_16_groups():
    enc = ResNetImageEncoder()
    norms = [m for m in enc.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 8 * 2 + 3  # stem + 2 per basic block + 3 projections
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    convs = [m for m in enc.trunk.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # ResNet-18: stem, 8 blocks x 2, 3 downsampling projections
    assert enc(torch.randn(2, 3, 84, 84)).shape == (2, 64)


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(1, num_keypoints=1)
    with torch.no_grad():
        pool.keypoint_conv.weight.fill_(1.0)
        pool.keypoint_conv.bias.zero_()
    features = torch.zeros(1, 1, 5, 9)
    features[0, 0, 4, 0] = 100.0  # bottom-left corner
    torch.testing.assert_close(pool(features), torch.tensor([[-1.0, 1.0]]), atol=1e-4, rtol=0)


def test_shared_and_per_key_image_encoders():
    spec = {"cam_a": {"shape": [32, 32, 3], "type": "rgb"}, "cam_b": {"shape": [32, 32, 3], "type": "rgb"}}
    per_key = ObservationEncoder(spec, n_obs_steps=1, crop_shape=(28, 28))
    shared = ObservationEncoder(spec, n_obs_steps=1, crop_shape=(28, 28), share_rgb_encoder=True)
    assert set(per_key.image_encoders) == {"cam_a", "cam_b"} and set(shared.image_encoders) == {"shared"}
    nobs = {k: torch.rand(2, 1, 32, 32, 3) for k in spec}
    assert per_key(nobs).shape == shared(nobs).shape == (2, 128)


def test_lowdim_concatenation_and_mlp():
    spec = {"a": {"shape": [3], "type": "low_dim"}, "b": {"shape": [2], "type": "low_dim"}}
    nobs = {"a": torch.randn(4, 2, 3), "b": torch.randn(4, 2, 2)}
    plain = ObservationEncoder(spec, n_obs_steps=2)
    expected = torch.cat([nobs["a"], nobs["b"]], dim=-1).reshape(4, 10)
    assert torch.equal(plain(nobs), expected)
    mlp = ObservationEncoder(spec, n_obs_steps=2, lowdim_mlp=[16, 8])
    assert mlp.output_dim == 16 and mlp(nobs).shape == (4, 16)


def test_encoder_rejects_bad_specs():
    with pytest.raises(ValueError, match="HWC"):
        ObservationEncoder({"image": {"shape": [3, 96, 96], "type": "rgb"}}, n_obs_steps=1)
    with pytest.raises(ValueError, match="larger than image"):
        ObservationEncoder({"image": {"shape": [64, 64, 3], "type": "rgb"}}, n_obs_steps=1,
                           crop_shape=(84, 84))
    with pytest.raises(ValueError, match="unknown type"):
        ObservationEncoder({"x": {"shape": [2], "type": "depth"}}, n_obs_steps=1)
    enc = ObservationEncoder({"x": {"shape": [2], "type": "low_dim"}}, n_obs_steps=2)
    with pytest.raises(ValueError, match="expected 2 observation steps"):
        enc({"x": torch.zeros(1, 3, 2)})
