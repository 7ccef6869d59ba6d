"""The toy 7-DoF arm: gymnasium conformance, seeding, limits, cameras, the expert, the dataset script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.arm import ArmExpert, ToyArmEnv
from envs.arm import render as cameras
from envs.arm.env import CUBE_SIZE, CUBE_X_RANGE, CUBE_Y_RANGE, GRIPPER_CLOSED, STATE_SIZE
from envs.arm.kinematics import HOME, JOINT_HIGH, JOINT_LOW, end_effector, forward_kinematics, jacobian

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_toy_arm_dataset.py"


def play(env: ToyArmEnv, expert: ArmExpert, seed: int, limit: int | None = None) -> tuple[bool, int, list]:
    """The expert from the env's current state until success or ``limit`` steps: (success, steps, rewards)."""
    expert.reset(seed)
    rewards = []
    for _ in range(limit or env.max_episode_steps):
        _, reward, terminated, _, info = env.step(expert.act(env.get_state()))
        rewards.append(reward)
        if terminated:
            break
    return bool(info["is_success"]), len(rewards), rewards


def state_with(joints=HOME, gripper=0.0, cube=(0.5, 0.15), yaw=0.3, grasped=False) -> np.ndarray:
    return np.concatenate([joints, [gripper, cube[0], cube[1], CUBE_SIZE / 2, yaw, float(grasped)]])


@pytest.mark.filterwarnings("ignore:.*For Box action spaces:UserWarning")
def test_gymnasium_env_checker_passes():
    # Through the registry, so that the checker also tries the other render mode (it needs the spec).
    env = gym.make("envs/ToyArm-v0", render_mode="rgb_array").unwrapped
    assert isinstance(env, ToyArmEnv)
    check_env(env, skip_render_check=False)


def test_registered_id_makes_the_env_with_the_documented_spaces():
    env = gym.make("envs/ToyArm-v0", render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    shapes = {key: (value.shape, value.dtype) for key, value in obs.items()}
    assert shapes == {"joint_pos": ((7,), np.float32), "gripper": ((1,), np.float32),
                      "cam_front": ((32, 32, 3), np.uint8), "cam_top": ((32, 32, 3), np.uint8)}
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (8,) and env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low[:7], JOINT_LOW.astype(np.float32))
    assert env.action_space.low[7] == 0.0 and env.action_space.high[7] == 1.0
    base = env.unwrapped
    assert base.metadata["render_fps"] == 20 and base.max_episode_steps == 100
    assert base.metadata["episode_info_keys"] == ("distance",) and isinstance(info["distance"], float)
    assert env.render().shape == (128, 256, 3)
    assert gym.make("envs/ToyArm-v0", camera_size=48).reset(seed=0)[0]["cam_top"].shape == (48, 48, 3)
    env.close()


def test_seeded_reset_is_deterministic_and_places_the_cube_in_front():
    a, b = ToyArmEnv(), ToyArmEnv()
    cubes = set()
    for seed in range(20):
        obs_a, _ = a.reset(seed=seed)
        obs_b, _ = b.reset(seed=seed)
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        np.testing.assert_array_equal(a.get_state(), b.get_state())
        x, y, z = a.cube_pos
        assert CUBE_X_RANGE[0] <= x <= CUBE_X_RANGE[1] and CUBE_Y_RANGE[0] <= y <= CUBE_Y_RANGE[1]
        assert z == CUBE_SIZE / 2 and a.gripper == 0.0 and not a.grasped
        assert np.all(np.abs(a.joint_pos - HOME) <= 0.1 + 1e-12)
        cubes.add((x, y))
    assert len(cubes) == 20
    a.reset(seed=5)
    b.reset(seed=5)
    np.testing.assert_array_equal(a.reset()[0]["joint_pos"], b.reset()[0]["joint_pos"])  # unseeded: same sequence


def test_kinematics_jacobian_matches_finite_differences():
    q = np.random.default_rng(0).uniform(JOINT_LOW, JOINT_HIGH)
    J, position, _ = jacobian(q)
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = 1e-6
        np.testing.assert_allclose((end_effector(q + dq)[0] - position) / 1e-6, J[:3, i], atol=1e-4)
    points, rotation, _, _ = forward_kinematics(HOME)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
    assert rotation[2, 2] == pytest.approx(-1.0) and points[-1][2] > 0.3  # home: hand down, above the table


def test_joints_and_gripper_respect_their_limits_and_speeds():
    env = ToyArmEnv()
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    step, gripper_step = 1.5 / 20, 2.5 / 20
    for i in range(90):
        # random targets, mostly outside the limits (clipped), then one far beyond the upper limits
        action = rng.uniform(-6.0, 6.0, 8) if i < 30 else np.full(8, 6.0)
        before, gripper_before = env.joint_pos.copy(), env.gripper
        obs, *_ = env.step(action)
        assert np.all(np.abs(env.joint_pos - before) <= step + 1e-12)
        assert np.all((env.joint_pos >= JOINT_LOW) & (env.joint_pos <= JOINT_HIGH))
        assert abs(env.gripper - gripper_before) <= gripper_step + 1e-12 and 0.0 <= env.gripper <= 1.0
        assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(env.hold_action(), np.append(JOINT_HIGH, 1.0))
    target = np.append(env.joint_pos - 0.05, 0.9)  # within one step: reached exactly
    env.step(target)
    np.testing.assert_allclose(env.hold_action(), target, atol=1e-12)


