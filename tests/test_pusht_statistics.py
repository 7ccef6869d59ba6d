"""`dpolicy data compare`: the demonstration statistics measure what they say."""

from __future__ import annotations

import numpy as np

from dpolicy.cli import main
from dpolicy.data.pusht_statistics import demonstration_statistics
from dpolicy.data.replay_buffer import ReplayBuffer
from envs.pusht.geometry import GOAL_POSE, keypoints_world


def _dataset(path, lead: float, step: float, near_wall: bool):
    """Two episodes of 20 steps: the agent moves `step` px per step along x, the target leads it by
    `lead` px; the block sits at the goal, or in the bottom-left corner."""
    buf = ReplayBuffer.create(path)
    for episode in range(2):
        agent = np.stack([100 + step * np.arange(20), np.full(20, 200.0 + 50 * episode)], axis=1)
        pose = np.array([60.0, 60.0, 0.0]) if near_wall else GOAL_POSE
        state = np.concatenate([agent, np.tile(pose, (20, 1))], axis=1)
        keypoint = np.tile(keypoints_world(pose), (20, 1, 1))
        buf.append_episode({"state": state.astype(np.float32), "action": (agent + [lead, 0]).astype(np.float32),
                            "keypoint": keypoint.astype(np.float32), "n_contacts": np.zeros((20, 1), np.float32)})
    buf.close()
    return path


def test_the_figures_measure_leads_motion_walls_and_coverage(tmp_path):
    figures = demonstration_statistics(_dataset(tmp_path / "a.zarr", lead=12.0, step=5.0, near_wall=False))
    assert (figures["episodes"], figures["steps"], figures["length_mean"]) == (2, 40, 20)
    assert figures["lead_median"] == np.float32(12.0) and figures["lead_p99"] < 12.01
    assert abs(figures["command_step_median"] - 5.0) < 1e-4 and figures["command_turn_median"] < 1e-6
    assert figures["still_share"] == 0.0 and figures["near_wall_share"] == 0.0
    assert figures["final_coverage"] > 0.99 and figures["start_distance"] < 1e-6

    cornered = demonstration_statistics(_dataset(tmp_path / "b.zarr", lead=12.0, step=0.0, near_wall=True))
    assert cornered["still_share"] == 1.0 and cornered["near_wall_share"] == 1.0
    assert cornered["near_wall_episodes"] == 1.0 and cornered["final_coverage"] < 0.05


def test_the_command_prints_one_column_per_dataset(tmp_path, capsys):
    a = _dataset(tmp_path / "first.zarr", lead=12.0, step=5.0, near_wall=False)
    b = _dataset(tmp_path / "second.zarr", lead=30.0, step=5.0, near_wall=True)
    assert main(["data", "compare", str(a), str(b), "--samples", "10", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "first.zarr" in out and "second.zarr" in out and "|target - agent|, median (px)" in out
    assert (tmp_path / "c.json").exists()
