"""Open-loop replay of the human demonstrations through the controller and the Push-T environment.

A scripted "policy" hands out a demonstration's recorded actions in chunks of 8; the controller
executes them in order from the episode's recorded start state. Where the simulation stays
faithful to the recording (block within 2 px and 0.02 rad of every recorded pose), the replay
must reach the coverage the recording reached. Measured: 205 of the 206 episodes stay faithful
(episode 50 drifts ~10 px), with coverage differences below 0.002 at matched steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from dpolicy.control import ChunkController
from dpolicy.evaluation.vector import make_env
from envs.pusht.geometry import coverage

CHUNK = 8
POSITION_TOLERANCE_PX = 2.0
ANGLE_TOLERANCE_RAD = 0.02


class ReplayPolicy:
    """Returns the next ``CHUNK`` recorded actions at every planning call."""

    n_obs_steps = 2

    def __init__(self, actions: np.ndarray):
        self.actions = actions
        self.next = 0

    def predict_action(self, obs):
        assert obs["obs"].shape == (1, self.n_obs_steps, 5)
        chunk = self.actions[self.next:self.next + CHUNK]
        self.next += len(chunk)
        return {"action": chunk[None]}


def replay_episode(env, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simulated states and coverages after each recorded action, from the recorded start."""
    obs, _ = env.reset(options={"reset_to_state": states[0]})
    controller = ChunkController(ReplayPolicy(actions), n_envs=1)
    controller.observe(obs[None])
    sim_states, coverages = [], []
    for _ in range(len(actions)):
        obs, _, _, _, info = env.step(controller.act()[0])
        controller.observe(obs[None])
        sim_states.append(obs)
        coverages.append(info["coverage"])
    return np.array(sim_states), np.array(coverages)


@pytest.mark.human_data
def test_replaying_human_demonstrations_reaches_the_recorded_coverage(human_dataset_path):
    root = zarr.open_group(str(human_dataset_path), mode="r")
    ends = root["meta/episode_ends"][:]
    all_states, all_actions = root["data/state"][:], root["data/action"][:]
    env = make_env("envs/PushT-v0", max_steps=1000)
    faithful, worst_matched_gap = 0, 0.0
    for episode, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)):
        states, actions = all_states[start:end], all_actions[start:end]
        sim_states, sim_cov = replay_episode(env, states, actions)
        # state[t + 1] was recorded after action[t]; the state after the last action was not recorded
        recorded_next = states[1:]
        position_error = np.linalg.norm(sim_states[:-1, 2:4] - recorded_next[:, 2:4], axis=1)
        angle_error = np.abs((sim_states[:-1, 4] - recorded_next[:, 4] + np.pi) % (2 * np.pi) - np.pi)
        drifted = position_error.max(initial=0) > POSITION_TOLERANCE_PX
        if drifted or angle_error.max(initial=0) > ANGLE_TOLERANCE_RAD:
            continue
        faithful += 1
        recorded_cov = np.array([coverage(s[2:5]) for s in recorded_next])
        worst_matched_gap = max(worst_matched_gap, np.abs(sim_cov[:-1] - recorded_cov).max(initial=0))
        assert sim_cov.max() >= recorded_cov.max(initial=0) - 1e-6, f"episode {episode}"
    print(f"\nreplay: {faithful}/{len(ends)} episodes faithful; worst coverage gap at matched steps "
          f"{worst_matched_gap:.5f}")
    assert faithful >= 200
    assert worst_matched_gap < 0.005
