"""The reverse-diffusion loop: the fast DDPM/DDIM update equals diffusers' step; other schedulers run."""

from __future__ import annotations

import pytest
import torch

from dpolicy.models.noise_schedulers import (
    PREDICTION_TYPES,
    SCHEDULERS,
    ReverseDiffusion,
    make_inference_scheduler,
    make_training_scheduler,
    training_target,
)


def _toy_denoiser(sampler: ReverseDiffusion):
    """A fixed nonlinear function of (x, t) standing in for a trained network."""
    w = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))

    def denoise(x, k):
        return torch.tanh(0.9 * x + w * (float(sampler.timesteps[k]) / 100.0))
    return denoise


def _run(sampler: ReverseDiffusion, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 16, 2, generator=gen)
    return sampler(_toy_denoiser(sampler), x, gen)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("name,steps", [("ddpm", 100), ("ddpm", 10), ("ddim", 10), ("ddim", 100),
                                        ("ddim", 16)])
def test_fast_update_equals_diffusers_step(prediction_type, clip_sample, name, steps):
    training = make_training_scheduler(100, "squaredcos_cap_v2", prediction_type, clip_sample)
    fast = ReverseDiffusion(make_inference_scheduler(name, training), steps, fast=True)
    reference = ReverseDiffusion(make_inference_scheduler(name, training), steps, fast=False)
    assert fast.is_fast and not reference.is_fast
    assert torch.equal(fast.timesteps, reference.timesteps)
    out_fast, out_ref = _run(fast), _run(reference)
    scale = out_ref.abs().max().item()
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5 * max(1.0, scale))


def test_ddpm_sampling_is_random_and_reproducible():
    sampler = ReverseDiffusion(make_inference_scheduler("ddpm", make_training_scheduler()), 20)
    assert torch.equal(_run(sampler, seed=3), _run(sampler, seed=3))
    assert not torch.allclose(_run(sampler, seed=3), _run(sampler, seed=4))


@pytest.mark.parametrize("name", sorted(set(SCHEDULERS) - {"ddpm", "ddim"}))
def test_other_schedulers_run_through_diffusers(name):
    sampler = ReverseDiffusion(make_inference_scheduler(name, make_training_scheduler()), 8)
    assert not sampler.is_fast
    out = _run(sampler)
    assert out.shape == (3, 16, 2) and torch.isfinite(out).all()


def test_sampling_denoises_a_perfect_denoiser_to_the_data():
    """With the exact noise as the model output, DDIM recovers the clean sample."""
    training = make_training_scheduler(100)
    clean = torch.rand(2, 16, 2) * 1.6 - 0.8
    sampler = ReverseDiffusion(make_inference_scheduler("ddim", training), 10)
    acp = training.alphas_cumprod

    def oracle(x, k):
        a = acp[int(sampler.timesteps[k])]
        return (x - a.sqrt() * clean) / (1 - a).sqrt()
    out = sampler(oracle, torch.randn(2, 16, 2))
    torch.testing.assert_close(out, clean, atol=1e-4, rtol=0)


def test_training_targets_per_prediction_type():
    clean, noise = torch.randn(4, 16, 2), torch.randn(4, 16, 2)
    t = torch.tensor([0, 10, 50, 99])
    for kind, expected in [("epsilon", noise), ("sample", clean)]:
        noisy, target = training_target(make_training_scheduler(prediction_type=kind), clean, noise, t)
        assert torch.equal(target, expected) and noisy.shape == clean.shape
    v_sched = make_training_scheduler(prediction_type="v_prediction")
    _, v = training_target(v_sched, clean, noise, t)
    a = v_sched.alphas_cumprod[t].view(-1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * clean)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scheduler 'ddimm'"):
        make_inference_scheduler("ddimm", make_training_scheduler())
    with pytest.raises(ValueError, match="prediction_type"):
        make_training_scheduler(prediction_type="noise")
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 100\]"):
        ReverseDiffusion(make_inference_scheduler("ddim", make_training_scheduler()), 101)


@pytest.mark.parametrize("name", ["ddim", "dpm_solver"])
def test_few_step_samplers_keep_the_training_clip_with_an_imperfect_denoiser(name):
    """A denoiser 5% off the exact noise: at the first steps of squaredcos_cap_v2 (alpha_bar ~ 2e-7) the
    clean-sample estimate is amplified ~2000x; the training schedule's clip_sample must reach every
    sampler (DPM-Solver through its thresholding) or 5-step sampling returns garbage."""
    training = make_training_scheduler(100, clip_sample=True)
    sampler = ReverseDiffusion(make_inference_scheduler(name, training), 5)
    clean = torch.rand(4, 16, 2) * 1.6 - 0.8
    acp = training.alphas_cumprod

    def oracle(x, k):
        a = acp[int(sampler.timesteps[k])]
        return 1.05 * (x - a.sqrt() * clean) / (1 - a).sqrt()
    out = sampler(oracle, torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(0)))
    assert out.abs().max() <= 1.0 + 1e-5
    assert (out - clean).abs().mean() < 0.05
