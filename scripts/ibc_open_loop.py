"""Open-loop action error of a Push-T keypoint checkpoint on human demonstrations.

Feeds each window of the given episodes (every ``--stride``-th step) through the policy's own
``predict_action`` (the path rollouts use) and prints the distance between the first executed
action and the demonstrated one, in px. A policy with a small open-loop error that still fails in
closed loop fails by compounding, not by a broken inference path.

    python scripts/ibc_open_loop.py runs/ibc_local_s0/checkpoints/latest.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dpolicy.data.replay_buffer import ReplayBuffer
from dpolicy.paths import human_pusht_path
from dpolicy.training.checkpoint import load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", default=None, help="zarr dataset (default: the human Push-T demonstrations)")
    parser.add_argument("--episodes", default="200,201,202", help="episode indices, comma-separated")
    parser.add_argument("--stride", type=int, default=5, help="evaluate every this many steps")
    args = parser.parse_args()

    torch.set_num_threads(1)
    policy, _ = load_policy(args.checkpoint, device="cpu")
    policy.eval()
    generator = torch.Generator().manual_seed(0)
    to = policy.n_obs_steps
    errors = []
    dataset = args.dataset or human_pusht_path()
    if dataset is None:
        parser.error("the human Push-T dataset is not on this machine: pass --dataset or set DPOLICY_HUMAN_PUSHT")
    with ReplayBuffer.open(dataset) as buf:
        for index in (int(e) for e in args.episodes.split(",")):
            episode = buf.get_episode(index)
            keypoints = episode["keypoint"].reshape(len(episode["keypoint"]), -1)
            obs = np.concatenate([keypoints, episode["state"][:, :2]], axis=1).astype(np.float32)
            for t in range(to - 1, len(obs), args.stride):
                window = torch.as_tensor(obs[None, t - to + 1:t + 1])
                action = policy.predict_action({"obs": window}, generator=generator)["action"][0, 0].numpy()
                errors.append(float(np.linalg.norm(action - episode["action"][t])))
    print(f"{len(errors)} windows: open-loop action error mean {np.mean(errors):.1f} px, "
          f"median {np.median(errors):.1f} px")


if __name__ == "__main__":
    main()
