"""Golden outputs: a seeded tiny policy of each method gives the stored loss, predicted chunk and
per-parameter gradient statistics on a fixed batch. Refactors must keep these green unchanged.

Regenerate (only when a change is *meant* to alter the numbers, and say so in the commit):
``DPOLICY_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.diffusion import DiffusionPolicy
from dpolicy.policies.ibc import IbcPolicy
from dpolicy.policies.regression import MseRegressionPolicy

ARTIFACTS = Path(__file__).parent / "artifacts"
SPEC = {"obs": {"obs": {"shape": [6], "type": "low_dim"}}, "action": {"shape": [2]}}
REGENERATE = os.environ.get("DPOLICY_REGENERATE_GOLDEN") == "1"


def _normalizer() -> Normalizer:
    rng = np.random.default_rng(7)
    return Normalizer.fit({"obs": rng.uniform(0, 512, (128, 6)), "action": rng.uniform(0, 512, (128, 2))})


def _batch(horizon: int) -> dict:
    gen = torch.Generator().manual_seed(11)
    return {"obs": {"obs": torch.rand(8, 2, 6, generator=gen) * 512},
            "action": torch.rand(8, horizon, 2, generator=gen) * 512}


def _make(method: str):
    torch.manual_seed(0)
    if method == "diffusion":
        return DiffusionPolicy(SPEC, _normalizer(), horizon=8, n_obs_steps=2, n_action_steps=4,
                               down_dims=(16, 32), kernel_size=3, n_groups=4, step_embed_dim=16,
                               inference_scheduler="ddim", num_inference_steps=4)
    if method == "ibc":
        return IbcPolicy(SPEC, _normalizer(), horizon=3, n_obs_steps=2, n_action_steps=2, hidden_dim=32,
                         n_layers=3, dropout=0.1, n_counter_examples=16, dfo_samples=64, dfo_iters=2)
    return MseRegressionPolicy(SPEC, _normalizer(), horizon=8, n_obs_steps=2, n_action_steps=4, hidden_dim=32)


def _measure(method: str) -> dict:
    policy = _make(method)
    batch = _batch(policy.horizon)
    policy.train()
    torch.manual_seed(123)  # IBC draws its counter-examples and dropout masks from the global stream
    kwargs = {"generator": torch.Generator().manual_seed(5)} if method == "diffusion" else {}
    loss = policy.compute_loss(batch, **kwargs)
    loss.backward()
    grads = {name: [float(p.grad.norm()), float(p.grad.mean())]
             for name, p in policy.named_parameters() if p.grad is not None}
    policy.eval()
    chunk = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(9))["action"]
    return {"loss": float(loss.detach()), "chunk": chunk.tolist(), "grads": grads}


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in a fixed order
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("method", ["diffusion", "ibc", "regression"])
def test_policy_matches_golden_outputs(method, one_thread):
    measured = _measure(method)
    path = ARTIFACTS / f"golden_{method}.json"
    if REGENERATE:
        path.write_text(json.dumps(measured, indent=1) + "\n")
    stored = json.loads(path.read_text())
    assert measured["loss"] == pytest.approx(stored["loss"], rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(measured["chunk"], stored["chunk"], rtol=1e-5, atol=1e-3)  # px
    assert sorted(measured["grads"]) == sorted(stored["grads"]), "parameter names changed"
    for name, (norm, mean) in stored["grads"].items():
        got_norm, got_mean = measured["grads"][name]
        assert got_norm == pytest.approx(norm, rel=1e-4, abs=1e-8), name
        assert got_mean == pytest.approx(mean, rel=1e-3, abs=1e-8), name
