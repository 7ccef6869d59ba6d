#!/usr/bin/env bash
# Reproduces "What the expert data teaches" and "Expert data needs a policy that re-plans often"
# in docs/results.md: the demo's training budget (`dpolicy demo --config pusht_lowdim`: the default
# recipe for 15,000 steps, the paper's 50 test seeds) on the human demonstrations and on expert
# data collected in other ways, 200 episodes each:
#   human     the human demonstrations
#   embedded  the embedded expert data (data/pusht/pusht_expert.zarr)
#   wall      25% of the episodes start with the T by a wall or in a corner
#   gentle    the expert's target moves at most 12 px per step, shorter look-aheads and pushes
#   greedy    the route is drawn per episode only (no sampling between candidates, no screening noise)
#   noisy     the executed targets carry correlated noise of 4 px (the recorded ones are the expert's)
# then every run's policy re-evaluated with 1-10 actions executed per plan on seeds 300000..300099
# (SWEEP_K, about 1-3 minutes per evaluation).
# Each run writes DATA_ROOT/<name>.zarr (collection: 2-5 minutes) and RUN_ROOT/demo_<name>/report.md.
#
# Time on a 2-core CPU: about 18 minutes per run plus about 10 for its re-evaluations, alone on
# the machine (collecting "noisy" takes about 8 minutes).
#
# "human" needs the human dataset: ../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the
# checkout, or DPOLICY_HUMAN_PUSHT pointing to it.
#
# Environment variables:
#   RUN_ROOT   where the run directories go (default runs)
#   DATA_ROOT  where the collected datasets go (default $RUN_ROOT/expert_data)
#   RUNS       which runs (default "human embedded wall gentle greedy noisy")
#   SWEEP_K    executed-chunk lengths of the re-evaluation (default "1 2 3 4 6 10"; empty: none)
#   DAGGER_EPISODES  with "greedy" in RUNS: also a DAgger round of that many episodes (40 for the row)
#   MORE       non-empty: also the 1,000-episode rows of "The demo" (runs nothing else when RUNS="")
#   DAGGER_DEMO_EPISODES  also the DAgger row of "The demo" (22 for the row)
set -euo pipefail

RUN_ROOT=${RUN_ROOT:-runs}
DATA_ROOT=${DATA_ROOT:-$RUN_ROOT/expert_data}
RUNS=${RUNS-"human embedded wall gentle greedy noisy"}
SWEEP_K=${SWEEP_K-"1 2 3 4 6 10"}
HUMAN=${DPOLICY_HUMAN_PUSHT:-../shared/datasets/pusht/pusht_cchi_v7_replay.zarr}
mkdir -p "$DATA_ROOT"

collect() {  # collect NAME [dpolicy collect options...]
    local name=$1
    shift
    dpolicy collect --expert scripted --episodes 200 --workers 2 --seed 0 --out "$DATA_ROOT/$name.zarr" "$@"
}

for RUN in $RUNS; do
    echo "== $RUN"
    case "$RUN" in
        human) DATA=$HUMAN ;;
        embedded) DATA=data/pusht/pusht_expert.zarr ;;
        wall) collect wall --near-wall-share 0.25; DATA=$DATA_ROOT/wall.zarr ;;
        gentle)
            collect gentle --expert-param max_target_step=12 --expert-param push_lookahead=12 \
                --expert-param transit_lookahead=30 --expert-param far_depth=40
            DATA=$DATA_ROOT/gentle.zarr
            ;;
        greedy)
            collect greedy --expert-param temperature=0 --expert-param screen_noise=0
            DATA=$DATA_ROOT/greedy.zarr
            ;;
        noisy) collect noisy --action-noise 4 --noise-correlation 0.8; DATA=$DATA_ROOT/noisy.zarr ;;
        *) echo "unknown run $RUN" >&2; exit 2 ;;
    esac
    dpolicy demo --config pusht_lowdim --dataset "$DATA" --out "$RUN_ROOT/demo_$RUN" --videos 2
    for K in $SWEEP_K; do
        echo "$RUN, $K actions per plan:"
        dpolicy eval "$RUN_ROOT/demo_$RUN/checkpoints/latest.safetensors" --protocol 300000-300099 \
            --action-steps "$K" --videos 0 --threads 1 --no-progress --out "$RUN_ROOT/demo_$RUN/eval_k$K" | tail -1
    done
    # the demo's own recipe (pusht_lowdim_expert, 2 actions per plan) on the greedy data: the
    # "route drawn per episode only" row of "The demo" (the embedded row is `dpolicy demo` itself)
    if [[ "$RUN" == greedy ]]; then
        dpolicy demo --dataset "$DATA" --out "$RUN_ROOT/demo_greedy_expert_recipe" --videos 2
    fi