def test_hold_action_keeps_the_arm_still_and_state_round_trips():
    env = ToyArmEnv()
    env.reset(seed=2)
    env.step(np.append(HOME + 0.3, 0.6))
    state = env.get_state()
    assert state.shape == (STATE_SIZE,)
    obs, *_ = env.step(env.hold_action())
    np.testing.assert_array_equal(env.get_state(), state)
    other = ToyArmEnv()
    restored, _ = other.reset_to_state(state)
    for key in obs:
        np.testing.assert_array_equal(restored[key], obs[key])
    with pytest.raises(ValueError, match="reset_to_state"):
        other.reset(options={"reset_to_state": np.zeros(5)})
    with pytest.raises(ValueError, match="joint limits"):
        other.reset_to_state(state_with(joints=np.full(7, 3.0)))
    with pytest.raises(ValueError, match="options"):
        other.reset(options={"cube": (0.5, 0.0)})


@pytest.mark.parametrize("action", [np.full(8, np.nan), np.append(np.zeros(7), np.inf), np.zeros(7),
                                    np.zeros((1, 8)), "open", None])
def test_bad_actions_raise(action):
    env = ToyArmEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_step_before_reset_and_bad_arguments_raise():
    with pytest.raises(RuntimeError, match="reset"):
        ToyArmEnv().step(np.zeros(8))
    with pytest.raises(ValueError, match="render_mode"):
        ToyArmEnv(render_mode="human")
    with pytest.raises(ValueError, match="camera_size"):
        ToyArmEnv(camera_size=4)
    assert ToyArmEnv().render() is None


@pytest.mark.parametrize("cube", [(0.5, 0.15), (0.4, -0.2), (0.58, 0.0)])
def test_cameras_show_the_cube_and_the_arm_where_the_kinematics_put_them(cube):
    env = ToyArmEnv(camera_size=64)
    obs, _ = env.reset_to_state(state_with(cube=cube, yaw=0.4))
    points, rotation, _, _ = forward_kinematics(env.joint_pos)
    for key, view in (("cam_front", cameras.FRONT), ("cam_top", cameras.TOP)):
        image = obs[key]
        col, row = view.project(env.cube_pos, 64).astype(int)
        assert image[row, col].tolist() == list(cameras.CUBE_COLOR), key
        assert np.count_nonzero(np.all(image == cameras.CUBE_COLOR, axis=-1)) >= 4
    # The forearm seen from the front, a fingertip (beyond the hand) seen from above.
    col, row = cameras.FRONT.project((points[2] + points[3]) / 2, 64).astype(int)
    assert obs["cam_front"][row, col].tolist() == list(cameras.LINK_COLOR)
    _, tips = cameras.gripper_segments(points[3], rotation, env.gripper)
    col, row = cameras.TOP.project(tips[np.argmax(tips[:, 0])], 64).astype(int)
    assert obs["cam_top"][row, col].tolist() == list(cameras.GRIPPER_COLOR)
    # Moved elsewhere, the cube is no longer at the old pixel.
    moved, _ = env.reset_to_state(state_with(cube=(cube[0], -cube[1] - 0.1), yaw=0.4))
    col, row = cameras.TOP.project(np.array([*cube, CUBE_SIZE / 2]), 64).astype(int)
    assert moved["cam_top"][row, col].tolist() != list(cameras.CUBE_COLOR)


def test_render_is_both_views_side_by_side():
    env = ToyArmEnv(render_mode="rgb_array", render_size=64, camera_size=64)
    obs, _ = env.reset(seed=3)
    frame = env.render()
    assert frame.shape == (64, 128, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:, :64], obs["cam_front"])
    np.testing.assert_array_equal(frame[:, 64:], obs["cam_top"])


def test_the_expert_succeeds_from_20_seeds_with_rewards_in_range():
    env, expert = ToyArmEnv(), ArmExpert()
    lengths = []
    for seed in range(20):
        env.reset(seed=seed)
        success, steps, rewards = play(env, expert, seed)
        assert success, f"expert failed from seed {seed}"
        assert all(0.0 <= r <= 1.0 for r in rewards) and rewards[-1] == 1.0 and rewards[0] < 0.5
        lengths.append(steps)
    assert max(lengths) < 80
    # Grasped: the cube follows the gripper, and opening it drops the cube back onto the table.
    lift = env.hold_action()
    lift[1] -= 0.3  # shoulder back: the hand rises
    for _ in range(5):
        env.step(lift)
    assert env.grasped and env.cube_pos[2] > 0.05
    np.testing.assert_allclose(env.cube_pos, env.grasp_point())
    open_action = env.hold_action()
    open_action[7] = 0.0
    for _ in range(5):
        _, reward, terminated, _, info = env.step(open_action)
    assert not env.grasped and not terminated and not info["is_success"] and reward < 1.0
    assert env.cube_pos[2] == CUBE_SIZE / 2


