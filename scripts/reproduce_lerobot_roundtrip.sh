#!/usr/bin/env bash
# Reproduces the LeRobot round trip figures of docs/data.md: the human Push-T set exported as a
# LeRobotDataset v3.0 folder, imported back, compared array by array (low-dim values bit for bit,
# images by PSNR), and the keypoint recipe trained for 10,000 steps on the original and on the
# re-imported store (same seed), each scored on the paper protocol.
#
# Time on a 2-core CPU: about 1.5 minutes for the round trip, 2 x 11 minutes of training and
# 2 x 30 s of evaluation. Needs the human dataset (../shared/datasets/pusht/pusht_cchi_v7_replay.zarr
# next to the checkout, or DPOLICY_HUMAN_PUSHT) and `pip install -e ".[lerobot]"`.
#
# Environment variables:
#   RUN_ROOT  where the folders and runs go (default runs)
#   TRAIN     0 to skip the two trainings (default 1)
set -euo pipefail

RUN_ROOT=${RUN_ROOT:-runs}
TRAIN=${TRAIN:-1}
HUMAN=${DPOLICY_HUMAN_PUSHT:-../shared/datasets/pusht/pusht_cchi_v7_replay.zarr}

dpolicy data export-lerobot "$HUMAN" "$RUN_ROOT/lerobot_pusht" --overwrite \
    --task "Push the T-shaped block onto the T-shaped target."
dpolicy data import-lerobot "$RUN_ROOT/lerobot_pusht" "$RUN_ROOT/pusht_from_lerobot.zarr" --overwrite
du -sh "$RUN_ROOT/lerobot_pusht" "$RUN_ROOT/lerobot_pusht/videos"

python - "$HUMAN" "$RUN_ROOT/pusht_from_lerobot.zarr" <<'PY'
import sys

import numpy as np

from dpolicy.data.replay_buffer import ReplayBuffer

with ReplayBuffer.open(sys.argv[1]) as original, ReplayBuffer.open(sys.argv[2]) as imported:
    assert np.array_equal(original.episode_ends, imported.episode_ends), "episode ends differ"
    for key in ("state", "keypoint", "action", "n_contacts"):
        same = np.array_equal(original.load(key), imported.load(key))
        print(f"{key:10s} bit-identical: {same}")
    psnr = []
    for episode in range(original.n_episodes):
        a = original.get_episode(episode, keys=["img"])["img"].astype(np.float64)
        b = imported.get_episode(episode, keys=["img"])["img"].astype(np.float64)
        mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
        psnr.append(10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))
    psnr = np.concatenate(psnr)
    print(f"img        PSNR mean {psnr.mean():.1f} dB, min {psnr.min():.1f} dB over {len(psnr)} frames")
PY

if [ "$TRAIN" = 1 ]; then
    for NAME in original lerobot; do
        DATA=$HUMAN
        [ "$NAME" = lerobot ] && DATA="$RUN_ROOT/pusht_from_lerobot.zarr"
        dpolicy train task.dataset.path="$DATA" run_dir="$RUN_ROOT/lerobot_cmp_$NAME" \
            training.max_steps=10000 training.eval_every=0
        dpolicy eval "$RUN_ROOT/lerobot_cmp_$NAME/checkpoints/latest.safetensors" --protocol paper --threads 1 \
            --videos 0
    done
fi
