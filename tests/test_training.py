"""The trainer: loss falls, checkpoints describe themselves, a killed run resumes exactly, DDP works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpolicy.data.replay_buffer import ReplayBuffer
from dpolicy.training.checkpoint import load_policy, read_checkpoint
from dpolicy.training.config import compose_config
from dpolicy.training.trainer import Trainer, warmup_cosine

REPO = Path(__file__).resolve().parent.parent

# A tiny diffusion policy that trains in well under a second per 10 steps on one core.
TINY = [
    "policy.down_dims=[16,32]", "policy.kernel_size=3", "policy.n_groups=4", "policy.step_embed_dim=16",
    "policy.num_train_timesteps=20", "policy.num_inference_steps=4",
    "horizon=8", "n_obs_steps=2", "n_action_steps=4",
    "training.batch_size=16", "training.warmup_steps=5", "training.log_every=5", "training.val_every=20",
    "training.val_batches=2", "training.eval_every=0", "training.checkpoint_every=10", "training.progress=false",
    "training.num_threads=1", "device=cpu",
]


def make_toy_pusht_dataset(path: Path, n_episodes: int = 6, seed: int = 0) -> Path:
    """Smooth random Push-T-like episodes: agent moving toward a target, block fixed per episode."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.create(path)
    for _ in range(n_episodes):
        length = int(rng.integers(30, 50))
        target = rng.uniform(100, 400, size=2)
        agent = np.empty((length, 2))
        agent[0] = rng.uniform(100, 400, size=2)
        for t in range(1, length):
            agent[t] = agent[t - 1] + 0.2 * (target - agent[t - 1])
        block = np.tile(rng.uniform(150, 350, size=3), (length, 1))
        state = np.concatenate([agent, block], axis=1).astype(np.float32)
        keypoint = (block[:, None, :2] + rng.normal(0, 30, size=(1, 9, 2))).astype(np.float32)
        action = np.concatenate([agent[1:], agent[-1:]], axis=0).astype(np.float32)
        buf.append_episode({"state": state, "keypoint": keypoint, "action": action,
                            "n_contacts": np.zeros((length, 1), np.float32)})
    buf.close()
    return path


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    return make_toy_pusht_dataset(tmp_path_factory.mktemp("data") / "toy.zarr")


def tiny_cfg(dataset: Path, run_dir: Path, *extra: str):
    return compose_config("pusht_lowdim", [f"task.dataset.path={dataset}", f"run_dir={run_dir}",
                                           "task.dataset.val_ratio=0.2", *TINY, *extra])


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_loss_falls_and_checkpoint_is_self_describing(toy_dataset, tmp_path):
    run = tmp_path / "run"
    summary = Trainer(tiny_cfg(toy_dataset, run, "training.max_steps=150", "training.lr=1e-3")).train()
    assert summary["step"] == 150
    records = [r for r in map(eval_json, (run / "log.jsonl").read_text().splitlines()) if "train_loss" in r]
    first, last = records[0]["train_loss"], np.mean([r["train_loss"] for r in records[-3:]])
    assert last < 0.5 * first, (first, last)
    assert any("val_loss" in r for r in map(eval_json, (run / "log.jsonl").read_text().splitlines()))
    assert (run / "curves.png").stat().st_size > 0

    payload = read_checkpoint(run / "checkpoints" / "latest.pt")
    for key in ("config", "shape_meta", "package_version", "step", "model", "ema_model", "optimizer"):
        assert key in payload
    assert payload["shape_meta"]["obs"]["obs"]["shape"] == [20]
    policy, cfg = load_policy(run / "checkpoints" / "latest.pt")
    assert cfg.task.env_id == "envs/PushTKeypoints-v0"
    # EMA weights are what load_policy returns by default.
    ema = payload["ema_model"]
    name = next(k for k in ema if k.endswith("weight") and not k.startswith("normalizer"))
    assert torch.equal(policy.state_dict()[name], ema[name])
    assert not torch.equal(payload["model"][name], ema[name])
    # Normalization travels with the weights: actions come back in env units.
    obs = {"obs": torch.full((2, 20), 250.0)}
    action = policy.predict_action(obs)["action"]
    assert action.shape == (4, 2) and torch.isfinite(action).all()
    assert (action > 0).all() and (action < 600).all()


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def _final_state(run: Path) -> dict:
    payload = read_checkpoint(run / "checkpoints" / "latest.pt")
    return {"step": payload["step"], "model": payload["model"], "ema": payload["ema_model"],
            "opt": payload["optimizer"]["state"]}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for k in a[part]:
            if isinstance(a[part][k], torch.Tensor):
                assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for pid, st in a["opt"].items():
        for k, v in st.items():
            assert torch.equal(v, b["opt"][pid][k]), f"optimizer state {pid}.{k} differs"


@pytest.mark.slow
def test_killed_run_resumes_exactly(toy_dataset, tmp_path):
    steps = "training.max_steps=120"
    straight = tmp_path / "straight"
    Trainer(tiny_cfg(toy_dataset, straight, steps)).train()

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dpolicy", "train", *(f"{o}" for o in [
        f"task.dataset.path={toy_dataset}", f"run_dir={killed}", "task.dataset.val_ratio=0.2", *TINY, steps])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if latest.exists() and read_checkpoint(latest)["step"] >= 20:
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = read_checkpoint(latest)["step"]
    assert 20 <= killed_at < 120

    Trainer(tiny_cfg(toy_dataset, killed, steps, "resume=true")).train()
    _assert_same_state(_final_state(straight), _final_state(killed))


