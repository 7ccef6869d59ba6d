"""DiffusionPolicy: training overfits a demonstration window, DDPM/DDIM sampling from the same weights,
predict_action conventions, image observations, checkpoint round trip, hydra construction, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpolicy.data.normalizer import Normalizer
from dpolicy.models.ema import EMA
from dpolicy.policies.diffusion import DiffusionPolicy

LOWDIM_SPEC = {"obs": {"obs": {"shape": [20], "type": "low_dim"}}, "action": {"shape": [2]}}
IMAGE_SPEC = {"obs": {"image": {"shape": [96, 96, 3], "type": "rgb"},
                      "agent_pos": {"shape": [2], "type": "low_dim"}},
              "action": {"shape": [2]}}
TINY = dict(down_dims=[32, 64], kernel_size=3, n_groups=8, step_embed_dim=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and threads suffer badly on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _window(seed: int = 0):
    """One demonstration window in env units: 16 observations and the 16 actions of a circular push."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 16)
    action = torch.stack([256 + 150 * torch.cos(3 * t), 256 + 150 * torch.sin(3 * t)], dim=-1)
    obs = torch.rand(1, 20, generator=gen) * 400 + 50 + torch.linspace(0, 20, 16)[:, None]
    return obs, action


def _lowdim_normalizer() -> Normalizer:
    gen = torch.Generator().manual_seed(1)
    return Normalizer.fit({"obs": torch.rand(64, 20, generator=gen) * 512,
                           "action": torch.rand(64, 2, generator=gen) * 512})


def _overfit(prediction_type: str, steps: int) -> tuple[DiffusionPolicy, list[float]]:
    torch.manual_seed(0)
    obs, action = _window()
    policy = DiffusionPolicy(LOWDIM_SPEC, _lowdim_normalizer(), prediction_type=prediction_type, **TINY)
    batch = {"obs": {"obs": obs.expand(32, -1, -1)}, "action": action.expand(32, -1, -1)}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss = policy.compute_loss(batch, generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return policy.eval(), losses


@pytest.fixture(scope="module")
def overfit_policy():
    """x0-parameterised ("sample") tiny policy trained on one window: memorised in a few hundred steps."""
    return _overfit("sample", 300)


def _plan_error(policy: DiffusionPolicy, n: int = 5, seed: int = 1) -> torch.Tensor:
    obs, action = _window()
    out = policy.predict_action({"obs": obs[None, :2].expand(n, -1, -1)},
                                generator=torch.Generator().manual_seed(seed))
    return (out["action_pred"] - action).abs()


def test_overfits_one_window_with_ddpm_and_ddim_from_the_same_weights(overfit_policy):
    policy, losses = overfit_policy
    assert sum(losses[-20:]) / 20 < 0.05 * sum(losses[:20]) / 20
    weights = {k: v.clone() for k, v in policy.state_dict().items() if torch.is_tensor(v)}
    for scheduler, steps in [("ddpm", 100), ("ddim", 10), ("ddim", 16), ("ddpm", 10)]:
        policy.set_inference(scheduler=scheduler, steps=steps)
        assert policy.num_inference_steps == steps
        error = _plan_error(policy)
        assert error.max() < 10.0, f"{scheduler}-{steps}: max error {error.max():.1f} px"  # on a 512 px field
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in weights.items())


@pytest.mark.slow
def test_epsilon_prediction_overfits_with_ddpm():
    """The paper's parameterisation (predict the noise) learns the window too."""
    policy, losses = _overfit("epsilon", 300)
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:20]) / 20
    policy.set_inference("ddpm", 100)
    error = _plan_error(policy)
    assert error.mean() < 5.0 and error.max() < 25.0


def test_predict_action_single_and_batched(overfit_policy):
    policy, _ = overfit_policy
    policy.set_inference("ddim", 10)
    obs, _ = _window()
    single = policy.predict_action({"obs": obs[:2]}, generator=torch.Generator().manual_seed(0))
    assert single["action"].shape == (8, 2) and single["action_pred"].shape == (16, 2)
    batched = policy.predict_action({"obs": obs[None, :2].expand(3, -1, -1).numpy()},
                                    generator=torch.Generator().manual_seed(0))
    assert batched["action"].shape == (3, 8, 2) and batched["action_pred"].shape == (3, 16, 2)
    # the executable chunk starts at the last observed step: actions To-1 .. To-1+Ta
    torch.testing.assert_close(batched["action"], batched["action_pred"][:, 1:9])
    # with a longer history only the last To observations count
    longer = policy.predict_action({"obs": torch.cat([obs[:3] * 0.5, obs[:2]])},
                                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(longer["action_pred"], single["action_pred"])
    assert not batched["action"].is_inference()
    batched["action"].add_(1.0)  # callers may modify the returned chunk


def test_sampling_generator_reproducibility(overfit_policy):
    policy, _ = overfit_policy
    policy.set_inference("ddpm", 20)
    obs = {"obs": _window()[0][None, :2]}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(5))["action_pred"]
    b = policy.predict_action(obs, generator=torch.Generator().manual_seed(5))["action_pred"]
    c = policy.predict_action(obs, generator=torch.Generator().manual_seed(6))["action_pred"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_state_dict_round_trip_gives_identical_predictions(overfit_policy):
    policy, _ = overfit_policy
    policy.set_inference("ddim", 10)
    state = policy.state_dict()
    rebuilt = DiffusionPolicy(LOWDIM_SPEC, Normalizer.from_spec(
        {**LOWDIM_SPEC["obs"], "action": {"shape": [2], "type": "low_dim"}}), prediction_type="sample",
        **TINY).eval()
    rebuilt.load_state_dict(state)
    rebuilt.set_inference("ddim", 10)
    obs = {"obs": _window()[0][None, :2].expand(4, -1, -1)}
    expected = policy.predict_action(obs, generator=torch.Generator().manual_seed(7))["action_pred"]
    got = rebuilt.predict_action(obs, generator=torch.Generator().manual_seed(7))["action_pred"]
    assert torch.equal(got, expected)


def test_fast_sampling_matches_diffusers_steps(overfit_policy):
    policy, _ = overfit_policy
    obs = {"obs": _window()[0][None, :2].expand(2, -1, -1)}
    for scheduler, steps in [("ddpm", 100), ("ddim", 10)]:
        outs = []
        for fast in (True, False):
            policy.set_inference(scheduler, steps, fast=fast)
            outs.append(policy.predict_action(obs, generator=torch.Generator().manual_seed(3))["action_pred"])
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-3)  # env units (px)
    policy.set_inference(fast=True)


