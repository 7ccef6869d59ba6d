#!/usr/bin/env bash
# Reproduces the recipe table (mean +- std over training seeds, each seed's figures beside it) and
# the plot docs/score_vs_minutes.png (periodic-rollout score and success rate against training
# minutes) of docs/results.md, from runs that the other scripts trained and evaluated:
#   scripts/reproduce_keypoint_recipe.sh    -> cpu_hour_s*
#   scripts/reproduce_recipe_ablations.sh   -> eager42k_s*, lr1e-4_s*, wide_s*
#   scripts/reproduce_ibc_baseline.sh       -> ibc_s*, ibc_hour_s*
# It reads each run's summary.json, log.jsonl and eval/latest_{paper,large}/metrics.json.
#
# Time: seconds (no training or rollouts).
#
# Environment variables:
#   RUN_ROOT  where the run directories are (default runs)
#   PLOT      the plot to write (default docs/score_vs_minutes.png)
set -euo pipefail

RUN_ROOT=${RUN_ROOT:-runs}
PLOT=${PLOT:-docs/score_vs_minutes.png}
R=$RUN_ROOT

python -m dpolicy.experiments.recipe --plot "$PLOT" \
    --group "Diffusion Policy [32, 64, 128], lr 3e-4, compiled, 70k steps (default)=$R/cpu_hour_s0,$R/cpu_hour_s1,$R/cpu_hour_s2" \
    --group "Diffusion Policy [32, 64, 128], lr 3e-4, eager, 42k steps=$R/eager42k_s0,$R/eager42k_s1,$R/eager42k_s2" \
    --group "Diffusion Policy [32, 64, 128], lr 1e-4=$R/lr1e-4_s0,$R/lr1e-4_s1,$R/lr1e-4_s2" \
    --group "Diffusion Policy [64, 128, 256], lr 1e-4=$R/wide_s0,$R/wide_s1,$R/wide_s2" \
    --group "IBC, 17 min=$R/ibc_s0,$R/ibc_s1,$R/ibc_s2" \
    --group "IBC, 56 min=$R/ibc_hour_s0,$R/ibc_hour_s1,$R/ibc_hour_s2"
