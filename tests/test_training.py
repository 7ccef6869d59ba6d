"""The trainer: loss falls, checkpoints describe themselves, a killed run resumes exactly, DDP works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpolicy.config import compose_config
from dpolicy.data.replay_buffer import ReplayBuffer
from dpolicy.errors import ConfigError
from dpolicy.training.checkpoint import load_policy, read_checkpoint
from dpolicy.training.logging import read_log
from dpolicy.training.trainer import Trainer, budget_clock_step, warmup_cosine

REPO = Path(__file__).resolve().parent.parent

# A tiny diffusion policy that trains in well under a second per 10 steps on one core. The default
# recipe (training/cpu_hour) compiles the UNet and autocasts to bf16: a tiny run would spend minutes
# compiling, so both are off here; the tests of those features turn them on themselves.
TINY = [
    "policy.down_dims=[16,32]", "policy.kernel_size=3", "policy.n_groups=4", "policy.step_embed_dim=16",
    "policy.num_train_timesteps=20", "policy.num_inference_steps=4",
    "horizon=8", "n_obs_steps=2", "n_action_steps=4",
    "training.batch_size=16", "training.warmup_steps=5", "training.log_every=5", "training.val_every=20",
    "training.val_batches=2", "training.eval_every=0", "training.checkpoint_every=10", "training.progress=false",
    "training.num_threads=1", "training.compile=false", "training.bf16=false", "device=cpu",
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


def test_the_budget_clock_moves_the_schedule_by_the_spent_share_of_the_budget():
    # warm-up counts steps; then the further of the step and the budget's share of the cosine's span
    assert budget_clock_step(5, 50.0, 10, 110, 100.0) == 5
    assert budget_clock_step(20, 50.0, 10, 110, 100.0) == pytest.approx(60.0)
    assert budget_clock_step(90, 50.0, 10, 110, 100.0) == 90
    assert budget_clock_step(20, 500.0, 10, 110, 100.0) == pytest.approx(110.0)
    assert warmup_cosine(budget_clock_step(20, 100.0, 10, 110, 100.0), 10, 110) == pytest.approx(0.0, abs=1e-12)


def test_a_run_on_the_budget_clock_ends_its_decay_when_the_budget_is_spent(toy_dataset, tmp_path):
    lr = 1e-3
    summary = Trainer(tiny_cfg(toy_dataset, tmp_path / "run", "training.max_steps=1000000", "training.max_minutes=0.05",
                               "training.schedule_clock=budget", f"training.lr={lr}", "training.log_every=1",
                               "training.val_every=0", "training.checkpoint_every=1000000")).train()
    assert 0 < summary["step"] < 1_000_000
    lrs = [r["lr"] for r in read_log(tmp_path / "run" / "log.jsonl") if "lr" in r]
    after_warmup = lrs[5:]
    assert max(after_warmup) <= lr * 1.0001
    assert all(b <= a for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert after_warmup[-1] < 0.01 * lr  # a step-clock cosine over a million steps would still be at its peak


def test_the_budget_clock_needs_a_budget(toy_dataset, tmp_path):
    with pytest.raises(ConfigError, match="training.max_minutes"):
        Trainer(tiny_cfg(toy_dataset, tmp_path / "run", "training.schedule_clock=budget",
                               "training.max_minutes=null"))


def test_loss_falls_and_checkpoint_is_self_describing(toy_dataset, tmp_path):
    run = tmp_path / "run"
    summary = Trainer(tiny_cfg(toy_dataset, run, "training.max_steps=150", "training.lr=1e-3")).train()
    assert summary["step"] == 150
    records = [r for r in map(eval_json, (run / "log.jsonl").read_text().splitlines()) if "train_loss" in r]
    first, last = records[0]["train_loss"], np.mean([r["train_loss"] for r in records[-3:]])
    assert last < 0.5 * first, (first, last)
    assert any("val_loss" in r for r in map(eval_json, (run / "log.jsonl").read_text().splitlines()))
    assert (run / "curves.png").stat().st_size > 0

    checkpoint = read_checkpoint(run / "checkpoints" / "latest.safetensors")
    for key in ("config", "shape_meta", "package_version", "step", "optimizer", "rng", "lr_scheduler"):
        assert key in checkpoint.meta
    assert checkpoint.tensors["model"] and checkpoint.tensors["ema_model"] and checkpoint.tensors["optimizer"]
    assert checkpoint.meta["shape_meta"]["obs"]["obs"]["shape"] == [20]
    policy, cfg = load_policy(run / "checkpoints" / "latest.safetensors")
    assert cfg.task.env_id == "envs/PushTKeypoints-v0"
    # EMA weights are what load_policy returns by default.
    ema = checkpoint.weights(use_ema=True)
    name = next(k for k in ema if k.endswith("weight") and not k.startswith("normalizer"))
    assert torch.equal(policy.state_dict()[name], ema[name])
    assert not torch.equal(checkpoint.weights(use_ema=False)[name], ema[name])
    # Normalization travels with the weights: actions come back in env units.
    obs = {"obs": torch.full((2, 20), 250.0)}
    action = policy.predict_action(obs)["action"]
    assert action.shape == (4, 2) and torch.isfinite(action).all()
    assert (action > 0).all() and (action < 600).all()


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def _final_state(run: Path) -> dict:
    checkpoint = read_checkpoint(run / "checkpoints" / "latest.safetensors")
    return {"step": checkpoint.step, "model": checkpoint.weights(use_ema=False), "ema": checkpoint.weights(),
            "opt": checkpoint.optimizer_state()["state"]}


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
    latest = killed / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if latest.exists() and read_checkpoint(latest).step >= 20:
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = read_checkpoint(latest).step
    assert 20 <= killed_at < 120

    Trainer(tiny_cfg(toy_dataset, killed, steps, "resume=true")).train()
    _assert_same_state(_final_state(straight), _final_state(killed))


def _train_command(dataset: Path, run_dir: Path, *extra: str) -> list[str]:
    """`dpolicy train` on the tiny config, as a user types it."""
    return [sys.executable, "-m", "dpolicy", "train", f"task.dataset.path={dataset}", f"run_dir={run_dir}",
            "task.dataset.val_ratio=0.2", *TINY, *extra]


def _train_records(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    return [r for r in read_log(path) if "train_loss" in r]


def _wait_until_training(proc: subprocess.Popen, run_dir: Path, err_path: Path, min_step: int = 10,
                         timeout_s: float = 120.0) -> None:
    """Poll until the run has logged a training step >= min_step; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r["step"] >= min_step for r in _train_records(run_dir)):
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before it could be stopped:\n"
                        f"{err_path.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    proc.wait(30)
    pytest.fail(f"training logged no step >= {min_step} within {timeout_s:.0f} s:\n{err_path.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_checkpoints_exits_cleanly_and_resumes(toy_dataset, tmp_path, sig):
    run, max_steps = tmp_path / "run", 100_000  # far more than it gets to before the signal
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(_train_command(toy_dataset, run, f"training.max_steps={max_steps}"),
                                cwd=REPO, stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            _wait_until_training(proc, run, err_path)
            proc.send_signal(sig)  # SIGINT is what Ctrl-C sends
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"training did not exit within 120 s of {sig.name}; its output ends with:\n"
                            f"{out_path.read_text()[-1500:]}\n{err_path.read_text()[-3000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    stderr = err_path.read_text()
    assert rc == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "(interrupted); writing checkpoint" in out_path.read_text()

    latest = run / "checkpoints" / "latest.safetensors"
    checkpoint = read_checkpoint(latest)
    stopped = checkpoint.step
    assert 10 <= stopped < max_steps
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["step"] == stopped
    policy, _ = load_policy(latest)  # the checkpoint is complete: it rebuilds a working policy
    assert torch.isfinite(policy.predict_action({"obs": torch.full((2, 20), 250.0)})["action"]).all()

    # resume=true picks up at the stopped step, from the saved weights, and carries on.
    trainer = Trainer(tiny_cfg(toy_dataset, run, f"training.max_steps={stopped + 12}", "resume=true"))
    assert trainer.step == stopped
    for name, value in trainer.policy.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, checkpoint.weights(use_ema=False)[name]), name
    resumed = trainer.train()
    assert resumed["step"] == stopped + 12 and resumed["interrupted"] is False
    steps = [r["step"] for r in _train_records(run)]
    assert steps == sorted(set(steps)), "the resumed run restarted its step count instead of continuing"
    assert steps[0] <= stopped < steps[-1] == stopped + 12
    assert read_checkpoint(latest).step == stopped + 12


def test_max_minutes_stops_the_run_on_time_with_a_checkpoint(toy_dataset, tmp_path):
    run, max_steps, max_minutes = tmp_path / "run", 1_000_000, 0.05  # 3 s of training
    cmd = _train_command(toy_dataset, run, f"training.max_steps={max_steps}", f"training.max_minutes={max_minutes}",
                         "training.log_every=1", "training.val_every=0", "training.checkpoint_every=1000000")
    # the timeout bounds the test if the guard were broken (a million steps would take hours)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(time budget of 0.05 min spent); writing checkpoint" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is False  # a spent budget is a normal end, not an interruption
    assert summary["train_minutes"] >= max_minutes
    checkpoint = read_checkpoint(run / "checkpoints" / "latest.safetensors")
    assert 0 < checkpoint.step == summary["step"] < max_steps
    assert checkpoint.meta["elapsed_s"] >= max_minutes * 60
    # It stopped at the first step past the budget: every earlier step was still inside it.
    records = _train_records(run)
    assert [r["step"] for r in records] == list(range(1, summary["step"] + 1))
    assert all(r["elapsed_min"] < max_minutes for r in records[:-1])
    assert records[-1]["elapsed_min"] >= max_minutes


def test_resume_without_checkpoint_is_a_clear_error(toy_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="latest.safetensors"):
        Trainer(tiny_cfg(toy_dataset, tmp_path / "nothing", "resume=true"))


# Runs `dpolicy train` exactly as the CLI does, and has every rank also write the weights it holds.
_DDP_RANK_DUMP = """
import os, sys
import torch
import dpolicy.training.trainer as trainer_module
from dpolicy.cli import main

train = trainer_module.Trainer.train

def train_and_dump(self):
    start = {k: v.detach().clone() for k, v in self.policy.state_dict().items() if isinstance(v, torch.Tensor)}
    first_batches = self._epoch_batches(0)[:3].copy()
    summary = train(self)
    torch.save({"rank": self.ctx.rank, "world_size": self.ctx.world_size, "ddp": self.model is not self.policy,
                "start": start, "model": self.policy.state_dict(), "ema": self.ema.averaged_model.state_dict(),
                "first_batches": first_batches}, os.path.join(sys.argv[1], f"rank{self.ctx.rank}.pt"))
    return summary

trainer_module.Trainer.train = train_and_dump
sys.exit(main(["train", *sys.argv[2:]]))
"""


def _tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu_keep_the_ranks_weights_identical(toy_dataset, tmp_path):
    run, dumps = tmp_path / "ddp", tmp_path / "ranks"
    dumps.mkdir()
    script = tmp_path / "train_and_dump.py"
    script.write_text(_DDP_RANK_DUMP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `python -m torch.distributed.run` is the `torchrun` launcher itself, present wherever torch is.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(dumps),
           f"task.dataset.path={toy_dataset}", f"run_dir={run}", "task.dataset.val_ratio=0.2", *TINY,
           "training.max_steps=20"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(dumps / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (rank0["rank"], rank1["rank"]) == (0, 1) and rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["ddp"] and rank1["ddp"]
    # Each rank trained on its own shard of the data ...
    assert not set(rank0["first_batches"].ravel()) & set(rank1["first_batches"].ravel())
    # ... from the same start (rank 0's, broadcast) to the same weights: the gradients were averaged.
    start0, start1 = _tensors(rank0["start"]), _tensors(rank1["start"])
    final0, final1 = _tensors(rank0["model"]), _tensors(rank1["model"])
    assert start0.keys() == final0.keys() == final1.keys()
    for name in final0:
        assert torch.equal(start0[name], start1[name]), f"{name}: the ranks started from different weights"
        assert torch.equal(final0[name], final1[name]), f"{name}: the ranks' weights diverged"
    trained = [n for n, v in final0.items() if v.is_floating_point() and not torch.equal(v, start0[n])]
    assert len(trained) >= len([n for n in final0 if not n.startswith("normalizer")]) // 2, "training moved no weights"
    ema0, ema1 = _tensors(rank0["ema"]), _tensors(rank1["ema"])
    for name in ema0:
        assert torch.equal(ema0[name], ema1[name]), f"EMA {name} differs between the ranks"

    # Rank 0's checkpoint holds those weights and deploys like any other.
    checkpoint = read_checkpoint(run / "checkpoints" / "latest.safetensors")
    assert checkpoint.step == 20
    for name, value in _tensors(checkpoint.weights(use_ema=False)).items():
        assert torch.equal(value, final1[name]), name
    policy, _ = load_policy(run / "checkpoints" / "latest.safetensors")
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
    kept = sorted(p.name for p in (run / "checkpoints").glob("step=*.safetensors"))
    assert len(kept) == 2 and len(summary["top_k"]) == 2
    assert [e["score"] for e in summary["top_k"]] == sorted((e["score"] for e in summary["top_k"]), reverse=True)
    for entry in summary["top_k"]:
        assert Path(entry["path"]).name in kept
    assert (run / "eval" / "step_0000010" / "metrics.json").exists()


def test_a_new_run_does_not_overwrite_an_existing_one(toy_dataset, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(toy_dataset, run, "training.max_steps=10")).train()
    with pytest.raises(ConfigError, match="resume=true"):
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
    policy, loaded_cfg = load_policy(run / "checkpoints" / "latest.safetensors")
    assert loaded_cfg.policy.name == "ibc"
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
    a, b = (read_checkpoint(run / "checkpoints" / "latest.safetensors") for run in (eager, compiled))
    assert sorted(a.tensors["model"]) == sorted(b.tensors["model"])  # no "_orig_mod." prefixes
    assert sorted(a.tensors["ema_model"]) == sorted(b.tensors["ema_model"])
    policy, _ = load_policy(compiled / "checkpoints" / "latest.safetensors")  # an eager policy, as deployed
    assert torch.isfinite(policy.predict_action({"obs": torch.full((2, 20), 250.0)})["action"]).all()
    # A compiled run resumes like any other.
    summary = Trainer(tiny_cfg(toy_dataset, compiled, *steps[1:], "training.max_steps=40", "training.compile=true",
                               "resume=true")).train()
    assert summary["step"] == 40
