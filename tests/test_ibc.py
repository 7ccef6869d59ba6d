"""Implicit BC: InfoNCE prefers low positive energies, DFO and Langevin find known minima."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.ibc import EnergyMLP, IbcPolicy

SPEC = {"obs": {"obs": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [2]}}


def make_policy(**kwargs) -> IbcPolicy:
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"obs": rng.uniform(-1, 1, (100, 3)), "action": rng.uniform(-1, 1, (100, 2))})
    args = dict(horizon=2, n_obs_steps=2, n_action_steps=1, hidden_dim=32, n_layers=2, dropout=0.0,
                n_counter_examples=64, dfo_samples=512, dfo_iters=4)
    args.update(kwargs)
    return IbcPolicy(SPEC, normalizer, **args)


class QuadraticEnergy(nn.Module):
    """E(o, a) = |a - c|^2 (or the min over several centers): a landscape with known minima."""

    def __init__(self, centers):
        super().__init__()
        self.register_buffer("centers", torch.as_tensor(centers, dtype=torch.float32))

    def forward(self, obs_feat, actions):
        d = ((actions[:, :, None, :] - self.centers[None, None]) ** 2).sum(-1)
        return 50.0 * d.min(dim=-1).values


def test_energy_mlp_scores_every_candidate():
    mlp = EnergyMLP(obs_dim=6, action_dim=2, hidden_dim=16, n_layers=3, residual=True)
    assert mlp(torch.zeros(4, 6), torch.zeros(4, 10, 2)).shape == (4, 10)


def test_infonce_is_lowest_when_the_positive_has_the_lowest_energy():
    policy = make_policy(n_counter_examples=32)
    obs = torch.zeros(8, 2, 3)
    target = torch.full((8, 2, 2), 0.25)
    batch = {"obs": {"obs": obs}, "action": target}
    center = policy.normalizer.normalize("action", target[:, 1])[0]

    torch.manual_seed(0)
    policy.energy = QuadraticEnergy([center.tolist()])  # lowest energy exactly at the demonstration
    good = float(policy.compute_loss(batch))
    torch.manual_seed(0)
    policy.energy = QuadraticEnergy([[-0.9, 0.9]])  # lowest energy far from it
    bad = float(policy.compute_loss(batch))
    assert good < 0.1 * np.log(33) and bad > np.log(33)  # log(N + 1) is the loss of a flat energy


def test_infonce_training_lowers_the_loss():
    torch.manual_seed(0)
    policy = make_policy()
    rng = np.random.default_rng(1)
    obs = torch.as_tensor(rng.uniform(-1, 1, (256, 2, 3)), dtype=torch.float32)
    action = torch.stack([obs[:, -1, :2], obs[:, -1, :2]], dim=1) * 0.8
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        idx = torch.as_tensor(rng.integers(0, 256, 64))
        loss = policy.compute_loss({"obs": {"obs": obs[idx]}, "action": action[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


@pytest.mark.parametrize("sampler", ["dfo", "langevin"])
def test_sampler_finds_the_minimum_of_a_quadratic(sampler):
    policy = make_policy(sampler=sampler, langevin_steps=60, langevin_step_size=0.01)
    policy.energy = QuadraticEnergy([[0.3, -0.6]])
    gen = torch.Generator().manual_seed(0)
    chunk = policy.sample_actions({"obs": torch.zeros(5, 2, 3)}, generator=gen)
    assert chunk.shape == (5, 2, 2)
    assert torch.allclose(chunk[:, -1], torch.tensor([0.3, -0.6]).expand(5, 2), atol=0.05)


def test_dfo_lands_on_one_of_two_equally_good_modes():
    policy = make_policy()
    modes = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    policy.energy = QuadraticEnergy(modes)
    gen = torch.Generator().manual_seed(0)
    chunk = policy.sample_actions({"obs": torch.zeros(64, 2, 3)}, generator=gen)[:, -1]
    dist = torch.cdist(chunk, modes).min(dim=1).values
    assert (dist < 0.05).all()  # never the average of the two
    left = (chunk[:, 0] < 0).float().mean()
    assert 0.2 < left < 0.8  # both modes are used


def test_predict_action_returns_env_units_and_the_executed_slot():
    policy = make_policy()
    policy.energy = QuadraticEnergy([[0.0, 0.0]])
    out = policy.predict_action({"obs": np.zeros((2, 3), np.float32)})
    assert out["action"].shape == (1, 2) and out["action_pred"].shape == (2, 2)
    lo, hi = policy.normalizer.input_range("action")
    assert torch.allclose(out["action"][0], (lo + hi) / 2, atol=0.05)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="sampler"):
        make_policy(sampler="mcmc")
    with pytest.raises(ValueError, match="horizon"):
        make_policy(horizon=1, n_action_steps=1, n_obs_steps=2)


def test_action_steps_can_shorten_the_scored_chunk_but_not_lengthen_it():
    policy = make_policy(horizon=4, n_action_steps=3)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        policy.set_action_steps(4)
    policy.set_action_steps(2)
    out = policy.predict_action({"obs": torch.zeros(5, 2, 3)}, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (5, 2, 2) and out["action_pred"].shape == (5, 4, 2)
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:3])


# --------------------------------------------------------------------- proposal centred on the agent
# The observation's first two numbers are the agent's position, in the units of the actions.
LOCAL = dict(proposal="local", anchor_key="obs", anchor_index=0, proposal_radius=0.2, proposal_global_share=0.25)


def _agent_obs(batch: int, position=(0.4, -0.3)) -> torch.Tensor:
    obs = torch.zeros(batch, 2, 3)
    obs[:, :, :2] = torch.tensor(position)
    return obs


def test_proposal_samples_lie_in_its_box_and_carry_the_density_ratio():
    policy = make_policy(**LOCAL)
    nobs = {"obs": policy.normalizer.normalize("obs", _agent_obs(4))}
    samples, log_ratio = policy.sample_proposal(nobs, 400, generator=torch.Generator().manual_seed(0))
    centre = policy.anchor_positions(nobs)[0]
    half = policy._radius()
    local = ((samples - centre[:, None]).abs() <= half + 1e-6).all(-1)
    assert local.float().mean() >= 0.75  # the local share, plus global samples that fall inside
    q_over_u = 0.25 + 0.75 * (2 * policy.bound) ** 2 / (2 * half).prod()
    torch.testing.assert_close(log_ratio[local], torch.full_like(log_ratio[local], -float(torch.log(q_over_u))))
    torch.testing.assert_close(log_ratio[~local], torch.full_like(log_ratio[~local], -float(np.log(0.25))))


def test_infonce_over_the_proposal_estimates_the_uniform_box_infonce():
    """Toy energy, fixed positive: the corrected normaliser from proposal negatives has the uniform
    negatives' expectation; the loss agrees too, and without the correction it would not."""
    uniform, local = make_policy(n_counter_examples=2048), make_policy(n_counter_examples=2048, **LOCAL)
    energy = QuadraticEnergy([[0.45, -0.25]])  # a bump near the agent, as demonstrated actions are
    batch = 64
    nobs = {"obs": uniform.normalizer.normalize("obs", _agent_obs(batch))}
    target = torch.tensor([0.45, -0.25]).expand(batch, 2)
    gen = torch.Generator().manual_seed(0)

    def normaliser_and_loss(policy, corrected=True):
        negatives, correction = policy.sample_proposal(nobs, policy.n_counter_examples, gen)
        if not corrected:
            correction = torch.zeros_like(correction)
        negative_logits = -energy(None, negatives) + correction
        positive = -energy(None, target[:, None])
        logits = torch.cat([positive, negative_logits], dim=1)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long), reduction="none")
        return negative_logits.exp().mean(1), loss

    z_uniform, loss_uniform = normaliser_and_loss(uniform)
    z_local, loss_local = normaliser_and_loss(local)
    _, loss_uncorrected = normaliser_and_loss(local, corrected=False)
    standard_error = float((z_uniform.var() / batch + z_local.var() / batch).sqrt())
    assert abs(float(z_uniform.mean() - z_local.mean())) < 4 * standard_error
    assert z_local.std() < 0.5 * z_uniform.std()  # the point of the proposal: a less noisy estimate
    assert abs(float(loss_uniform.mean() - loss_local.mean())) < 0.1
    assert float(loss_uncorrected.mean() - loss_uniform.mean()) > 1.0


