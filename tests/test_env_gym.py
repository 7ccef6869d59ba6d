"""PushTEnv through gymnasium: registration, spaces, episodes, seeding, bad actions, vector envs."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.pusht.env import PushTEnv
from envs.pusht.geometry import GOAL_POSE, KEYPOINTS_BODY, body_to_world
from envs.pusht.sim import legacy_reset_state

IDS = {"envs/PushT-v0": "state", "envs/PushTKeypoints-v0": "keypoints", "envs/PushTImage-v0": "image"}
AT_GOAL = np.r_[100.0, 100.0, GOAL_POSE]


@pytest.mark.parametrize("env_id", list(IDS))
def test_registered_envs_make_reset_step_render(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    obs, info = env.reset(seed=100000)
    assert env.observation_space.contains(obs)
    assert env.unwrapped.obs_type == IDS[env_id]
    obs, reward, terminated, truncated, info = env.step(np.array([200.0, 200.0]))
    assert env.observation_space.contains(obs)
    assert 0.0 <= reward <= 1.0 and not terminated and not truncated
    assert set(info) >= {"coverage", "is_success", "block_pose", "goal_pose", "agent_pos", "n_contacts"}
    frame = env.render()
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    env.close()


@pytest.mark.filterwarnings("ignore:.*For Box action spaces:UserWarning")
@pytest.mark.filterwarnings("ignore:.*Not able to test alternative render modes:UserWarning")
@pytest.mark.parametrize("obs_type", ["state", "keypoints", "image"])
def test_passes_gymnasium_env_checker(obs_type):
    check_env(PushTEnv(obs_type, render_mode="rgb_array"), skip_render_check=False)


def test_observations_follow_the_conventions():
    state_env, kp_env, image_env = PushTEnv("state"), PushTEnv("keypoints"), PushTEnv("image")
    state, _ = state_env.reset(seed=5)
    keypoints, _ = kp_env.reset(seed=5)
    image_obs, _ = image_env.reset(seed=5)
    assert state.shape == (5,) and 0 <= state[4] < 2 * np.pi
    expected_kp = body_to_world(KEYPOINTS_BODY, state[2:5]).ravel()  # x0, y0, x1, y1, ...
    assert np.allclose(keypoints, np.r_[expected_kp, state[:2]])
    assert image_obs["image"].shape == (96, 96, 3) and image_obs["image"].dtype == np.uint8
    assert np.allclose(image_obs["agent_pos"], state[:2])


def test_seeded_reset_is_the_legacy_reset():
    env = PushTEnv()
    obs, _ = env.reset(seed=100000)
    drawn = legacy_reset_state(100000)
    assert np.array_equal(obs[:2], drawn[:2])  # agent is at rest: the reset substep does not move it
    obs2, _ = env.reset(seed=100000)
    assert np.array_equal(obs, obs2)


def test_reset_to_state_reproduces_the_pose_exactly():
    env = PushTEnv()
    state = np.array([50.0, 60.0, 222.99382, 381.59903, 3.0079994])
    obs, info = env.reset(options={"reset_to_state": state})
    assert np.allclose(obs, state, atol=1e-9)
    assert np.allclose(info["block_pose"], state[2:], atol=1e-9)


def test_success_terminates_with_full_reward():
    env = PushTEnv()
    _, info = env.reset(options={"reset_to_state": AT_GOAL})
    assert info["coverage"] == pytest.approx(1.0) and info["is_success"]
    _, reward, terminated, truncated, info = env.step([100.0, 100.0])
    assert reward == 1.0 and terminated and not truncated and info["is_success"]


def test_truncates_after_max_episode_steps():
    env = gym.make("envs/PushT-v0")
    env.reset(seed=1)
    for step in range(300):
        _, reward, terminated, truncated, _ = env.step([20.0, 20.0])
        assert truncated == (step == 299)
        assert not terminated
    assert PushTEnv(max_episode_steps=3).max_episode_steps == 3


def test_unseeded_resets_follow_the_first_seed():
    a, b = PushTEnv(), PushTEnv()
    first_a, _ = a.reset(seed=42)
    first_b, _ = b.reset(seed=42)
    assert np.array_equal(first_a, first_b)
    for _ in range(3):
        next_a, _ = a.reset()
        next_b, _ = b.reset()
        assert np.array_equal(next_a, next_b)
        assert not np.array_equal(next_a, first_a)


def test_seeded_episode_is_identical_in_another_process():
    code = (
        "import json, numpy as np, envs, gymnasium as gym\n"
        "env = gym.make('envs/PushT-v0'); obs, _ = env.reset(seed=123); out = [obs.tolist()]\n"
        "for i in range(20):\n"
        "    obs, *_ = env.step([250.0 + 5 * i, 300.0 - 7 * i]); out.append(obs.tolist())\n"
        "obs, _ = env.reset(); out.append(obs.tolist())\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    env = gym.make("envs/PushT-v0")
    obs, _ = env.reset(seed=123)
    here = [obs.tolist()]
    for i in range(20):
        obs, *_ = env.step([250.0 + 5 * i, 300.0 - 7 * i])
        here.append(obs.tolist())
    obs, _ = env.reset()
    here.append(obs.tolist())
    assert json.loads(result.stdout) == here


@pytest.mark.parametrize("action", [[np.nan, 1.0], [1.0, np.inf], [1.0, 2.0, 3.0], np.zeros((1, 2))])
def test_bad_actions_raise_and_leave_the_episode_intact(action):
    env = PushTEnv()
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)
    assert np.array_equal(env.get_state(), obs)


def test_far_actions_are_clipped_to_the_workspace():
    env = PushTEnv(render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(40):
        obs, *_ = env.step([-1000.0, 5000.0])
    assert np.allclose(obs[:2], (0.0, 512.0), atol=1e-3)
    assert np.array_equal(env.latest_action, (0.0, 512.0))


def test_bad_constructor_and_reset_arguments():
    with pytest.raises(ValueError, match="obs_type"):
        PushTEnv("pixels")
    with pytest.raises(ValueError, match="render_mode"):
        PushTEnv(render_mode="human")
    env = PushTEnv()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step([1.0, 1.0])
    with pytest.raises(ValueError, match="reset_to_state must be 5 finite numbers"):
        env.reset(options={"reset_to_state": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 512\]"):
        env.reset(options={"reset_to_state": [600.0, 2.0, 100.0, 100.0, 0.0]})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"legacy": True})


def test_render_overlays_and_sizes():
    env = PushTEnv(render_mode="rgb_array", render_size=512)
    env.reset(seed=0)
    plain = env.render()
    env.step([300.0, 300.0])
    env.action_path = np.array([[300.0, 300.0], [320.0, 310.0], [340.0, 330.0]])
    with_overlays = env.render()
    assert plain.shape == with_overlays.shape == (512, 512, 3)
    env.render_action = False
    without = env.render()
    assert (with_overlays != without).any(axis=-1).sum() > 50
    assert PushTEnv().render() is None


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
@pytest.mark.parametrize("env_id", ["envs/PushTKeypoints-v0", "envs/PushTImage-v0"])
def test_vector_envs(vector_cls, env_id):
    envs_ = vector_cls([lambda: gym.make(env_id) for _ in range(2)])
    try:
        obs, _ = envs_.reset(seed=[100000, 100001])
        single = PushTEnv(IDS[env_id])
        for i, seed in enumerate([100000, 100001]):
            expected, _ = single.reset(seed=seed)
            if IDS[env_id] == "image":
                assert np.array_equal(obs["image"][i], expected["image"])
            else:
                assert np.array_equal(obs[i], expected)
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs_.step(np.array([[200.0, 200.0], [300.0, 300.0]]))
        assert reward.shape == (2,) and terminated.shape == (2,)
        assert info["coverage"].shape == (2,)
        envs_.set_attr("action_path", [np.zeros((2, 2)), None])
    finally:
        envs_.close()
