"""The "bring your own robot" path at toy scale, from config alone: a 7-DoF arm with two cameras and a
gripper is recorded by the example script, trained from configs/toy_arm.yaml (declared keys, offline
evaluation on held-out episodes), evaluated offline by `dpolicy eval`, exported to ONNX, served by
`dpolicy serve`, and driven through that server by the real-time runner against the simulated arm at
20 Hz."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpolicy.config import compose_config
from dpolicy.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "device=cpu", "training.max_steps=40", "training.eval_every=20", "training.val_every=20",
    "training.checkpoint_every=20", "training.log_every=10", "training.progress=false", "training.compile=false",
    "training.bf16=false", "training.batch_size=16", "training.warmup_steps=5", "training.eval.offline_windows=8",
    "training.eval.offline_samples=2", "policy.down_dims=[16,32]", "policy.step_embed_dim=16",
    "policy.resnet_width=16", "policy.num_keypoints=4", "policy.image_feature_dim=8", "horizon=8",
    "n_action_steps=4", "policy.num_inference_steps=4",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpolicy", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy_arm")
    data = tmp / "arm.zarr"
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "make_toy_arm_dataset.py"), "--out", str(data),
                           "--episodes", "10"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    cfg = compose_config("toy_arm", [f"task.dataset.path={data}", f"run_dir={tmp / 'run'}", *TINY])
    assert cfg.training.eval.mode == "offline"
    summary = Trainer(cfg).train()
    return tmp, data, summary


@pytest.mark.slow
def test_the_arm_trains_from_its_config_and_keeps_checkpoints_by_offline_error(trained):
    tmp, _, summary = trained
    assert summary["step"] == 40 and not summary["interrupted"]
    assert [Path(e["path"]).name.split("-")[1].split("=")[0] for e in summary["top_k"]] == ["action_error_min"] * 2
    errors = [-e["score"] for e in summary["top_k"]]
    assert errors == sorted(errors) and all(np.isfinite(errors))
    metrics = json.loads((tmp / "run" / "eval" / "step_0000040" / "metrics.json").read_text())
    assert metrics["mode"] == "offline" and metrics["n_windows"] == 8 and len(metrics["action_error_per_dim"]) == 8
    log = [json.loads(line) for line in (tmp / "run" / "log.jsonl").read_text().splitlines()]
    assert any("eval/action_error_min" in record for record in log)


@pytest.mark.slow
def test_dpolicy_eval_scores_the_arm_offline_and_names_its_held_out_episodes(trained):
    tmp, data, _ = trained
    checkpoint = tmp / "run" / "checkpoints" / "latest.safetensors"
    out = run_cli("eval", str(checkpoint), "--windows", "6", "--samples", "2", "--out", str(tmp / "offline"))
    assert out.returncode == 0, out.stderr
    assert "held-out episodes" in out.stdout
    metrics = json.loads((tmp / "offline" / "metrics.json").read_text())
    assert metrics["n_windows"] == 6 and metrics["action_error_min"] <= metrics["action_error_mean"]
    # another recording: every one of its episodes is evaluated
    again = run_cli("eval", str(checkpoint), "--dataset", str(data), "--windows", "4", "--samples", "1",
                    "--out", str(tmp / "other"))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp / "other" / "metrics.json").read_text())["n_episodes"] == 10


@pytest.mark.slow
def test_the_arm_policy_exports_to_onnx_and_runs_without_torch_on_a_camera_frame(trained):
    import gymnasium as gym

    import envs  # noqa: F401  (registers envs/ToyArm-v0)
    from dpolicy.onnx_runtime import OnnxPolicy

    tmp, _, _ = trained
    out = run_cli("export", str(tmp / "run" / "checkpoints" / "latest.safetensors"), "--format", "onnx",
                  "--out", str(tmp / "onnx"), "--threads", "1", "--latency-repeats", "0")
    assert out.returncode == 0, out.stderr
    assert " ok" in out.stdout.splitlines()[1], out.stdout  # the parity line
    exported = OnnxPolicy(tmp / "onnx", intra_op_num_threads=1)
    env = gym.make("envs/ToyArm-v0")
    obs, _ = env.reset(seed=3)
    window = {key: np.repeat(np.asarray(value)[None, None], 2, axis=1) for key, value in obs.items()}
    action, plan = exported.predict(window, rng=np.random.default_rng(0))
    assert action.shape == (1, 4, 8) and plan.shape == (1, 8, 8) and np.isfinite(plan).all()
    env.close()


@pytest.mark.slow
def test_the_served_arm_policy_drives_the_simulated_arm_at_20_hz(trained):
    from dpolicy.bench.realtime import make_robot
    from dpolicy.control.client import PolicyClient
    from dpolicy.control.realtime import RealtimeRunner
    from dpolicy.training.checkpoint import load_policy

    tmp, _, _ = trained
    checkpoint = tmp / "run" / "checkpoints" / "latest.safetensors"
    address = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "dpolicy", "serve", str(checkpoint), "--address", address,
                               "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "DPOLICY_SERVE_TOKEN": ""})
    try:
        banner = server.stdout.readline()  # printed once the checkpoint is loaded and the socket bound
        assert banner.startswith("serving"), banner + server.stderr.read()
        _, cfg = load_policy(checkpoint)
        robot = make_robot(cfg, rate_hz=20.0)
        with PolicyClient(address, token="", timeout_s=60.0) as client:
            info = client.info()
            assert info["n_action_steps"] == 4
            robot.reset(seed=100000)
            with RealtimeRunner(client, robot, rate_hz=20.0) as runner:
                report = runner.run(max_ticks=40)
        robot.env.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert report.ticks == 40
    assert report.chunks_received >= 2 and report.chunks_rejected == 0
    assert not [e for e in report.events if e.kind == "error"], report.events
    assert robot.env.unwrapped.observation_space["cam_front"].shape == (32, 32, 3)
