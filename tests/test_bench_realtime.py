"""`dpolicy bench realtime` helpers: the robot comes from the task config, scores from the robot's info."""

from __future__ import annotations

import numpy as np
import pytest

from dpolicy.bench.realtime import SlowedPolicy, make_robot
from dpolicy.config import compose_config
from dpolicy.control.robot import Command, SimulatedRobot


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("config, obs_keys", [("pusht_lowdim", {"obs"}), ("pusht_image", {"image", "agent_pos"})])
def test_the_benchmark_robot_is_built_from_the_task_config(config, obs_keys):
    cfg = compose_config(config, ["task.dataset.path=null"])
    robot = make_robot(cfg, rate_hz=20.0)
    try:
        assert isinstance(robot, SimulatedRobot)
        assert robot.task_hz == 10.0 and robot.speed == 2.0 and robot.control_hz == 20.0  # one step per tick
        assert robot.max_step == 100.0 == cfg.task.max_command_step
        assert robot.max_episode_steps == cfg.task.max_steps == 300
        np.testing.assert_allclose(robot.action_low, [0.0, 0.0])
        np.testing.assert_allclose(robot.action_high, [512.0, 512.0])
        clock = FakeClock()
        robot.clock = clock
        first = robot.reset(seed=100000)
        assert set(first.data) == obs_keys
        robot.command(Command(np.array([256.0, 256.0]), clock.now))
        clock.now = 0.25  # 5 steps of 0.05 s
        info = robot.observe().info
        # the generic info the benchmark scores from
        assert info["steps"] == 5 and 0.0 <= info["score"] <= 1.0 and info["first_success_step"] == -1
        assert not info["terminated"] and not info["truncated"] and "coverage" in info["env_info"]
    finally:
        robot.env.close()


def test_a_task_without_a_command_step_gets_no_cap():
    from omegaconf import open_dict

    cfg = compose_config("pusht_lowdim", ["task.dataset.path=null"])
    with open_dict(cfg):
        del cfg.task["max_command_step"]
    robot = make_robot(cfg, rate_hz=10.0)
    robot.env.close()
    assert robot.max_step is None and robot.speed == 1.0


def test_slowed_policy_rejects_a_negative_delay_and_forwards_attributes():
    class Policy:
        n_obs_steps = 2

        def predict_action(self, obs):
            return {"action": obs}

    with pytest.raises(ValueError, match="delay_s"):
        SlowedPolicy(Policy(), -1.0)
    policy = SlowedPolicy(Policy(), 0.0)
    assert policy.n_obs_steps == 2 and policy.predict_action("x") == {"action": "x"}