def test_dfo_inside_the_proposal_box_finds_a_known_minimum():
    policy = make_policy(dfo_samples=64, dfo_iters=3, dfo_noise_scale=0.05, **{**LOCAL, "proposal_global_share": 0.0})
    obs = _agent_obs(8)
    minimum = policy.normalizer.normalize("obs", obs)[0, -1, :2] + torch.tensor([0.1, -0.08])
    policy.energy = QuadraticEnergy([minimum.tolist()])
    chunk = policy.sample_actions({"obs": policy.normalizer.normalize("obs", obs)},
                                  generator=torch.Generator().manual_seed(0))[:, -1]
    assert torch.allclose(chunk, minimum.expand(8, 2), atol=0.02)


def test_diagnostics_tell_a_model_that_learned_only_kinematics_from_one_that_learned_the_task():
    policy = make_policy(**LOCAL).eval()
    obs = _agent_obs(32)
    obs[:, 0, :2] -= torch.tensor([0.05, 0.0])  # the agent moved +0.05 in x at the last step
    demonstrated = obs[:, -1, :2] + torch.tensor([0.05, 0.0])  # and keeps going: pure kinematics
    batch = {"obs": {"obs": obs}, "action": demonstrated[:, None].expand(32, 2, 2).clone()}
    policy.energy = QuadraticEnergy([policy.normalizer.normalize("action", demonstrated[0]).tolist()])
    figures = policy.diagnostics(batch, generator=torch.Generator().manual_seed(0))
    assert set(figures) == {"infonce", "infonce_trivial", "action_error"}
    assert figures["infonce_trivial"] < 0.5 * np.log(policy.n_counter_examples + 1)
    assert figures["action_error"] < 0.02  # env units: DFO lands on the demonstration

    policy.energy = QuadraticEnergy([[-0.9, 0.9]])  # far from every demonstration
    far = policy.diagnostics(batch, generator=torch.Generator().manual_seed(0))
    assert far["infonce"] > far["infonce_trivial"] and far["action_error"] > 0.5