def test_resume_without_checkpoint_is_a_clear_error(toy_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="latest.pt"):
        Trainer(tiny_cfg(toy_dataset, tmp_path / "nothing", "resume=true"))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(toy_dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `python -m torch.distributed.run` is the `torchrun` launcher itself, present wherever torch is.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpolicy", "train",
           f"task.dataset.path={toy_dataset}", f"run_dir={run}", "task.dataset.val_ratio=0.2", *TINY,
           "training.max_steps=20"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    policy, _ = load_policy(run / "checkpoints" / "latest.pt")
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 20
    out = policy.predict_action({"obs": np.full((2, 20), 250.0, np.float32)})
    assert out["action"].shape == (4, 2)


def test_periodic_rollouts_keep_the_top_k_checkpoints(toy_dataset, tmp_path):
    run = tmp_path / "eval_run"
    cfg = tiny_cfg(toy_dataset, run, "training.max_steps=30", "training.eval_every=10", "training.top_k=2",
                   "training.eval.protocol=[100000,100001]", "training.eval.vector=sync", "task.max_steps=16")
    summary = Trainer(cfg).train()
    evals = [r for r in map(eval_json, (run / "log.jsonl").read_text().splitlines()) if "eval/score" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(0.0 <= r["eval/score"] <= 1.0 for r in evals)
    kept = sorted(p.name for p in (run / "checkpoints").glob("step=*.pt"))
    assert len(kept) == 2 and len(summary["top_k"]) == 2
    assert [e["score"] for e in summary["top_k"]] == sorted((e["score"] for e in summary["top_k"]), reverse=True)
    for entry in summary["top_k"]:
        assert Path(entry["path"]).name in kept
    assert (run / "eval" / "step_0000010" / "metrics.json").exists()


def test_a_new_run_does_not_overwrite_an_existing_one(toy_dataset, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(toy_dataset, run, "training.max_steps=10")).train()
    with pytest.raises(FileExistsError, match="resume=true"):
        Trainer(tiny_cfg(toy_dataset, run, "training.max_steps=10"))


def test_ibc_trains_with_the_same_trainer_and_round_trips_through_a_checkpoint(toy_dataset, tmp_path):
    run = tmp_path / "ibc"
    cfg = compose_config("ibc_pusht_lowdim", [
        f"task.dataset.path={toy_dataset}", f"run_dir={run}", "task.dataset.val_ratio=0.2", "device=cpu",
        "policy.hidden_dim=32", "policy.n_counter_examples=16", "policy.dfo_samples=64",
        "training.batch_size=16", "training.max_steps=20", "training.warmup_steps=2", "training.log_every=5",
        "training.val_every=10", "training.val_batches=1", "training.eval_every=0", "training.progress=false",
        "training.num_threads=1"])
    trainer = Trainer(cfg)
    trainer.train()
    policy, loaded_cfg = load_policy(run / "checkpoints" / "latest.pt")
    assert loaded_cfg.policy._target_ == "dpolicy.policies.ibc.IbcPolicy"
    for name, value in trainer.policy.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(policy.state_dict()[name], value), name
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    obs = {"obs": torch.full((1, 2, 20), 250.0)}
    nobs = {"obs": policy.normalizer.normalize("obs", obs["obs"])}
    trainer.policy.eval()
    a = policy.sample_actions(nobs, generator=gen_a)
    assert torch.equal(a, trainer.policy.sample_actions(nobs, generator=gen_b))
    assert policy.predict_action({"obs": np.full((2, 20), 250.0, np.float32)})["action"].shape == (1, 2)


def test_bf16_autocast_training_runs_and_lowers_the_loss(toy_dataset, tmp_path):
    run = tmp_path / "bf16"
    Trainer(tiny_cfg(toy_dataset, run, "training.max_steps=60", "training.lr=1e-3", "training.bf16=true")).train()
    records = [r for r in map(eval_json, (run / "log.jsonl").read_text().splitlines()) if "train_loss" in r]
    assert np.isfinite(records[-1]["train_loss"]) and records[-1]["train_loss"] < records[0]["train_loss"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_writes_plain_checkpoints(toy_dataset, tmp_path):
    steps = ["training.max_steps=30", "training.lr=1e-3", "training.checkpoint_every=20"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    Trainer(tiny_cfg(toy_dataset, eager, *steps)).train()
    trainer = Trainer(tiny_cfg(toy_dataset, compiled, *steps, "training.compile=true"))
    assert trainer.policy.model._compiled_call_impl is not None  # the UNet runs through torch.compile
    trainer.train()

    def losses(run):
        return [r["train_loss"] for r in map(eval_json, (run / "log.jsonl").read_text().splitlines())
                if "train_loss" in r]

    # Same data, same seed: the compiled kernels reorder float sums, nothing more.
    np.testing.assert_allclose(losses(compiled), losses(eager), rtol=2e-2)
    a, b = read_checkpoint(eager / "checkpoints" / "latest.pt"), read_checkpoint(compiled / "checkpoints" / "latest.pt")
    assert list(a["model"]) == list(b["model"]) and list(a["ema_model"]) == list(b["ema_model"])
    policy, _ = load_policy(compiled / "checkpoints" / "latest.pt")  # an eager policy, as deployed
    assert torch.isfinite(policy.predict_action({"obs": torch.full((2, 20), 250.0)})["action"]).all()
    # A compiled run resumes like any other.
    summary = Trainer(tiny_cfg(toy_dataset, compiled, *steps[1:], "training.max_steps=40", "training.compile=true",
                               "resume=true")).train()
    assert summary["step"] == 40
