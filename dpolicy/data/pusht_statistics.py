"""Statistics that tell Push-T demonstration sets apart (``dpolicy data compare``).

Each figure is computed the same way for any dataset in the original layout (``data/state``,
``data/action``, ``data/keypoint``, ``data/n_contacts``), so a scripted expert's data can be held
against the human demonstrations on what a policy learns from: where episodes start and end, how
far commanded targets lead the agent, how smoothly they move, how much time is spent pushing,
how often the block is near a wall, and how predictable the action is from the observation
(the action spread between nearest-neighbour observations of different episodes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer
from envs.pusht.geometry import GOAL_POSE, WORKSPACE_SIZE, coverage

#: A keypoint closer than this to the arena's border puts the block "near a wall" (px).
NEAR_WALL_PX = 30.0
#: Below this change between consecutive commanded targets the command "holds still" (px).
STILL_PX = 0.5

#: Row order and descriptions of :func:`demonstration_statistics`.
FIGURES = {
    "episodes": "episodes",
    "steps": "steps",
    "length_mean": "episode length, mean (steps)",
    "start_distance": "start: block distance to the goal, mean (px)",
    "start_angle": "start: block angle to the goal, mean |rad|",
    "final_coverage": "end: goal coverage of the last state, mean",
    "lead_median": "|target - agent|, median (px)",
    "lead_p90": "|target - agent|, 90th percentile (px)",
    "lead_p99": "|target - agent|, 99th percentile (px)",
    "command_step_median": "|target change| per step, median (px)",
    "command_step_p90": "|target change| per step, 90th percentile (px)",
    "command_turn_median": "turn of the target's motion per step, median (rad)",
    "still_share": "steps whose target holds still",
    "contact_share": "steps in contact with the block",
    "near_wall_share": f"steps with the block within {NEAR_WALL_PX:g} px of a wall",
    "near_wall_episodes": "episodes that bring the block near a wall",
    "neighbour_distance": "nearest other-episode observation, median distance (px per keypoint)",
    "neighbour_action_spread": "|lead difference| to that neighbour, median (px)",
    "random_action_spread": "|lead difference| between random steps, median (px)",
    "predictability": "neighbour spread / random spread (lower: actions follow the observation)",
}


def _turns(displacement: np.ndarray) -> np.ndarray:
    """Angle between consecutive displacement vectors (rad), where both move."""
    a, b = displacement[:-1], displacement[1:]
    moving = (np.linalg.norm(a, axis=1) > STILL_PX) & (np.linalg.norm(b, axis=1) > STILL_PX)
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = (a * b).sum(axis=1)
    return np.abs(np.arctan2(cross, dot))[moving]


def demonstration_statistics(path: str | Path, samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """The figures of :data:`FIGURES` for the Push-T dataset at ``path``.

    ``samples`` steps (drawn with ``seed``) are matched to their nearest observation (block
    keypoints and agent position, px) in another episode for the predictability figures.
    """
    with ReplayBuffer.open(path) as buffer:
        missing = [k for k in ("state", "action", "keypoint", "n_contacts") if k not in buffer]
        if missing:
            raise DatasetError(f"{buffer.path}: a Push-T dataset needs data/{', data/'.join(missing)}; "
                             f"it has {buffer.keys()}")
        state = np.asarray(buffer["state"][:], dtype=np.float64)
        action = np.asarray(buffer["action"][:], dtype=np.float64)
        keypoint = np.asarray(buffer["keypoint"][:], dtype=np.float64).reshape(len(state), -1)
        contacts = np.asarray(buffer["n_contacts"][:]).reshape(len(state))
        ends = np.asarray(buffer.episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    episode = np.repeat(np.arange(len(ends)), ends - starts)
    agent = state[:, :2]
    lead = action - agent

    command_steps, turns = [], []
    for s, e in zip(starts, ends, strict=True):
        change = np.diff(action[s:e], axis=0)
        command_steps.append(np.linalg.norm(change, axis=1))
        turns.append(_turns(change))
    command_step = np.concatenate(command_steps)
    turn = np.concatenate(turns)

    border = np.minimum(keypoint, WORKSPACE_SIZE - keypoint).reshape(len(state), -1, 2).min(axis=(1, 2))
    near_wall = border < NEAR_WALL_PX

    goal = GOAL_POSE
    start_pose, end_pose = state[starts, 2:], state[ends - 1, 2:]
    start_angle = np.abs((start_pose[:, 2] - goal[2] + np.pi) % (2 * np.pi) - np.pi)

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(state), size=min(samples, len(state)), replace=False)
    observation = np.concatenate([keypoint, agent], axis=1)
    distances, spreads = [], []
    for i in picks:
        d = np.linalg.norm(observation - observation[i], axis=1)
        d[episode == episode[i]] = np.inf
        j = int(np.argmin(d))
        distances.append(d[j] / np.sqrt(observation.shape[1] / 2))
        spreads.append(np.linalg.norm(lead[i] - lead[j]))
    others = rng.choice(len(state), size=len(picks))
    random_spread = float(np.median(np.linalg.norm(lead[picks] - lead[others], axis=1)))
    neighbour_spread = float(np.median(spreads))

    return {
        "episodes": float(len(ends)),
        "steps": float(len(state)),
        "length_mean": float(np.mean(ends - starts)),
        "start_distance": float(np.mean(np.linalg.norm(start_pose[:, :2] - goal[:2], axis=1))),
        "start_angle": float(np.mean(start_angle)),
        "final_coverage": float(np.mean([coverage(pose) for pose in end_pose])),
        "lead_median": float(np.median(np.linalg.norm(lead, axis=1))),
        "lead_p90": float(np.percentile(np.linalg.norm(lead, axis=1), 90)),
        "lead_p99": float(np.percentile(np.linalg.norm(lead, axis=1), 99)),
        "command_step_median": float(np.median(command_step)),
        "command_step_p90": float(np.percentile(command_step, 90)),
        "command_turn_median": float(np.median(turn)) if len(turn) else float("nan"),
        "still_share": float(np.mean(command_step < STILL_PX)),
        "contact_share": float(np.mean(contacts > 0)),
        "near_wall_share": float(np.mean(near_wall)),
        "near_wall_episodes": float(np.mean([near_wall[s:e].any() for s, e in zip(starts, ends, strict=True)])),
        "neighbour_distance": float(np.median(distances)),
        "neighbour_action_spread": neighbour_spread,
        "random_action_spread": random_spread,
        "predictability": neighbour_spread / random_spread if random_spread > 0 else float("nan"),
    }


def format_comparison(columns: dict[str, dict[str, float]]) -> str:
    """A text table: one row per figure, one column per dataset."""
    names = list(columns)
    width = max(len(d) for d in FIGURES.values())
    lines = [f"{'':<{width}}  " + "  ".join(f"{Path(n).name[-24:]:>24}" for n in names)]
    for key, description in FIGURES.items():
        cells = []
        for name in names:
            value = columns[name][key]
            cells.append(f"{value:>24,.0f}" if key in ("episodes", "steps") else f"{value:>24.3f}")
        lines.append(f"{description:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
