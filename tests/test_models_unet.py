"""The conditional 1D UNet: layout-equivalence of its layers, shapes, conditioning, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpolicy.models.unet1d import (
    ConditionalUnet1D,
    SinusoidalStepEmbedding,
    TemporalConv1d,
    TemporalGroupNorm,
    TemporalUpsample,
)


@pytest.mark.parametrize("kernel,stride,padding,length",
                         [(5, 1, 2, 16), (3, 2, 1, 16), (3, 2, 1, 7), (1, 1, 0, 8)])
def test_temporal_conv_matches_conv1d(kernel, stride, padding, length):
    torch.manual_seed(0)
    conv = TemporalConv1d(6, 10, kernel, stride=stride, padding=padding)
    x = torch.randn(3, length, 6)
    expected = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride=stride, padding=padding)
    expected = expected.transpose(1, 2)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_temporal_upsample_and_groupnorm_match_native_layers():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16)
    up = TemporalUpsample(16)
    native_up = nn.ConvTranspose1d(16, 16, 4, stride=2, padding=1)
    native_up.load_state_dict(up.state_dict())
    torch.testing.assert_close(up(x), native_up(x.transpose(1, 2)).transpose(1, 2))
    assert up(x).shape == (2, 8, 16)
    norm = TemporalGroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    expected = F.group_norm(x.transpose(1, 2), 4, norm.weight, norm.bias).transpose(1, 2)
    torch.testing.assert_close(norm(x), expected)


def test_step_embedding_distinguishes_steps():
    emb = SinusoidalStepEmbedding(16)(torch.arange(100))
    assert emb.shape == (100, 16)
    assert torch.cdist(emb, emb).add(torch.eye(100)).min() > 1e-3


def test_paper_scale_unet_size_and_shapes():
    """The paper's low-dim recipe: dims [256, 512, 1024], kernel 5, step embedding 256, obs 20 x To 2."""
    model = ConditionalUnet1D(2, 40, down_dims=[256, 512, 1024], kernel_size=5, n_groups=8,
                              step_embed_dim=256)
    n_params = sum(p.numel() for p in model.parameters())
    assert 64e6 < n_params < 67e6
    out = model(torch.randn(2, 16, 2), torch.tensor([0, 99]), torch.randn(2, 40))
    assert out.shape == (2, 16, 2)


@pytest.mark.parametrize("down_dims,horizon",
                         [([8], 5), ([8, 16], 8), ([8, 16, 32], 16), ([8, 16, 32, 64], 24)])
def test_unet_output_shape_any_depth(down_dims, horizon):
    model = ConditionalUnet1D(3, 7, down_dims=down_dims, kernel_size=3, n_groups=4, step_embed_dim=8)
    x = torch.randn(4, horizon, 3)
    out = model(x, 5, torch.randn(4, 7))
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_conditioning_changes_output_and_split_film_matches():
    torch.manual_seed(0)
    model = ConditionalUnet1D(2, 6, down_dims=[8, 16], kernel_size=3, n_groups=4, step_embed_dim=8)
    x, cond = torch.randn(3, 8, 2), torch.randn(3, 6)
    t = torch.tensor([1, 50, 99])
    base = model(x, t, cond)
    assert not torch.allclose(base, model(x, t + 1, cond))
    assert not torch.allclose(base, model(x, t, cond + 1))
    step_part, obs_part = model.film_parts(t, cond)
    assert step_part.shape == (3, obs_part.shape[1])
    for i in range(3):  # step i with observation i, as in the full conditioning
        film = step_part[i:i + 1] + obs_part[i:i + 1]
        torch.testing.assert_close(model.denoise(x[i:i + 1], film), base[i:i + 1], rtol=1e-5, atol=1e-5)


def test_unet_without_global_condition():
    model = ConditionalUnet1D(2, 0, down_dims=[8, 16], kernel_size=3, n_groups=4, step_embed_dim=8)
    assert model(torch.randn(2, 8, 2), 3).shape == (2, 8, 2)
    step_part, obs_part = model.film_parts(torch.tensor([3]), None)
    torch.testing.assert_close(model.denoise(torch.ones(1, 8, 2), step_part + obs_part),
                               model(torch.ones(1, 8, 2), 3))


def test_unet_uses_groupnorm_and_mish_not_batchnorm():
    model = ConditionalUnet1D(2, 4, down_dims=[16, 32], n_groups=8, step_embed_dim=8)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_unet_rejects_bad_input():
    model = ConditionalUnet1D(2, 4, down_dims=[8, 16, 32], kernel_size=3, n_groups=4, step_embed_dim=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 10, 2), 0, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"global_cond must be \(1, 4\)"):
        model(torch.randn(1, 16, 2), 0, torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"sample must be \(B, T, 2\)"):
        model(torch.randn(1, 16, 3), 0, torch.randn(1, 4))
    with pytest.raises(ValueError, match="divisible into 3 groups"):
        ConditionalUnet1D(2, 4, down_dims=[8], n_groups=3)
    with pytest.raises(ValueError, match="odd"):
        ConditionalUnet1D(2, 4, down_dims=[8], kernel_size=4, n_groups=4)


def test_matmul_and_native_convolutions_agree():
    """The two ways of computing the (de)convolutions give the same network, values and gradients."""
    torch.manual_seed(0)
    fast = ConditionalUnet1D(2, 6, down_dims=[16, 32, 64], kernel_size=5, n_groups=8, step_embed_dim=16)
    native = ConditionalUnet1D(2, 6, down_dims=[16, 32, 64], kernel_size=5, n_groups=8, step_embed_dim=16,
                               conv_impl="native")
    native.load_state_dict(fast.state_dict())
    x, t, cond = torch.randn(3, 16, 2), torch.tensor([0, 40, 99]), torch.randn(3, 6)
    out_fast, out_native = fast(x, t, cond), native(x, t, cond)
    torch.testing.assert_close(out_fast, out_native, rtol=1e-4, atol=1e-5)
    out_fast.square().sum().backward()
    out_native.square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="conv_impl"):
        ConditionalUnet1D(2, 6, down_dims=[16], n_groups=8, conv_impl="fft")


def test_bf16_autocast_training_step_matches_fp32():
    """Under CPU bf16 autocast only matrix products drop precision: the loss and gradients stay close."""
    torch.manual_seed(0)
    model = ConditionalUnet1D(2, 6, down_dims=[32, 64], kernel_size=5, n_groups=8, step_embed_dim=16)
    x, t = torch.randn(8, 16, 2), torch.randint(0, 100, (8,))
    cond, target = torch.randn(8, 6), torch.randn(8, 16, 2)
    losses, grads = [], []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, cond)
        loss = F.mse_loss(out.float(), target)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_groupnorm_output_is_contiguous_time_major():
    norm = TemporalGroupNorm(4, 16)
    for length in (1, 3, 16):
        out = norm(torch.randn(2, length, 16))
        assert out.shape == (2, length, 16) and out.is_contiguous()