done

# The DAgger row: one round of the "greedy" policy aggregated into a copy of its data
# (the documented row stopped the round with Ctrl-C after 21 episodes, about 24 minutes).
if [[ " $RUNS " == *" greedy "* && -n "${DAGGER_EPISODES:-}" ]]; then
    rm -rf "$DATA_ROOT/greedy_dagger.zarr"
    cp -r "$DATA_ROOT/greedy.zarr" "$DATA_ROOT/greedy_dagger.zarr"
    dpolicy collect --dagger "$RUN_ROOT/demo_greedy/checkpoints/latest.safetensors" \
        --out "$DATA_ROOT/greedy_dagger.zarr" --episodes "$DAGGER_EPISODES" --envs 8 --seed 1000
    dpolicy demo --config pusht_lowdim --dataset "$DATA_ROOT/greedy_dagger.zarr" --out "$RUN_ROOT/demo_greedy_dagger" \
        --videos 2
    dpolicy eval "$RUN_ROOT/demo_greedy_dagger/checkpoints/latest.safetensors" --protocol 300000-300099 \
        --action-steps 2 --videos 0 --threads 1 --no-progress --out "$RUN_ROOT/demo_greedy_dagger/eval_k2" | tail -1
fi

demo_then_select() {  # demo_then_select NAME DATASET: the demo's recipe on DATASET, then the selection seeds
    dpolicy demo --dataset "$2" --out "$RUN_ROOT/demo_$1" --videos 2
    echo "$1, selection seeds:"
    dpolicy eval "$RUN_ROOT/demo_$1/checkpoints/latest.safetensors" --protocol 300000-300099 \
        --videos 0 --threads 1 --no-progress --out "$RUN_ROOT/demo_$1/eval_sel" | tail -1
}

# "The demo", 1,000 episodes (MORE=1; about 15 minutes of collection and 20 of training per
# policy): the embedded data grown with reset seeds 200..999 of the same expert, against the
# embedded data itself, both with the demo's own recipe, on the selection seeds at 2 actions per plan.
if [[ -n "${MORE:-}" ]]; then
    rm -rf "$DATA_ROOT/expert_1000.zarr"
    cp -r data/pusht/pusht_expert.zarr "$DATA_ROOT/expert_1000.zarr"
    dpolicy collect --expert scripted --episodes 1000 --workers 2 --seed 0 --out "$DATA_ROOT/expert_1000.zarr"
    demo_then_select embedded_expert_recipe data/pusht/pusht_expert.zarr
    demo_then_select expert_1000 "$DATA_ROOT/expert_1000.zarr"
fi

# "The demo", one DAgger round of the demo's own policy (DAGGER_DEMO_EPISODES relabelled rollouts,
# 22 for the row; about 40 s each): aggregated into a copy of the embedded data, trained again with
# the demo's recipe, evaluated on the selection seeds.
if [[ -n "${DAGGER_DEMO_EPISODES:-}" ]]; then
    BASE=$RUN_ROOT/demo_embedded_expert_recipe
    [[ -f $BASE/checkpoints/latest.safetensors ]] || demo_then_select embedded_expert_recipe data/pusht/pusht_expert.zarr
    rm -rf "$DATA_ROOT/embedded_dagger.zarr"
    cp -r data/pusht/pusht_expert.zarr "$DATA_ROOT/embedded_dagger.zarr"
    dpolicy collect --dagger "$BASE/checkpoints/latest.safetensors" --out "$DATA_ROOT/embedded_dagger.zarr" \
        --episodes "$DAGGER_DEMO_EPISODES" --envs 8 --seed 1000
    demo_then_select embedded_dagger "$DATA_ROOT/embedded_dagger.zarr"
fi
