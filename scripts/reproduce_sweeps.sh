#!/usr/bin/env bash
# Reproduces the sweeps of docs/results.md ("What mattered, and what did not"): evaluations of
# trained checkpoints with other inference settings, plus the lr 1e-3 probe on the default recipe.
# The checkpoints come from scripts/reproduce_keypoint_recipe.sh (cpu_hour_s*) and
# scripts/reproduce_recipe_ablations.sh (eager42k_s*, lr1e-4_s*, wide_s*, wide_2t_s*).
#
#   actions    executed actions per plan, K = 4, 6, 8, 10, 12, 15 on eager42k seed 0 and
#              K = 8, 10, 12 on seeds 1 and 2 (large protocol)
#   steps      denoising steps at inference (DDIM-3/4/5/10/20, DPM-Solver-5) on the selection
#              seeds 0..99, wide seed 0
#   replan     re-planning after 4 of the 8 actions, DDIM-10 and DDIM-5, selection seeds, wide seed 0
#   ddpm       DDPM-100 against DDIM-10 on seeds 100000..100099, lr1e-4 seed 0
#   selection  the best periodic checkpoint against the final one on the 450 seeds 100050..100499,
#              wide_2t seed 0
#   lr1e-3     the default recipe at lr 1e-3, seeds 1 and 2 (trains: about 40 minutes per seed)
#
# Time on a 2-core CPU: each 500-episode evaluation takes a few minutes, each 100-episode one under
# a minute (DDPM-100 about ten times longer); "actions" is about 12 large evaluations; "lr1e-3"
# adds 80 minutes of training. Everything: about 3 hours.
#
# Environment variables:
#   RUN_ROOT  where the run directories are (default runs)
#   SWEEPS    which sweeps to run (default "actions steps replan ddpm selection lr1e-3")
#   LR_SEEDS  seeds of the lr 1e-3 probe (default "1 2")
set -euo pipefail

RUN_ROOT=${RUN_ROOT:-runs}
SWEEPS=${SWEEPS:-"actions steps replan ddpm selection lr1e-3"}
LR_SEEDS=${LR_SEEDS:-"1 2"}

EVAL=(--vector sync --threads 2 --videos 0)

ckpt() { echo "$RUN_ROOT/$1/checkpoints/latest.safetensors"; }

for SWEEP in $SWEEPS; do
    echo "== $SWEEP"
    case "$SWEEP" in
        actions)
            for K in 4 6 8 10 12 15; do
                dpolicy eval "$(ckpt eager42k_s0)" --protocol large "${EVAL[@]}" --action-steps "$K" \
                    --out "$RUN_ROOT/eager42k_s0/eval/latest_large_ta$K"
            done
            for S in 1 2; do
                for K in 8 10 12; do
                    dpolicy eval "$(ckpt "eager42k_s$S")" --protocol large "${EVAL[@]}" --action-steps "$K" \
                        --out "$RUN_ROOT/eager42k_s$S/eval/latest_large_ta$K"
                done
            done
            dpolicy eval "$(ckpt wide_s0)" --protocol large --vector sync --threads 1 --videos 0 \
                --action-steps 12 --out "$RUN_ROOT/wide_s0/eval/latest_large_ta12"
            ;;
        steps)
            for K in 3 4 5 10 20; do
                dpolicy eval "$(ckpt wide_s0)" --protocol 0-99 "${EVAL[@]}" --sampler ddim --inference-steps "$K" \
                    --out "$RUN_ROOT/wide_s0/eval/selection_ddim$K"
            done
            dpolicy eval "$(ckpt wide_s0)" --protocol 0-99 "${EVAL[@]}" --sampler dpm_solver --inference-steps 5 \
                --out "$RUN_ROOT/wide_s0/eval/selection_dpm5"
            ;;
        replan)
            for K in 10 5; do
                dpolicy eval "$(ckpt wide_s0)" --protocol 0-99 "${EVAL[@]}" --sampler ddim --inference-steps "$K" \
                    --replan-threshold 4 --out "$RUN_ROOT/wide_s0/eval/selection_ddim${K}_replan4"
            done
            ;;
        ddpm)
            dpolicy eval "$(ckpt lr1e-4_s0)" --protocol 100000-100099 "${EVAL[@]}" --sampler ddpm --inference-steps 100 \
                --out "$RUN_ROOT/lr1e-4_s0/eval/ddpm100"
            dpolicy eval "$(ckpt lr1e-4_s0)" --protocol 100000-100099 "${EVAL[@]}" \
                --out "$RUN_ROOT/lr1e-4_s0/eval/ddim10"
            ;;
        selection)
            # the best periodic checkpoint by its 50-seed rollout score, then the final one, on 450 unseen seeds
            BEST=$(find "$RUN_ROOT/wide_2t_s0/checkpoints" -name 'step=*-score=*.safetensors' | sort -t= -k3 -r | head -n 1)
            dpolicy eval "$BEST" --protocol 100050-100499 "${EVAL[@]}" --out "$RUN_ROOT/wide_2t_s0/eval/best_unseen"
            dpolicy eval "$(ckpt wide_2t_s0)" --protocol 100050-100499 "${EVAL[@]}" \
                --out "$RUN_ROOT/wide_2t_s0/eval/latest_unseen"
            ;;
        lr1e-3)
            for S in $LR_SEEDS; do
                RUN="$RUN_ROOT/lr1e-3_s$S"
                if [[ -f "$RUN/checkpoints/latest.safetensors" ]]; then RESUME=resume=true; else RESUME=resume=false; fi
                dpolicy train seed="$S" run_dir="$RUN" training.lr=1.0e-3 "$RESUME"
                dpolicy eval "$RUN/checkpoints/latest.safetensors" --protocol large "${EVAL[@]}"
            done
            ;;
        *)
            echo "unknown sweep $SWEEP (use actions, steps, replan, ddpm, selection, lr1e-3)" >&2
            exit 2
            ;;
    esac
done

echo "Each evaluation wrote metrics.json and episodes.csv into the --out folder printed above."