def test_a_local_proposal_needs_an_anchor_and_a_radius():
    with pytest.raises(ValueError, match="anchor_key"):
        make_policy(proposal="local", proposal_radius=0.2)
    with pytest.raises(ValueError, match="anchor_index"):
        make_policy(**{**LOCAL, "anchor_index": 2})
    with pytest.raises(ValueError, match="low_dim observation"):
        make_policy(**{**LOCAL, "anchor_key": "image"})


def test_a_larger_search_lands_closer_to_the_minimum_and_bad_budgets_are_rejected():
    policy = make_policy()
    policy.energy = QuadraticEnergy([[0.3, -0.6]])
    target = torch.tensor([0.3, -0.6])

    def error() -> float:
        gen = torch.Generator().manual_seed(0)
        chunk = policy.sample_actions({"obs": torch.zeros(256, 2, 3)}, generator=gen)[:, -1]
        return float((chunk - target).norm(dim=-1).mean())

    policy.set_search(samples=4, iters=0)
    coarse = error()
    policy.set_search(samples=512, iters=3)
    assert (policy.dfo_samples, policy.dfo_iters) == (512, 3)
    assert error() < 0.25 * coarse
    policy.set_search(iters=1)
    assert (policy.dfo_samples, policy.dfo_iters) == (512, 1)  # the other setting is kept
    for bad in ({"samples": 0}, {"iters": -1}, {"samples": 2.5}):
        with pytest.raises(ValueError, match="search"):
            policy.set_search(**bad)