def test_episodes_of_the_expert_differ_by_seed():
    env, expert = ToyArmEnv(), ArmExpert()
    paths = []
    for seed in (0, 1):
        env.reset_to_state(state_with(cube=(0.5, 0.1), yaw=0.2))
        expert.reset(seed)
        paths.append([env.step(expert.act(env.get_state()))[0]["joint_pos"] for _ in range(15)])
    assert not np.allclose(paths[0], paths[1])


def test_the_expert_succeeds_from_perturbed_and_random_states():
    env, expert = ToyArmEnv(max_episode_steps=200), ArmExpert()
    rng = np.random.default_rng(0)
    for seed in range(6):
        env.reset(seed=seed)
        state = env.get_state()
        state[:7] = rng.uniform(JOINT_LOW, JOINT_HIGH)  # anywhere in the joint box
        state[7] = rng.uniform()
        env.reset_to_state(state)
        success, steps, _ = play(env, expert, seed)
        assert success and steps <= 120, f"seed {seed}: success={success} after {steps} steps"
    for seed in range(6):  # knocked mid-episode: the expert picks up from where the arm is
        env.reset(seed=seed)
        expert.reset(seed)
        for _ in range(20):
            env.step(expert.act(env.get_state()))
        state = env.get_state()
        state[:7] = np.clip(state[:7] + rng.uniform(-0.4, 0.4, 7), JOINT_LOW, JOINT_HIGH)
        state[7] = GRIPPER_CLOSED  # closed, away from the cube: it must open, come back and close again
        env.reset_to_state(state)
        success, steps, _ = play(env, expert, seed, limit=100)
        assert success, f"seed {seed}: failed after the knock"


def test_the_env_runs_as_a_simulated_robot():
    from dpolicy.control.robot import Command, SimulatedRobot

    class Clock:
        now = 100.0

        def __call__(self):
            return self.now

    clock = Clock()
    robot = SimulatedRobot(gym.make("envs/ToyArm-v0"), speed=1.0, clock=clock)
    assert robot.control_hz == 20.0
    first = robot.reset(seed=4)
    assert set(first.data) == {"joint_pos", "gripper", "cam_front", "cam_top"}
    hold = robot.hold_action()
    np.testing.assert_allclose(hold[:7], first.data["joint_pos"], atol=1e-6)
    robot.command(Command(hold, clock.now))
    clock.now += 0.125  # 2.5 control steps
    obs = robot.observe()
    assert obs.info["steps"] == 2 and obs.info["env_info"]["is_success"] is False
    np.testing.assert_allclose(obs.data["joint_pos"], first.data["joint_pos"])


def _load_script():
    spec = importlib.util.spec_from_file_location("make_toy_arm_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_script_writes_the_documented_arrays(tmp_path, capsys):
    from dpolicy.data.replay_buffer import ReplayBuffer

    script = _load_script()
    out = tmp_path / "toy_arm.zarr"
    assert script.main(["--out", str(out), "--episodes", "2", "--seed", "7", "--camera-size", "24"]) == 0
    with ReplayBuffer.open(out) as buffer:
        assert buffer.n_episodes == 2
        n = buffer.n_steps
        shapes = {key: (buffer[key].shape, buffer[key].dtype) for key in buffer.keys()}
        assert shapes == {"joint_pos": ((n, 7), np.float32), "gripper": ((n, 1), np.float32),
                          "cam_front": ((n, 24, 24, 3), np.uint8), "cam_top": ((n, 24, 24, 3), np.uint8),
                          "action": ((n, 8), np.float32)}
        attrs = dict(buffer.attrs)
        assert attrs["env_id"] == "envs/ToyArm-v0" and attrs["fps"] == 20 and attrs["seed"] == 7
        assert attrs["episode_seeds"] == [7, 8] and attrs["failed_seeds"] == []
        assert attrs["env_kwargs"] == {"camera_size": 24}
        episode = buffer.get_episode(0)
    # The recorded observations are the env's: replaying the actions reproduces them.
    env = ToyArmEnv(camera_size=24)
    obs, _ = env.reset(seed=7)
    for t in range(3):
        for key in obs:
            np.testing.assert_array_equal(episode[key][t], obs[key])
        obs, *_ = env.step(episode["action"][t])
    assert episode["gripper"][-1, 0] < GRIPPER_CLOSED <= episode["action"][-1, 7]  # ends on the closing step
    with pytest.raises(SystemExit, match="already exists"):
        script.main(["--out", str(out)])
    with pytest.raises(SystemExit):
        script.main(["--help"])
    assert "data/cam_front" in capsys.readouterr().out
