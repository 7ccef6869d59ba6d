#!/usr/bin/env bash
# Reproduces the image recipe of docs/results.md: Diffusion Policy with the default `pusht_image`
# config (96x96 frames + agent position), trained on the 206 human Push-T demonstrations once per
# training seed; each final EMA checkpoint evaluated on the paper protocol (seeds 100000..100049)
# and the large protocol (seeds 100000..100499), its chunk latency at batch 1 on one thread
# (eager, TorchScript and ONNX, encoder included), and a real-time run at 10 Hz beside the
# synchronous evaluation.
#
# Time on a 2-core CPU, per seed: about 1.75 hours of training in float32, under an hour on a CPU
# with native bf16 (add ~3 minutes of torch.compile on a fresh machine), under a minute for the paper
# protocol, several minutes for the large one, a few minutes of latency measurements and about 12
# minutes of real-time control (3,000 steps at 10 Hz, plus the synchronous episodes). Run it alone on
# the machine: a shared machine trains fewer steps in the budget.
#
# Needs the human dataset: ../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the checkout,
# or DPOLICY_HUMAN_PUSHT pointing to it.
#
# Environment variables:
#   SEEDS     training seeds (default "42 0 1"; 42 is the config's own seed)
#   RUN_ROOT  where the run directories go (default runs); one per seed: $RUN_ROOT/image_s<seed>
#
# An existing run directory is resumed (resume=true) instead of retrained; a finished run then
# returns at once and only the evaluations run again.
set -euo pipefail

SEEDS=${SEEDS:-"42 0 1"}
RUN_ROOT=${RUN_ROOT:-runs}

resume_flag() {  # prints resume=true when the run already holds a checkpoint
    if [[ -f "$1/checkpoints/latest.safetensors" ]]; then echo "resume=true"; fi
}

for S in $SEEDS; do
    RUN="$RUN_ROOT/image_s$S"
    CKPT="$RUN/checkpoints/latest.safetensors"

    echo "== seed $S: train -> $RUN"
    # shellcheck disable=SC2046
    dpolicy train --config pusht_image seed="$S" run_dir="$RUN" $(resume_flag "$RUN")

    echo "== seed $S: evaluate"
    dpolicy eval "$CKPT" --protocol paper --vector sync --threads 2
    dpolicy eval "$CKPT" --protocol large --vector sync --threads 2 --videos 0

    echo "== seed $S: chunk latency at batch 1, one thread (encoder included)"
    dpolicy bench infer --checkpoint "$CKPT" --threads 1 --batch-sizes 1 --schedules ddim:10
    dpolicy export "$CKPT" --out "$RUN/export" --threads 1                    # TorchScript
    dpolicy export "$CKPT" --out "$RUN/export_onnx" --format onnx --threads 1  # ONNX

    echo "== seed $S: real-time control at 10 Hz"
    dpolicy bench realtime --checkpoint "$CKPT" --steps 3000 --json "$RUN/realtime.json"
done

echo "Per-run results: $RUN_ROOT/image_s<seed>/eval/latest_{paper,large}/metrics.json, realtime.json"
echo "Training throughput of the image presets: dpolicy bench train --experiments pusht_image --variants matmul-fp32 compiled-fp32"
