"""The point-reaching toy task: gymnasium conformance, seeding, the expert, rendering, bad actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.point import PointReachEnv, expert_action


def play(env, policy, seed: int):
    """One episode from ``reset(seed=seed)``; returns (success, steps, rewards)."""
    obs, info = env.reset(seed=seed)
    rewards = []
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        rewards.append(reward)
        if terminated or truncated:
            return info["is_success"], len(rewards), rewards


@pytest.mark.filterwarnings("ignore:.*For Box action spaces:UserWarning")
def test_gymnasium_env_checker_passes():
    # Through the registry, so that the checker also tries the other render mode (it needs the spec).
    env = gym.make("envs/PointReach-v0", render_mode="rgb_array").unwrapped
    assert isinstance(env, PointReachEnv)
    check_env(env, skip_render_check=False)


def test_registered_id_makes_the_env():
    env = gym.make("envs/PointReach-v0", render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert obs.shape == (4,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert isinstance(env.unwrapped, PointReachEnv) and env.unwrapped.max_episode_steps == 30
    assert env.render().shape == (64, 64, 3)
    env.close()


def test_seeded_reset_is_deterministic_and_far_enough():
    a, b = PointReachEnv(), PointReachEnv()
    starts = set()
    for seed in range(30):
        obs_a, _ = a.reset(seed=seed)
        obs_b, _ = b.reset(seed=seed)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert np.all((obs_a >= 0.0) & (obs_a <= 1.0))
        assert np.linalg.norm(obs_a[2:] - obs_a[:2]) >= 0.3 - 1e-6
        starts.add(tuple(obs_a))
    assert len(starts) == 30
    # Unseeded resets continue the seeded generator: the same sequence again.
    a.reset(seed=5)
    b.reset(seed=5)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])


def test_the_expert_succeeds_from_20_seeds_within_the_limit():
    env = PointReachEnv()
    for seed in range(20):
        success, steps, rewards = play(env, expert_action, seed)
        assert success, f"expert failed from seed {seed}"
        assert steps <= 15 < env.max_episode_steps
        assert all(0.0 <= r <= 1.0 for r in rewards)
        assert np.all(np.diff(rewards) > 0)  # straight at the goal: every step gets closer
        assert rewards[-1] > 0.8


def test_a_random_policy_rarely_succeeds_and_is_truncated():
    env = PointReachEnv()
    env.action_space.seed(0)
    outcomes = [play(env, lambda obs: env.action_space.sample(), seed) for seed in range(50)]
    assert sum(success for success, _, _ in outcomes) <= 15
    assert any(steps == 30 and not success for success, steps, _ in outcomes)
    assert all(steps <= 30 for _, steps, _ in outcomes)


def test_steps_are_limited_and_targets_clipped_to_the_box():
    env = PointReachEnv()
    obs, _ = env.reset(seed=3)
    new, *_ = env.step(np.array([5.0, -5.0]))  # clipped to (1, 0), then at most 0.1 toward it
    assert np.linalg.norm(new[:2] - obs[:2]) == pytest.approx(0.1, abs=1e-6)
    np.testing.assert_array_equal(new[2:], obs[2:])
    target = new[:2] + np.array([0.03, -0.02], dtype=np.float32)
    reached, *_ = env.step(target)  # within one step: reached exactly
    np.testing.assert_allclose(reached[:2], target, atol=1e-6)


def test_render_shape_dtype_and_colours():
    env = PointReachEnv(render_mode="rgb_array")
    env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    goal = (env.goal * 64).astype(int)
    point = (env.position * 64).astype(int)
    assert frame[goal[1], goal[0]].tolist() == [40, 180, 60]     # green goal at (row y, column x)
    assert frame[point[1], point[0]].tolist() == [40, 80, 220]   # blue point
    big = PointReachEnv(render_mode="rgb_array", render_size=128)
    big.reset(seed=1)
    assert big.render().shape == (128, 128, 3)
    assert PointReachEnv().render() is None


@pytest.mark.parametrize("action", [np.array([np.nan, 0.5]), np.array([0.5, np.inf]), np.zeros(3),
                                    np.zeros((1, 2)), "up", None])
def test_bad_actions_raise(action):
    env = PointReachEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_step_before_reset_and_bad_arguments_raise():
    with pytest.raises(RuntimeError, match="reset"):
        PointReachEnv().step(np.zeros(2))
    with pytest.raises(ValueError, match="render_mode"):
        PointReachEnv(render_mode="human")
    with pytest.raises(ValueError, match="options"):
        PointReachEnv().reset(seed=0, options={"goal": (0.5, 0.5)})
