"""Evaluation on the Push-T environments: reproducibility, reports, image observations."""

from __future__ import annotations

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dpolicy.evaluation import evaluate

KEYPOINTS_ENV = "envs/PushTKeypoints-v0"


class NoisyChaser:
    """Moves the agent toward the block's keypoint centre with torch noise (a stochastic policy)."""

    n_obs_steps = 2
    n_action_steps = 8

    def predict_action(self, obs):
        o = torch.as_tensor(obs["obs"], dtype=torch.float32)
        b = o.shape[0]
        agent = o[:, -1, -2:]
        block = o[:, -1, :18].reshape(b, 9, 2).mean(dim=1)
        ramp = torch.linspace(0.2, 1.2, self.n_action_steps)[None, :, None]
        plan = agent[:, None] + (block - agent)[:, None] * ramp + 15 * torch.randn(b, self.n_action_steps, 2)
        return {"action": plan, "action_pred": plan}


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_same_seeds_give_identical_results_in_any_vector_mode(tmp_path):
    kwargs = dict(seeds=[100000, 100001, 100002], n_envs=2, max_steps=40, progress=False)
    first = evaluate(NoisyChaser(), KEYPOINTS_ENV, vector="async", out_dir=tmp_path / "a", **kwargs)
    torch.randn(100)  # global RNG state outside the evaluation must not matter
    second = evaluate(NoisyChaser(), KEYPOINTS_ENV, vector="async", out_dir=tmp_path / "b", **kwargs)
    third = evaluate(NoisyChaser(), KEYPOINTS_ENV, vector="sync", out_dir=tmp_path / "c", **kwargs)
    rows = [read_rows(tmp_path / d / "episodes.csv") for d in "abc"]
    assert rows[0] == rows[1] == rows[2]
    assert len(rows[0]) == 3 and {r["length"] for r in rows[0]} == {"40"}
    for key in ("score", "success_rate", "mean_length", "n_policy_calls"):
        assert first[key] == second[key] == third[key]
    # a different policy seed changes the noise, hence the trajectories
    other = evaluate(NoisyChaser(), KEYPOINTS_ENV, vector="sync", policy_seed=1, **kwargs)
    assert other["mean_max_coverage"] != first["mean_max_coverage"]


def test_report_files_videos_and_grid(tmp_path):
    m = evaluate(NoisyChaser(), KEYPOINTS_ENV, [100000, 100001], n_envs=2, vector="sync", max_steps=12,
                 progress=False, out_dir=tmp_path, n_videos=1, metadata={"checkpoint": "none"})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("score", "success_rate", "success_ci95", "mean_length", "latency_p50_ms", "latency_p95_ms",
                "n_episodes", "wall_s"):
        assert key in m and key in saved
    assert saved["checkpoint"] == "none" and saved["n_episodes"] == 2
    video = tmp_path / "episode_000_seed_100000.mp4"
    assert saved["files"] == ["metrics.json", "episodes.csv", "final_frames.png", video.name]
    frames = iio.imread(video, index=None)
    assert frames.shape[0] == 13 and frames.shape[-1] == 3  # start + one frame per step
    grid = iio.imread(tmp_path / "final_frames.png")
    assert grid.shape == (128, 256, 3)


def test_image_observations_reach_the_policy_as_uint8_histories():
    class ImageHolder:
        n_obs_steps = 2

        def __init__(self):
            self.shapes = set()

        def predict_action(self, obs):
            image, agent = obs["image"], obs["agent_pos"]
            assert image.dtype == np.uint8
            self.shapes.add((image.shape, agent.shape))
            return {"action": np.repeat(agent[:, -1:], 4, axis=1)}

    policy = ImageHolder()
    m = evaluate(policy, "envs/PushTImage-v0", [100000, 100001], vector="sync", max_steps=5, progress=False)
    assert m["n_episodes"] == 2
    assert policy.shapes == {((2, 2, 96, 96, 3), (2, 2, 2))}


@pytest.mark.parametrize("threshold", [0, 3])
def test_replan_threshold_sets_the_number_of_plans(threshold):
    m = evaluate(NoisyChaser(), KEYPOINTS_ENV, [100000], vector="sync", max_steps=30, progress=False,
                 replan_threshold=threshold)
    executed_per_chunk = 8 - threshold
    assert m["n_policy_calls"] == -(-30 // executed_per_chunk)
