"""The receding-horizon controller: history padding, chunk order, re-planning, batches, resets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpolicy.control import ChunkController, observation_dict
from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.base import Policy


class EchoPolicy:
    """Scripted policy: action k of a chunk is (latest observed value, k); logs every call."""

    def __init__(self, n_obs_steps: int, n_action_steps: int, horizon: int | None = None):
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.horizon = horizon or n_obs_steps + n_action_steps
        self.calls: list[np.ndarray] = []  # the "obs" window of each call

    def predict_action(self, obs):
        window = np.asarray(obs["obs"])
        self.calls.append(window.copy())
        b = window.shape[0]
        k = np.arange(self.n_action_steps, dtype=np.float32)
        action = np.stack([np.repeat(window[:, -1:, 0], self.n_action_steps, axis=1),
                           np.broadcast_to(k, (b, self.n_action_steps))], axis=-1)
        pred = np.zeros((b, self.horizon, 2), dtype=np.float32)
        return {"action": action, "action_pred": pred}


def scalar_obs(values) -> np.ndarray:
    """Batch of 1-D observations whose single feature is the given value."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


def test_history_is_padded_with_the_first_observation_then_slides():
    policy = EchoPolicy(n_obs_steps=3, n_action_steps=1)
    ctrl = ChunkController(policy, n_envs=2)
    ctrl.observe(scalar_obs([10, 20]))
    np.testing.assert_array_equal(ctrl.observation_window()["obs"][..., 0], [[10, 10, 10], [20, 20, 20]])
    ctrl.observe(scalar_obs([11, 21]))
    ctrl.observe(scalar_obs([12, 22]))
    ctrl.observe(scalar_obs([13, 23]))
    np.testing.assert_array_equal(ctrl.observation_window()["obs"][..., 0], [[11, 12, 13], [21, 22, 23]])


