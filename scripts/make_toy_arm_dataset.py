"""Record scripted-expert demonstrations of the toy arm (``envs/ToyArm-v0``) into a zarr dataset.

This is the "bring your own robot" example: an arm without a physics simulator whose
demonstrations become a dataset that ``dpolicy`` trains on. Copy it and swap in your own
environment and expert (or teleoperation). Episode ``i`` starts from reset seed ``--seed + i``;
an episode the expert fails is dropped (its seed is listed in ``failed_seeds``) and the next seed
is tried, until ``--episodes`` episodes are recorded.

Arrays, one row per control step (20 Hz), the observation taken before the action is sent:

- ``data/joint_pos`` (T, 7) float32: joint angles (rad)
- ``data/gripper`` (T, 1) float32: gripper opening (0 open .. 1 closed)
- ``data/cam_front``, ``data/cam_top`` (T, S, S, 3) uint8: the two cameras, S = ``--camera-size``
- ``data/action`` (T, 8) float32: target joint angles (7) and the gripper command
- ``meta/episode_ends``: the end step of each episode (exclusive)

Root attributes: ``env_id``, ``env_kwargs``, ``fps``, ``source``, ``seed``, ``episode_seeds`` and
``failed_seeds``.

Example::

    python scripts/make_toy_arm_dataset.py --out data/toy_arm.zarr --episodes 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import envs  # noqa: F401  (registers envs/ToyArm-v0)
from dpolicy.data.replay_buffer import ReplayBuffer
from envs.arm import ArmExpert

ENV_ID = "envs/ToyArm-v0"
OBS_KEYS = ("joint_pos", "gripper", "cam_front", "cam_top")


def record_episode(env: gym.Env, expert: ArmExpert, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from ``reset(seed=seed)``: ``({key: (T, ...)}, success)``."""
    obs, info = env.reset(seed=seed)
    expert.reset(seed)
    steps: dict[str, list] = {key: [] for key in (*OBS_KEYS, "action")}
    while True:
        action = expert.act(env.unwrapped.get_state())  # the expert sees the full state; the data keeps obs
        for key in OBS_KEYS:
            steps[key].append(obs[key])
        steps["action"].append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return {key: np.stack(values) for key, values in steps.items()}, bool(info["is_success"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to create (must not exist)")
    parser.add_argument("--episodes", type=int, default=200, help="successful episodes to record (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="reset seed of the first episode (default 0)")
    parser.add_argument("--camera-size", type=int, default=32, help="side of the camera images in px (default 32)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists():
        sys.exit(f"error: {args.out} already exists; choose another --out or remove it")
    env_kwargs = {"camera_size": args.camera_size}
    env = gym.make(ENV_ID, **env_kwargs)
    expert = ArmExpert()
    attrs = {"env_id": ENV_ID, "env_kwargs": env_kwargs, "fps": env.metadata["render_fps"],
             "source": "scripted expert (envs.arm.expert.ArmExpert)", "seed": args.seed,
             "episode_seeds": [], "failed_seeds": []}
    episode_seeds: list[int] = []
    failed_seeds: list[int] = []
    seed = args.seed
    with ReplayBuffer.create(args.out, attrs=attrs) as buffer, tqdm(total=args.episodes, unit="episode") as bar:
        while len(episode_seeds) < args.episodes:
            episode, success = record_episode(env, expert, seed)
            if success:
                episode_seeds.append(seed)
                # Committed with the episode, so that the metadata always matches the arrays.
                buffer.append_episode(episode, attrs={"episode_seeds": episode_seeds, "failed_seeds": failed_seeds})
                bar.update()
            else:
                failed_seeds.append(seed)
                if len(failed_seeds) > args.episodes:
                    sys.exit(f"error: the expert failed {len(failed_seeds)} episodes; {args.out} holds the "
                             f"{len(episode_seeds)} recorded so far")
            seed += 1
        n_steps = buffer.n_steps
    env.close()
    print(f"{args.out}: {args.episodes} episodes, {n_steps} steps, {len(failed_seeds)} failed seeds skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
