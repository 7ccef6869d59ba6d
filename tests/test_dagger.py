"""DAgger rounds: a policy's states labelled by the expert, appended atomically and resumably."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpolicy.bench.realtime import untrained_checkpoint
from dpolicy.collect import DemoDataset, collect_expert, expert_seed_for, labelling_expert, run_expert_episode
from dpolicy.dagger import dagger_round
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer

REPO = Path(__file__).resolve().parent.parent
TINY = ("policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.num_inference_steps=2")
STEPS = 12  # steps per rollout: enough to exercise labelling, short enough for a test


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("dagger") / "untrained.safetensors", overrides=TINY)


def _expert_dataset(path: Path, episodes: int = 2) -> Path:
    collect_expert(path, episodes=episodes, seed=0, progress=False).close()
    return path


def test_a_round_appends_relabelled_episodes_with_their_sources_and_round(tmp_path, checkpoint):
    dataset = _expert_dataset(tmp_path / "data.zarr")
    summary = dagger_round(dataset, checkpoint, episodes=3, n_envs=2, max_steps=STEPS, progress=False)
    assert (summary.round, summary.added, summary.round_episodes, summary.dataset_episodes) == (0, 3, 3, 5)
    assert summary.labelled_steps == 3 * STEPS and 3 <= summary.label_plans <= summary.labelled_steps
    with ReplayBuffer.open(dataset) as buf:
        attrs = dict(buf.attrs)
        assert buf.n_episodes == 5 and list(buf.episode_lengths[2:]) == [STEPS] * 3
        keys = set(buf.keys())
    assert attrs["episode_sources"] == ["demonstration"] * 2 + ["dagger:0"] * 3
    seeds = attrs["episode_seeds"]
    assert len(set(seeds)) == 5  # every rollout starts from a reset seed no other episode used
    (round_info,) = attrs["dagger_rounds"]
    assert round_info["episodes"] == 3 and round_info["beta"] == 0.0 and round_info["checkpoint_step"] == 0
    assert keys == {"state", "action", "keypoint", "n_contacts"}

    # A second checkpoint is a new round; the same checkpoint again continues its round.
    other = untrained_checkpoint(tmp_path / "other.safetensors", overrides=(*TINY, "seed=7"))
    assert dagger_round(dataset, other, episodes=1, n_envs=1, max_steps=STEPS, progress=False).round == 1
    again = dagger_round(dataset, checkpoint, episodes=1, n_envs=1, max_steps=STEPS, progress=False)
    assert again.round == 2  # not the last round's settings: a new round, not a resume of round 0


def test_labels_come_from_the_expert_the_dataset_was_collected_with(tmp_path, checkpoint):
    """A dataset collected with a slower expert is relabelled by that expert: with the expert
    executing (beta 1), its targets move at most that expert's ``max_target_step`` per step; the
    default expert's move further from the same starts."""
    largest_jump = {}
    for name, params in (("slow", {"max_target_step": 5.0}), ("default", None)):
        dataset = tmp_path / f"{name}.zarr"
        collect_expert(dataset, episodes=1, seed=0, progress=False, expert_params=params).close()
        dagger_round(dataset, checkpoint, episodes=2, beta=1.0, n_envs=2, max_steps=STEPS, progress=False)
        with ReplayBuffer.open(dataset) as buf:
            labels = [buf.get_episode(i)["action"] for i in (1, 2)]
        largest_jump[name] = max(float(np.linalg.norm(np.diff(a, axis=0), axis=1).max()) for a in labels)
    assert largest_jump["slow"] <= 5.0 + 1e-3 < largest_jump["default"], largest_jump


def test_with_beta_one_the_expert_drives_and_its_episode_is_its_own_demonstration(tmp_path, checkpoint):
    """Labels are the expert's actions at the visited states: when it also executes them, the
    relabelled episode is exactly the expert's episode from that reset seed."""
    import gymnasium as gym

    import envs  # noqa: F401
    dataset = _expert_dataset(tmp_path / "data.zarr", episodes=1)
    dagger_round(dataset, checkpoint, episodes=1, beta=1.0, n_envs=1, max_steps=STEPS, progress=False)
    with ReplayBuffer.open(dataset) as buf:
        seed = buf.attrs["episode_seeds"][1]
        relabelled = buf.get_episode(1)
        collector = dict(buf.attrs["collector"])
    env = gym.make("envs/PushTKeypoints-v0").unwrapped
    reference = run_expert_episode(env, labelling_expert(collector), seed, expert_seed_for(0, seed), max_steps=STEPS)
    np.testing.assert_allclose(relabelled["action"], reference.episode["action"], atol=1e-4)
    np.testing.assert_allclose(relabelled["state"], reference.episode["state"], atol=1e-4)


def test_a_killed_round_restarts_losing_and_duplicating_nothing(tmp_path, checkpoint):
    dataset = _expert_dataset(tmp_path / "data.zarr")
    command = [sys.executable, "-m", "dpolicy", "collect", "--dagger", str(checkpoint), "--out", str(dataset),
               "--episodes", "6", "--envs", "1", "--max-steps", str(STEPS), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            try:
                with ReplayBuffer.open(dataset) as buf:
                    if buf.n_episodes >= 4:
                        break
            except DatasetError:
                pass  # caught between two files of a write; look again
            if proc.poll() is not None:
                pytest.fail(f"the round ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    survivor = DemoDataset(dataset, None)  # rolls back a write the kill interrupted, if any
    killed_at = survivor.n_episodes
    survivor.close()
    assert 4 <= killed_at < 8

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 0" in result.stdout
    with ReplayBuffer.open(dataset) as buf:
        attrs = dict(buf.attrs)
        assert buf.n_episodes == 8
        assert int(buf.episode_ends[-1]) == buf.n_steps
    assert attrs["episode_sources"] == ["demonstration"] * 2 + ["dagger:0"] * 6
    assert len(set(attrs["episode_seeds"])) == 8
    (round_info,) = attrs["dagger_rounds"]
    assert round_info["episodes"] == 6


def test_dagger_needs_an_existing_dataset_and_a_push_t_checkpoint(tmp_path, checkpoint, capsys):
    from dpolicy.cli import main

    assert main(["collect", "--dagger", str(checkpoint), "--out", str(tmp_path / "missing.zarr"),
                 "--episodes", "1"]) == 1
    assert "no such dataset" in capsys.readouterr().err
    assert main(["collect", "--dagger", str(checkpoint), "--episodes", "1"]) == 2
    assert "--out" in capsys.readouterr().err