def test_ema_of_a_policy_predicts(overfit_policy):
    policy, _ = overfit_policy
    ema = EMA(policy)
    ema.step(policy)
    averaged = ema.averaged_model
    averaged.set_inference("ddim", 10)
    policy.set_inference("ddim", 10)
    obs = {"obs": _window()[0][None, :2]}
    expected = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
    got = averaged.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
    torch.testing.assert_close(got, expected)


def _image_policy(**kwargs) -> DiffusionPolicy:
    normalizer = Normalizer.fit({"agent_pos": torch.rand(16, 2) * 512, "action": torch.rand(16, 2) * 512,
                                 "image": torch.zeros(1, 96, 96, 3)}, image_keys=("image",))
    return DiffusionPolicy(IMAGE_SPEC, normalizer, **{**TINY, **kwargs})


def test_image_policy_forward_backward_and_predict():
    torch.manual_seed(0)
    policy = _image_policy()
    assert policy.obs_encoder.output_dim == 2 * (64 + 2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in policy.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in policy.obs_encoder.modules())
    batch = {"obs": {"image": torch.randint(0, 256, (2, 2, 96, 96, 3), dtype=torch.uint8),
                     "agent_pos": torch.rand(2, 2, 2) * 512},
             "action": torch.rand(2, 16, 2) * 512}
    loss = policy.compute_loss(batch)
    assert loss.ndim == 0
    loss.backward()
    resnet = policy.obs_encoder.image_encoders["image"]
    assert all(p.grad is not None for p in resnet.parameters())
    policy.eval().set_inference("ddim", 4)
    obs = {"image": batch["obs"]["image"][0], "agent_pos": batch["obs"]["agent_pos"][0]}  # unbatched
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (8, 2)
    again = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["action"], again["action"])  # eval mode: center crop, no randomness besides noise


def test_a_config_builds_the_policy_by_its_registered_name():
    from omegaconf import OmegaConf

    from dpolicy.training.checkpoint import build_policy

    cfg = OmegaConf.create({"policy": {"name": "diffusion",
                                       "horizon": 16, "n_obs_steps": 2, "n_action_steps": 8, "down_dims": [32, 64],
                                       "kernel_size": 3, "n_groups": 8, "step_embed_dim": 32,
                                       "inference_scheduler": "ddim", "num_inference_steps": 8}})
    policy = build_policy(cfg, LOWDIM_SPEC, _lowdim_normalizer())
    assert isinstance(policy, DiffusionPolicy)
    assert policy.inference_scheduler_name == "ddim" and policy.num_inference_steps == 8
    assert policy.predict_action({"obs": torch.rand(2, 20) * 512})["action"].shape == (8, 2)


def test_errors_name_the_problem():
    normalizer = _lowdim_normalizer()
    policy = DiffusionPolicy(LOWDIM_SPEC, normalizer, **TINY)
    with pytest.raises(ValueError, match=r"batch\['action'\] must be \(B, 16, 2\)"):
        policy.compute_loss({"obs": {"obs": torch.zeros(2, 2, 20)}, "action": torch.zeros(2, 8, 2)})
    with pytest.raises(KeyError, match="missing key 'obs'"):
        policy.compute_loss({"obs": {"state": torch.zeros(2, 2, 20)}, "action": torch.zeros(2, 16, 2)})
    with pytest.raises(ValueError, match=r"batch\['obs'\]\['obs'\] must be \(2, >=2, 20\)"):
        policy.compute_loss({"obs": {"obs": torch.zeros(2, 2, 18)}, "action": torch.zeros(2, 16, 2)})
    with pytest.raises(ValueError, match="unknown scheduler"):
        policy.set_inference("dpm")
    with pytest.raises(ValueError, match="num_steps must be in"):
        policy.set_inference("ddim", 1000)
    with pytest.raises(ValueError, match="horizon 9 must be divisible by 2"):
        DiffusionPolicy(LOWDIM_SPEC, normalizer, horizon=9, n_action_steps=8, **TINY)
    with pytest.raises(ValueError, match="normalizer has no entry for"):
        DiffusionPolicy(LOWDIM_SPEC, Normalizer.from_spec({"obs": {"shape": [20]}}), **TINY)

