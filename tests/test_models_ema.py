"""EMA of weights: the warm-up decay schedule, the averaging itself and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dpolicy.models.ema import EMA


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        self.register_buffer("stat", torch.zeros(2))


def test_decay_schedule():
    ema = EMA(_Net(), power=0.75, max_value=0.9999)
    assert ema.get_decay(0) == 0.0 and ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema.get_decay(101) == pytest.approx(1 - 101 ** -0.75)
    assert ema.get_decay(10 ** 9) == 0.9999
    delayed = EMA(_Net(), update_after_step=10, min_value=0.5)
    assert delayed.get_decay(10) == 0.0 and delayed.get_decay(12) == 0.5


def test_average_follows_the_formula_and_copies_buffers():
    torch.manual_seed(0)
    net = _Net()
    ema = EMA(net)
    expected = net.linear.weight.detach().clone()
    for i in range(6):
        with torch.no_grad():
            net.linear.weight.add_(torch.randn_like(net.linear.weight))
            net.frozen.fill_(i)
            net.stat.fill_(10 + i)
        decay = ema.get_decay(ema.optimization_step)
        expected = decay * expected + (1 - decay) * net.linear.weight.detach()
        ema.step(net)
        assert ema.decay == decay
    torch.testing.assert_close(ema.averaged_model.linear.weight, expected)
    assert torch.equal(ema.averaged_model.frozen, net.frozen)
    assert torch.equal(ema.averaged_model.stat, net.stat)
    assert not any(p.requires_grad for p in ema.averaged_model.parameters())
    assert not ema.averaged_model.training


def test_state_dict_resume_is_exact():
    torch.manual_seed(0)
    net = _Net()
    updates = [torch.randn_like(net.linear.weight) for _ in range(10)]
    straight = EMA(net)
    resumed = None
    for i, update in enumerate(updates):
        with torch.no_grad():
            net.linear.weight.add_(update)
        straight.step(net)
        if resumed is not None:
            resumed.step(net)
        if i == 4:
            resumed = EMA(_Net())
            resumed.load_state_dict(straight.state_dict())
    assert resumed.optimization_step == straight.optimization_step == 10
    expected = straight.averaged_model.state_dict()
    for key, value in resumed.averaged_model.state_dict().items():
        assert torch.equal(value, expected[key])


def test_rejects_mismatched_model():
    ema = EMA(_Net())
    with pytest.raises(ValueError):
        ema.step(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))



def _documented_decay(n_updates_before: int, power: float, max_value: float) -> float:
    """The next update's decay written out from the module docstring (update_after_step=0, inv_gamma=1)."""
    s = n_updates_before - 1
    return 0.0 if s <= 0 else min(1.0 - (1.0 + s) ** -power, max_value)


def test_the_average_moves_toward_changing_weights_by_the_documented_decay():
    net = nn.Linear(3, 2).double()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(-5.0)
    ema = EMA(net, power=0.75, max_value=0.7)  # a low cap, so that it is reached within 10 updates
    # The weights jump around, then stay put: the average must then close the gap geometrically.
    targets = [2.0, -1.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    expected, decays = -5.0, []
    for n, target in enumerate(targets):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(target)
        gap_before = target - ema.averaged_model.weight.detach().clone()
        ema.step(net)
        decay = _documented_decay(n, power=0.75, max_value=0.7)
        decays.append(decay)
        expected = decay * expected + (1.0 - decay) * target
        assert ema.decay == pytest.approx(decay)
        for avg in ema.averaged_model.parameters():
            torch.testing.assert_close(avg, torch.full_like(avg, expected))
        # toward the current weights, by exactly (1 - decay) of the remaining gap
        torch.testing.assert_close(target - ema.averaged_model.weight, decay * gap_before)
    # two plain copies, then a warm-up decay that grows until it hits the cap
    assert decays[:2] == [0.0, 0.0]
    assert decays[2] == pytest.approx(1 - 2 ** -0.75) and decays[3] == pytest.approx(1 - 3 ** -0.75)
    assert 0.0 < decays[2] < decays[3] < decays[4] < 0.7 and decays[5:] == [0.7] * 5
    # from -1 (the copy of update 2) toward 4: most of the way there, never overshooting
    assert expected == pytest.approx(4.0 - 5.0 * math.prod(decays[2:]))
    assert 3.8 < float(ema.averaged_model.weight[0, 0]) < 4.0
    assert torch.equal(net.weight, torch.full((2, 3), 4.0, dtype=torch.float64))  # the model is not touched
