"""Rollout evaluation with a toy environment whose outcome is known in closed form."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from dpolicy.evaluation import EvaluationInterrupted, evaluate, protocol_seeds, wilson_interval

LINE_ENV_ID = "dpolicy_test/Line-v0"


class LineEnv(gym.Env):
    """Coverage grows by action[0] / 100 per step from seed / 100; reward ``clip(coverage / 0.95)``,
    success when coverage > 0.95.

    Refuses to step after its episode ended, or after a reset without a seed (an idle environment).
    """

    observation_space = gym.spaces.Box(-1e6, 1e6, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-10, 10, shape=(2,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(seed or 0)
        self.done = seed is None
        return np.array([self.x, 0.0], np.float32), {"is_success": False}

    def step(self, action):
        if self.done:
            raise RuntimeError("LineEnv stepped after its episode ended")
        self.x += float(action[0])
        coverage = min(max(self.x / 100, 0.0), 1.0)
        self.done = coverage > 0.95
        reward = min(1.0, coverage / 0.95)
        return np.array([self.x, 0.0], np.float32), reward, self.done, False, {"is_success": self.done}


if LINE_ENV_ID not in gym.registry:
    gym.register(LINE_ENV_ID, entry_point=LineEnv, max_episode_steps=1000)


class ConstantPolicy:
    """Pushes +1 per step, chunks of 4; can raise Ctrl-C at a given call."""

    n_obs_steps = 2

    def __init__(self, interrupt_at_call: int | None = None):
        self.batch_sizes: list[int] = []
        self.interrupt_at_call = interrupt_at_call

    def predict_action(self, obs):
        if self.interrupt_at_call is not None and len(self.batch_sizes) + 1 == self.interrupt_at_call:
            raise KeyboardInterrupt
        b = obs["obs"].shape[0]
        self.batch_sizes.append(b)
        return {"action": np.tile(np.array([1.0, 0.0], np.float32), (b, 4, 1))}


def test_scripted_policy_gets_the_expected_metrics_and_finished_envs_are_not_stepped(tmp_path):
    # seed s reaches coverage > 0.95 after 96 - s steps; limit 20 steps
    seeds = [80, 10, 76, 70]
    policy = ConstantPolicy()
    m = evaluate(policy, LINE_ENV_ID, seeds, n_envs=2, vector="sync", max_steps=20, progress=False,
                 out_dir=tmp_path)
    assert m["n_episodes"] == 4
    assert m["success_rate"] == pytest.approx(0.5)
    assert m["score"] == pytest.approx((1 + 0.30 / 0.95 + 1 + 0.90 / 0.95) / 4)
    assert m["mean_length"] == pytest.approx((16 + 20 + 20 + 20) / 4)
    assert m["success_ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    # env 0 plays seeds 80 then 76 and finishes 4 steps before env 1 (seeds 10 then 70); the
    # strict environment raises if it is stepped once more. Chunks stay in phase: one call per 4 steps.
    assert m["n_policy_calls"] == 10
    assert policy.batch_sizes == [2] * 9 + [1]
    with open(tmp_path / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["seed"]) for r in rows] == seeds
    assert [int(r["length"]) for r in rows] == [16, 20, 20, 20]
    assert [int(r["first_success_step"]) for r in rows] == [16, -1, 20, -1]
    assert [int(r["n_plans"]) for r in rows] == [4, 5, 5, 5]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["score"] == pytest.approx(m["score"]) and saved["interrupted"] is False


def test_ctrl_c_keeps_the_finished_episodes(tmp_path):
    # seed 90 succeeds after 6 steps (2 calls); the 4th call is interrupted during seed 10
    with pytest.raises(EvaluationInterrupted) as excinfo:
        evaluate(ConstantPolicy(interrupt_at_call=4), LINE_ENV_ID, [90, 10], n_envs=1, vector="sync",
                 progress=False, out_dir=tmp_path)
    m = excinfo.value.metrics
    assert m["interrupted"] is True and m["n_episodes"] == 1 and m["success_rate"] == 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["interrupted"] is True and saved["n_episodes"] == 1


def test_protocol_seeds():
    assert protocol_seeds("paper") == list(range(100000, 100050))
    assert len(protocol_seeds("large")) == 500 and protocol_seeds("large")[0] == 100000
    assert protocol_seeds("train")[:3] == [0, 1, 2]
    assert protocol_seeds("5,10-12") == [5, 10, 11, 12]
    assert protocol_seeds([3, 1]) == [3, 1]
    with pytest.raises(ValueError, match="bad seed list item"):
        protocol_seeds("papr")


def test_wilson_interval_bounds_solve_the_score_equation():
    # the Wilson bounds are the proportions x with (p_hat - x)^2 = z^2 x (1 - x) / n
    z = 1.959963984540054
    for k, n in [(32, 50), (1, 20), (480, 500)]:
        lo, hi = wilson_interval(k, n)
        assert 0 < lo < k / n < hi < 1
        for x in (lo, hi):
            assert (k / n - x) ** 2 == pytest.approx(z * z * x * (1 - x) / n, rel=1e-9)
    assert wilson_interval(0, 10) == pytest.approx((0.0, z * z / (10 + z * z)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z * z), 1.0))


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="vector must be one of"):
        evaluate(ConstantPolicy(), LINE_ENV_ID, [1], vector="threads", progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        evaluate(ConstantPolicy(), LINE_ENV_ID, [1], max_steps=0, progress=False)


def test_a_module_policy_runs_in_eval_mode_without_gradients_and_keeps_its_mode():
    class ModulePolicy(torch.nn.Module):
        n_obs_steps = 1

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.modes = []

        def predict_action(self, obs):
            self.modes.append((self.training, torch.is_grad_enabled()))
            b = len(obs["obs"])
            return {"action": self.weight * torch.ones(b, 2, 2)}

    policy = ModulePolicy().train()
    evaluate(policy, LINE_ENV_ID, [94], vector="sync", progress=False)
    assert policy.modes and set(policy.modes) == {(False, False)}
    assert policy.training
