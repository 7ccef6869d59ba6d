"""EMA of weights: the warm-up decay schedule, the averaging itself and exact resume."""

from __future__ import annotations

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