def test_chunk_is_executed_in_order_then_replanned_from_the_latest_observation():
    policy = EchoPolicy(n_obs_steps=2, n_action_steps=4)
    ctrl = ChunkController(policy, n_envs=1)
    executed = []
    for t in range(10):
        ctrl.observe(scalar_obs([t]))
        executed.append(ctrl.act()[0])
    executed = np.array(executed)
    # planned at t = 0, 4, 8 from observation t; actions 0..3 of each chunk in order
    np.testing.assert_array_equal(executed[:, 0], [0, 0, 0, 0, 4, 4, 4, 4, 8, 8])
    np.testing.assert_array_equal(executed[:, 1], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    assert len(policy.calls) == 3
    np.testing.assert_array_equal(policy.calls[0][0, :, 0], [0, 0])  # padded start
    np.testing.assert_array_equal(policy.calls[1][0, :, 0], [3, 4])


def test_replan_threshold_plans_before_the_queue_runs_out():
    policy = EchoPolicy(n_obs_steps=2, n_action_steps=4)
    ctrl = ChunkController(policy, n_envs=1, replan_threshold=1)
    executed = []
    for t in range(9):
        ctrl.observe(scalar_obs([t]))
        executed.append(ctrl.act()[0])
    executed = np.array(executed)
    # a new chunk whenever one action is left: 3 of every 4 are executed
    np.testing.assert_array_equal(executed[:, 0], [0, 0, 0, 3, 3, 3, 6, 6, 6])
    np.testing.assert_array_equal(executed[:, 1], [0, 1, 2, 0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(ctrl.pending_actions(0), [[6, 3]])  # dropped at the next plan


def test_n_action_steps_truncates_the_chunk():
    policy = EchoPolicy(n_obs_steps=1, n_action_steps=4)
    ctrl = ChunkController(policy, n_envs=1, n_action_steps=2)
    executed = []
    for t in range(4):
        ctrl.observe(scalar_obs([t]))
        executed.append(ctrl.act()[0])
    np.testing.assert_array_equal(np.array(executed), [[0, 0], [0, 1], [2, 0], [2, 1]])


def test_one_batched_call_for_exactly_the_environments_that_need_a_chunk():
    policy = EchoPolicy(n_obs_steps=2, n_action_steps=3)
    ctrl = ChunkController(policy, n_envs=3)
    ctrl.observe(scalar_obs([0, 100, 200]))
    ctrl.act()
    assert ctrl.plan_batch_sizes == [3]
    # environment 1's episode ends; it restarts with a new observation while the others go on
    ctrl.reset([1])
    ctrl.observe(scalar_obs([1, 201]), env_ids=[0, 2])
    ctrl.observe(scalar_obs([500]), env_ids=[1])
    actions = ctrl.act()
    assert ctrl.plan_batch_sizes == [3, 1]
    np.testing.assert_array_equal(policy.calls[-1][0, :, 0], [500, 500])  # fresh history for env 1 only
    np.testing.assert_array_equal(actions, [[0, 1], [500, 0], [200, 1]])
    np.testing.assert_array_equal(ctrl.observation_window([0])["obs"][0, :, 0], [0, 1])


def test_inactive_environments_are_neither_planned_nor_advanced():
    policy = EchoPolicy(n_obs_steps=1, n_action_steps=2)
    ctrl = ChunkController(policy, n_envs=2)
    ctrl.observe(scalar_obs([0, 10]))
    ctrl.act()
    for t in range(1, 5):
        ctrl.observe(scalar_obs([t]), env_ids=[0])
        ctrl.act([0])
    assert ctrl.steps.tolist() == [5, 1]
    assert ctrl.queued().tolist() == [1, 1]
    assert ctrl.plan_batch_sizes == [2, 1, 1]


def test_dict_observations_keep_their_keys_and_vector_observations_become_obs():
    assert set(observation_dict({"image": np.zeros((1, 4, 4, 3)), "agent_pos": np.zeros((1, 2))})) == {
        "image", "agent_pos"}
    assert set(observation_dict(np.zeros((1, 20)))) == {"obs"}

    class DictPolicy:
        n_obs_steps = 2

        def predict_action(self, obs):
            assert obs["image"].dtype == np.uint8 and obs["image"].shape == (2, 2, 4, 4, 3)
            return {"action": obs["agent_pos"][:, -1:, :]}

    ctrl = ChunkController(DictPolicy(), n_envs=2)
    ctrl.observe({"image": np.zeros((2, 4, 4, 3), np.uint8), "agent_pos": np.array([[1.0, 2.0], [3.0, 4.0]])})
    np.testing.assert_array_equal(ctrl.act(), [[1, 2], [3, 4]])
    assert ctrl.last_prediction[1].shape == (1, 2)


class LastObsPolicy(Policy):
    """A package Policy whose plan repeats the newest normalized agent position."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the policy a device

    def loss(self, nobs, naction, generator=None):
        raise AssertionError("the controller never trains a policy")

    def sample_actions(self, nobs, generator=None):
        last = nobs["obs"][:, -1, -2:]
        return last[:, None, :].expand(-1, self.horizon, -1).clone()


def test_works_with_a_package_policy_returning_tensors():
    spec = {"obs": {"obs": {"shape": [20], "type": "low_dim"}}, "action": {"shape": [2]}}
    normalizer = Normalizer.from_spec({"obs": spec["obs"]["obs"], "action": {"shape": [2]}})
    policy = LastObsPolicy(spec, normalizer, horizon=16, n_obs_steps=2, n_action_steps=8)
    ctrl = ChunkController(policy, n_envs=2)
    obs = np.zeros((2, 20), np.float32)
    obs[:, -2:] = [[100, 200], [300, 400]]
    ctrl.observe(obs)
    action = ctrl.act()
    assert isinstance(action, np.ndarray) and action.shape == (2, 2)
    np.testing.assert_allclose(action, [[100, 200], [300, 400]])
    assert ctrl.queued().tolist() == [7, 7]
    assert ctrl.last_prediction[0].shape == (16, 2)
    assert len(ctrl.plan_latencies_s) == 1 and ctrl.plan_latencies_s[0] > 0


def test_bad_inputs_give_clear_errors():
    policy = EchoPolicy(n_obs_steps=2, n_action_steps=4)
    with pytest.raises(ValueError, match="replan_threshold"):
        ChunkController(policy, replan_threshold=4, n_action_steps=4)
    with pytest.raises(TypeError, match="n_obs_steps"):
        ChunkController(object.__new__(type("P", (), {"predict_action": lambda self, o: None})))
    ctrl = ChunkController(policy, n_envs=2)
    with pytest.raises(RuntimeError, match="no observation"):
        ctrl.act()
    with pytest.raises(ValueError, match=r"expected shape \(2, 1\)"):
        ctrl.observe(np.zeros((2, 1)))
        ctrl.observe(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Ta>=1"):
        ctrl.set_chunks([0], np.zeros((2, 4, 2)))
    ctrl = ChunkController(policy, n_envs=1, replan_threshold=5)
    ctrl.observe(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="threshold must be below"):
        ctrl.act()


def test_torch_outputs_on_any_device_are_accepted():
    class TorchPolicy:
        n_obs_steps = 1

        def predict_action(self, obs):
            return {"action": torch.ones(len(obs["obs"]), 3, 2)}

    ctrl = ChunkController(TorchPolicy(), n_envs=1)
    ctrl.observe(np.zeros((1, 5)))
    assert ctrl.act().dtype == np.float32
