"""The Policy base class owns the training-side contract for every method: it validates the batch,
normalizes it once and hands the method normalized tensors."""

from __future__ import annotations

import pytest
import torch

from dpolicy.policies.base import Policy
from tests.test_golden import SPEC, _batch, _make, _normalizer


class _Recorder(Policy):
    """A policy whose loss records what the base class passed it."""

    def __init__(self, normalizer=None):
        super().__init__(SPEC, normalizer or _normalizer(), horizon=8, n_obs_steps=2, n_action_steps=4)
        self.seen = None

    def loss(self, nobs, naction, generator=None):
        self.seen = (nobs, naction)
        return naction.sum()

    def sample_actions(self, nobs, generator=None):
        return torch.zeros(next(iter(nobs.values())).shape[0], self.horizon, self.action_dim)


def test_method_loss_receives_normalized_first_frames():
    policy = _Recorder()
    batch = _batch(8)
    batch["obs"]["obs"] = torch.cat([batch["obs"]["obs"], batch["obs"]["obs"][:, :1] * 0 + 1e6], dim=1)  # 3 frames
    policy.compute_loss(batch)
    nobs, naction = policy.seen
    assert nobs["obs"].shape == (8, 2, 6)  # cut to the first To frames, the 1e6 frame dropped
    expected = policy.normalizer.normalize("obs", batch["obs"]["obs"][:, :2])
    torch.testing.assert_close(nobs["obs"], expected)
    torch.testing.assert_close(naction, policy.normalizer.normalize("action", batch["action"]))


@pytest.mark.parametrize("method", ["diffusion", "ibc", "regression"])
def test_every_method_refuses_malformed_batches_by_name(method):
    policy = _make(method)
    good = _batch(policy.horizon)
    with pytest.raises(KeyError, match="'obs' and 'action'"):
        policy.compute_loss({"obs": good["obs"]})
    with pytest.raises(KeyError, match="missing key 'obs'"):
        policy.compute_loss({"obs": {"state": good["obs"]["obs"]}, "action": good["action"]})
    with pytest.raises(ValueError, match=r"batch\['action'\] must be \(B, "):
        policy.compute_loss({"obs": good["obs"], "action": good["action"][:, :1]})
    with pytest.raises(ValueError, match=r"batch\['obs'\]\['obs'\]"):
        policy.compute_loss({"obs": {"obs": good["obs"]["obs"][:, :1]}, "action": good["action"]})


def test_normalizer_must_cover_every_key():
    from dpolicy.data.normalizer import Normalizer

    partial = Normalizer.from_spec({"obs": SPEC["obs"]["obs"]})
    with pytest.raises(ValueError, match=r"no entry for \['action'\]"):
        _Recorder(partial)
