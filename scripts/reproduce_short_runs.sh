#!/usr/bin/env bash
# Reproduces the short fp32 runs of docs/results.md (UNet [64, 128, 256] without bf16 or compile,
# one torch thread, one training seed each) and the IBC short run:
#   human_cpu   6,000 steps on the human demonstrations (~32 minutes)
#   demo        5,000 steps on the embedded expert data through `dpolicy demo --config pusht_lowdim` (~23 minutes)
#   ibc_human   IBC, 4,000 steps on the human demonstrations (~17 minutes)
# followed by their evaluations (the Diffusion Policy runs on the large protocol, IBC on the paper
# protocol), and the current `dpolicy demo` with its defaults (about 15-20 minutes).
#
# Time on a 2-core CPU: about 1.5 hours of training and 20 minutes of evaluation.
#
# human_cpu and ibc_human need the human dataset: ../shared/datasets/pusht/pusht_cchi_v7_replay.zarr
# next to the checkout, or DPOLICY_HUMAN_PUSHT pointing to it.
#
# Environment variables:
#   RUN_ROOT  where the run directories go (default runs)
#   RUNS      which runs (default "human_cpu demo ibc_human demo_default")
set -euo pipefail

RUN_ROOT=${RUN_ROOT:-runs}
RUNS=${RUNS:-"human_cpu demo ibc_human demo_default"}

for RUN in $RUNS; do
    echo "== $RUN"
    case "$RUN" in
        human_cpu)
            dpolicy train training=cpu 'policy.down_dims=[64,128,256]' run_dir="$RUN_ROOT/human_cpu" \
                training.max_steps=6000 training.eval_every=3000 training.num_threads=1
            dpolicy eval "$RUN_ROOT/human_cpu/checkpoints/latest.safetensors" --protocol large --vector sync --threads 1
            ;;
        demo)         # the embedded-data row; the demo itself evaluates on the paper protocol
            dpolicy demo --config pusht_lowdim --steps 5000 --out "$RUN_ROOT/demo_fp32" training=cpu training.num_threads=1 \
                'policy.down_dims=[64,128,256]'
            dpolicy eval "$RUN_ROOT/demo_fp32/checkpoints/latest.safetensors" --protocol large --vector sync --threads 1
            ;;
        ibc_human)
            dpolicy train --config ibc_pusht_lowdim run_dir="$RUN_ROOT/ibc_human" training.max_steps=4000 \
                training.max_minutes=null
            dpolicy eval "$RUN_ROOT/ibc_human/checkpoints/latest.safetensors" --protocol paper --vector sync --threads 2
            ;;
        demo_default) # the demo as a newcomer runs it (15,000 steps of its recipe, pusht_lowdim_expert)
            dpolicy demo --out "$RUN_ROOT/demo"
            ;;
        *)
            echo "unknown run $RUN (use human_cpu, demo, ibc_human, demo_default)" >&2
            exit 2
            ;;
    esac
done
