#!/usr/bin/env bash
# Reproduces the ablation rows of the recipe table in docs/results.md, the steps from the
# [64, 128, 256] UNet to the default recipe:
#   eager42k  the previous default: UNet [32, 64, 128], lr 3e-4, eager, 42k steps, Ta 8
#             (and the same weights run with Ta 10)
#   lr1e-4    the same UNet at the paper's lr 1e-4 (and its weights with DDIM-5)
#   wide      UNet [64, 128, 256] at lr 1e-4, one thread, 24k-step cosine
#   wide_2t   UNet [64, 128, 256] at lr 1e-4, two threads, 30k steps (the table has seed 0 only)
# All eager, with rollouts every 2,500 steps; each final EMA checkpoint is evaluated on the paper
# (50 episodes) and large (500 episodes) protocols, as the default recipe is.
#
# Time on a 2-core CPU, per seed: 42-47 minutes for each [32, 64, 128] run and up to 56 minutes for
# each [64, 128, 256] run (the trainer's 56-minute guard), plus a few minutes of evaluation each:
# about 3.5 hours per seed, 10-11 hours for three. Each published [32, 64, 128] seed trained alone
# on the machine; the published [64, 128, 256] seeds trained on one core beside an IBC training.
#
# Needs the human dataset: ../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the checkout,
# or DPOLICY_HUMAN_PUSHT pointing to it.
#
# Environment variables:
#   SEEDS     training seeds (default "0 1 2")
#   RUN_ROOT  where the run directories go (default runs): $RUN_ROOT/<variant>_s<seed>
#   VARIANTS  which variants to run (default "eager42k lr1e-4 wide wide_2t")
#
# An existing run directory is resumed (resume=true) instead of retrained.
set -euo pipefail

SEEDS=${SEEDS:-"0 1 2"}
RUN_ROOT=${RUN_ROOT:-runs}
VARIANTS=${VARIANTS:-"eager42k lr1e-4 wide wide_2t"}

EAGER="training.compile=false training.eval_every=2500 n_action_steps=8"

resume_flag() {  # prints resume=true when the run already holds a checkpoint
    if [[ -f "$1/checkpoints/latest.safetensors" ]]; then echo "resume=true"; fi
}

evaluate() {  # CHECKPOINT THREADS [extra eval options for the large protocol...]
    local ckpt=$1 threads=$2
    shift 2
    dpolicy eval "$ckpt" --protocol paper --vector sync --threads "$threads"
    dpolicy eval "$ckpt" --protocol large --vector sync --threads "$threads" --videos 0 "$@"
}

for S in $SEEDS; do
    for V in $VARIANTS; do
        RUN="$RUN_ROOT/${V}_s$S"
        CKPT="$RUN/checkpoints/latest.safetensors"
        echo "== seed $S: $V -> $RUN"
        # shellcheck disable=SC2086,SC2046
        case "$V" in
            eager42k)   # the previous default
                dpolicy train seed="$S" run_dir="$RUN" $EAGER training.max_steps=42000 $(resume_flag "$RUN")
                evaluate "$CKPT" 2
                dpolicy eval "$CKPT" --protocol large --vector sync --threads 2 --videos 0 \
                    --action-steps 10 --out "$RUN/eval/latest_large_ta10"           # its Ta-10 row
                ;;
            lr1e-4)
                dpolicy train seed="$S" run_dir="$RUN" $EAGER training.max_steps=42000 training.lr=1.0e-4 \
                    $(resume_flag "$RUN")
                evaluate "$CKPT" 2
                dpolicy eval "$CKPT" --protocol large --vector sync --threads 2 --videos 0 \
                    --inference-steps 5 --out "$RUN/eval/latest_large_ddim5"        # the DDIM-5 row
                ;;
            wide)       # the default before that: UNet [64, 128, 256], one thread
                dpolicy train seed="$S" run_dir="$RUN" $EAGER 'policy.down_dims=[64,128,256]' training.lr=1.0e-4 \
                    training.num_threads=1 training.max_steps=24000 $(resume_flag "$RUN")
                evaluate "$CKPT" 1
                ;;
            wide_2t)    # UNet [64, 128, 256], two threads, 30k steps
                dpolicy train seed="$S" run_dir="$RUN" $EAGER 'policy.down_dims=[64,128,256]' training.lr=1.0e-4 \
                    training.max_steps=30000 $(resume_flag "$RUN")
                evaluate "$CKPT" 2
                ;;
            *)
                echo "unknown variant $V (use eager42k, lr1e-4, wide, wide_2t)" >&2
                exit 2
                ;;
        esac
    done
done

echo "Table and plot over the seeds: scripts/reproduce_score_plot.sh"
