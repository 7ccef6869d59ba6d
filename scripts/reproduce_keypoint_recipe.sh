#!/usr/bin/env bash
# Reproduces the default keypoint recipe of docs/results.md (the first row of the README's table):
# Diffusion Policy with the default `pusht_lowdim` config, trained on the 206 human Push-T
# demonstrations once per training seed, each final EMA checkpoint evaluated on the paper protocol
# (seeds 100000..100049) and the large protocol (seeds 100000..100499), plus its chunk latency at
# batch 1 (eager and TorchScript, DDIM-10 and DDIM-5).
#
# Time on a 2-core CPU, per seed: about 40 minutes of training (add ~2 minutes of torch.compile on a
# fresh machine), under a minute for the paper protocol, a few minutes for the large one, and a
# minute of latency measurements. Three seeds: about 2.5 hours. Run it alone on the machine: the
# published figures were measured that way, and a shared machine trains fewer steps in the 56-minute
# budget.
#
# Needs the human dataset: ../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the checkout,
# or DPOLICY_HUMAN_PUSHT pointing to it.
#
# Environment variables:
#   SEEDS     training seeds (default "0 1 2")
#   RUN_ROOT  where the run directories go (default runs); one per seed: $RUN_ROOT/<prefix>_s<seed>
#   CONFIG    pusht_lowdim (default: the human demonstrations, prefix cpu_hour) or
#             pusht_lowdim_expert (the embedded expert dataset re-planning every 2 actions, prefix
#             expert_hour); it needs no human dataset
#   OVERRIDES extra training overrides, e.g. "training.max_minutes=100 training.eval_every=0" to
#             train the full 70,000-step schedule on a CPU without bf16 units
#
# An existing run directory is resumed (resume=true) instead of retrained; a finished run then
# returns at once and only the evaluations run again.
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
RUN_ROOT=${RUN_ROOT:-runs}
CONFIG=${CONFIG:-pusht_lowdim}
case "$CONFIG" in
    pusht_lowdim) PREFIX=cpu_hour ;;
    pusht_lowdim_expert) PREFIX=expert_hour ;;
    *) echo "CONFIG must be pusht_lowdim or pusht_lowdim_expert, not $CONFIG" >&2; exit 2 ;;
esac

resume_flag() {  # prints resume=true when the run already holds a checkpoint
    if [[ -f "$1/checkpoints/latest.safetensors" ]]; then echo "resume=true"; fi
}

for S in $SEEDS; do
    RUN="$RUN_ROOT/${PREFIX}_s$S"
    CKPT="$RUN/checkpoints/latest.safetensors"

    echo "== seed $S: train -> $RUN"
    # shellcheck disable=SC2046,SC2086
    dpolicy train --config "$CONFIG" seed="$S" run_dir="$RUN" ${OVERRIDES:-} $(resume_flag "$RUN")

    echo "== seed $S: evaluate"
    dpolicy eval "$CKPT" --protocol paper --vector sync --threads 2
    dpolicy eval "$CKPT" --protocol large --vector sync --threads 2 --videos 0

    echo "== seed $S: chunk latency at batch 1, one thread"
    dpolicy bench infer --checkpoint "$CKPT" --threads 1 --batch-sizes 1 \
        --schedules ddim:10 ddim:5                                          # eager latency
    dpolicy export "$CKPT" --out "$RUN/export" --threads 1                   # TorchScript, DDIM-10
    dpolicy export "$CKPT" --out "$RUN/export5" --threads 1 --steps 5        # TorchScript, DDIM-5
done

echo "Per-run results: $RUN_ROOT/${PREFIX}_s<seed>/eval/latest_{paper,large}/metrics.json"
echo "Table and plot over the seeds: scripts/reproduce_score_plot.sh"
