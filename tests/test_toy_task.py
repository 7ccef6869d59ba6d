"""A second task through the shared pieces: the 2-D point-reaching toy (envs/point) is recorded,
trained by the one trainer (with periodic rollouts), loaded from its checkpoint and evaluated by the
task-agnostic evaluator, all from its env file and config alone."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers envs/PointReach-v0)
from dpolicy.config import compose_config
from dpolicy.data.replay_buffer import ReplayBuffer
from dpolicy.evaluation import evaluate, protocol_seeds
from dpolicy.training.checkpoint import load_policy
from dpolicy.training.trainer import Trainer
from envs.point import expert_action


def record_expert(path, n_episodes: int = 40) -> None:
    env = gym.make("envs/PointReach-v0")
    with ReplayBuffer.create(path) as buffer:
        for seed in range(n_episodes):
            obs, _ = env.reset(seed=seed)
            states, actions = [], []
            for _ in range(30):
                action = expert_action(obs)
                states.append(obs)
                actions.append(action)
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
            buffer.append_episode({"state": np.array(states, np.float32), "action": np.array(actions, np.float32)})


@pytest.mark.slow
def test_point_reach_trains_and_evaluates_through_the_shared_pieces(tmp_path):
    data = tmp_path / "point.zarr"
    record_expert(data)
    cfg = compose_config("point_lowdim", [
        f"task.dataset.path={data}", f"run_dir={tmp_path / 'run'}", "device=cpu",
        "training.max_steps=600", "training.eval_every=300", "training.val_every=300",
        "training.checkpoint_every=300", "training.log_every=100", "training.progress=false",
        "training.compile=false", "training.bf16=false", "training.lr=1e-3", "training.warmup_steps=50",
        "policy.step_embed_dim=32", "training.eval.protocol=0-9"])
    summary = Trainer(cfg).train()
    assert summary["step"] == 600 and not summary["interrupted"]
    assert summary["top_k"], "the trainer's periodic rollouts scored no checkpoint"

    policy, saved_cfg = load_policy(tmp_path / "run" / "checkpoints" / "latest.safetensors")
    assert saved_cfg.task.env_id == "envs/PointReach-v0"
    metrics = evaluate(policy, saved_cfg.task.env_id, protocol_seeds("1000-1019"), vector="sync",
                       max_steps=int(saved_cfg.task.max_steps), out_dir=tmp_path / "eval", n_videos=1,
                       progress=False)
    assert metrics["success_rate"] >= 0.8, metrics
    assert metrics["score"] > 0.8
    files = set(metrics["files"])
    assert {"metrics.json", "episodes.csv", "final_frames.png"} <= files
    assert any(f.startswith("episode_000_seed_1000.") for f in files)  # a video from env.render()

