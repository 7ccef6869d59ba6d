#!/usr/bin/env bash
# Reproduces the IBC baseline rows of docs/results.md (the IBC row of the README's table):
# `ibc_pusht_lowdim` (energy MLP 4 x 256, 128 counter-examples, DFO with 512 samples x 3 rounds,
# one action per step) trained on the 206 human Push-T demonstrations once per training seed,
# with two budgets:
#   - 56 minutes (the README's row): evaluated on the large protocol (500 episodes) and the paper
#     protocol (50 episodes);
#   - 17 minutes (the config's own budget): evaluated on the paper protocol.
#
# Time on a 2-core CPU, per seed: 56 + 17 minutes of training; a paper-protocol evaluation takes
# about 2-3 minutes and a large-protocol one 17-22 minutes (DFO scores 512 samples per action).
# Three seeds: about 5.5 hours.
#
# Needs the human dataset: ../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the checkout,
# or DPOLICY_HUMAN_PUSHT pointing to it.
#
# Environment variables:
#   SEEDS     training seeds (default "0 1 2")
#   RUN_ROOT  where the run directories go (default runs): $RUN_ROOT/ibc_hour_s<seed> (56 min) and
#             $RUN_ROOT/ibc_s<seed> (17 min)
#
# An existing run directory is resumed (resume=true) instead of retrained.
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
RUN_ROOT=${RUN_ROOT:-runs}

resume_flag() {  # prints resume=true when the run already holds a checkpoint
    if [[ -f "$1/checkpoints/latest.safetensors" ]]; then echo "resume=true"; fi
}

for S in $SEEDS; do
    HOUR="$RUN_ROOT/ibc_hour_s$S"
    SHORT="$RUN_ROOT/ibc_s$S"

    echo "== seed $S: IBC, 56 minutes -> $HOUR"
    # shellcheck disable=SC2046
    dpolicy train --config ibc_pusht_lowdim seed="$S" run_dir="$HOUR" \
        training.max_minutes=56 training.max_steps=14000 $(resume_flag "$HOUR")
    dpolicy eval "$HOUR/checkpoints/latest.safetensors" --protocol large --vector sync --threads 2 --videos 0
    dpolicy eval "$HOUR/checkpoints/latest.safetensors" --protocol paper --vector sync --threads 2

    echo "== seed $S: IBC, 17 minutes -> $SHORT"
    # shellcheck disable=SC2046
    dpolicy train --config ibc_pusht_lowdim seed="$S" run_dir="$SHORT" $(resume_flag "$SHORT")
    dpolicy eval "$SHORT/checkpoints/latest.safetensors" --protocol paper --vector sync --threads 1
done

echo "Per-run results: $RUN_ROOT/ibc{_hour,}_s<seed>/eval/latest_*/metrics.json"
echo "Table over the seeds: scripts/reproduce_score_plot.sh"
