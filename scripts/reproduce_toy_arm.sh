#!/usr/bin/env bash
# Reproduces the toy-arm figures of docs/own_robot.md: 200 scripted demonstrations of the kinematic
# 7-DoF arm, configs/toy_arm.yaml trained on them (offline evaluation), the offline metrics of the
# final weights, TorchScript and ONNX exports with their parity and latency, and the served policy
# driving the simulated arm at 20 Hz through the real-time runner (3,000 ticks) beside a
# synchronous evaluation on the same seeds.
#
# Time on a 2-core CPU: about 30 minutes of training, then 5 minutes. Run it alone on the machine:
# the real-time figures are timing figures.
#
# Environment variables:
#   RUN_ROOT  where the dataset and the run go (default runs)
#   PORT      the policy server's loopback port (default 5602)
set -euo pipefail

RUN_ROOT=${RUN_ROOT:-runs}
PORT=${PORT:-5602}
DATA="$RUN_ROOT/toy_arm200.zarr"
RUN="$RUN_ROOT/toy_arm"
CKPT="$RUN/checkpoints/latest.safetensors"

python scripts/make_toy_arm_dataset.py --out "$DATA" --episodes 200
dpolicy train --config toy_arm task.dataset.path="$DATA" run_dir="$RUN"
dpolicy eval "$CKPT" --threads 1
dpolicy export "$CKPT" --out "$RUN/export_torchscript" --threads 1 --latency-repeats 100
dpolicy export "$CKPT" --out "$RUN/export_onnx" --format onnx --threads 1 --latency-repeats 100

DPOLICY_SERVE_TOKEN= dpolicy serve "$CKPT" --address "tcp://127.0.0.1:$PORT" --threads 1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 20  # the server loads torch and the checkpoint first
DPOLICY_SERVE_TOKEN= dpolicy bench realtime --checkpoint "$CKPT" --server "tcp://127.0.0.1:$PORT" --rate 20 \
    --steps 3000 --threads 1 --json "$RUN/realtime_served.json"
