"""`dpolicy collect --expert scripted`: the recorded layout, seeds, resumption, and crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpolicy.collect import (
    EVAL_SEEDS,
    DemoDataset,
    collect_expert,
    collection_seeds,
    expert_seed_for,
    run_expert_episode,
)
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer
from envs.pusht.env import PushTEnv
from envs.pusht.expert import ScriptedExpert
from envs.pusht.geometry import coverage
from envs.pusht.sim import PushTSim

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_recorded_episode_has_the_human_layout_and_timing():
    env = PushTEnv(obs_type="state")
    result = run_expert_episode(env, ScriptedExpert(), reset_seed=4, expert_seed=expert_seed_for(0, 4),
                                images=True)
    assert result.success
    ep = result.episode
    n = result.steps
    assert {k: v.shape for k, v in ep.items()} == {"state": (n, 5), "action": (n, 2), "keypoint": (n, 9, 2),
                                                   "n_contacts": (n, 1), "img": (n, 96, 96, 3)}
    assert all(v.dtype == np.float32 for v in ep.values())
    # state[t] is observed before action[t]; replaying the actions reproduces the states and contacts.
    sim = PushTSim()
    sim.reset_legacy(4)
    for t in range(n):
        np.testing.assert_allclose(ep["state"][t, :4], sim.get_state()[:4], atol=1e-3)
        np.testing.assert_allclose(ep["keypoint"][t], sim.keypoints(), atol=1e-3)
        assert coverage(sim.block_pose) <= 0.95  # not yet solved when action[t] is chosen
        sim.step(result.episode["action"][t].astype(np.float64))
        assert ep["n_contacts"][t, 0] == sim.n_contacts
    assert sim.coverage() > 0.95  # ... and the last action solves it
    assert ep["img"].min() >= 0 and ep["img"].max() <= 255 and ep["img"][0].std() > 10


def test_collection_seeds_skip_evaluation_seeds_and_used_ones():
    seeds = collection_seeds(99_998, skip={100_501})
    assert [next(seeds) for _ in range(4)] == [99_998, 99_999, 100_500, 100_502]
    first = collection_seeds(0, skip={1, 2})
    assert [next(first) for _ in range(2)] == [0, 3]
    assert EVAL_SEEDS == range(100_000, 100_500)


def test_collect_appends_and_resumes_without_duplicates(tmp_path):
    out = tmp_path / "demo.zarr"
    collect_expert(out, episodes=1, seed=0, progress=False).close()
    dataset = collect_expert(out, episodes=2, seed=0, progress=False)
    assert dataset.n_episodes == 2
    assert dataset.episode_seeds == [0, 1]
    dataset.close()
    buffer = ReplayBuffer.open(out)
    assert buffer.keys() == ["action", "keypoint", "n_contacts", "state"]
    assert buffer.attrs["collector"]["seed"] == 0
    # A resumed run must use the same settings.
    with pytest.raises(DatasetError, match="seed"):
        collect_expert(out, episodes=3, seed=5, progress=False)


def _fake_episode(length: int, value: float) -> dict:
    shapes = {"state": (5,), "action": (2,), "keypoint": (9, 2), "n_contacts": (1,)}
    return {key: np.full((length, *shape), value, np.float32) for key, shape in shapes.items()}


def test_seed_written_for_an_episode_that_never_committed_is_dropped(tmp_path):
    out = tmp_path / "demo.zarr"
    settings = {"source": "test"}
    dataset = DemoDataset(out, settings)
    dataset.add_episode(10, _fake_episode(3, 1.0))
    dataset.add_failure(11)
    # A crash after recording the next seed but before its episode was appended:
    dataset.buffer.attrs["episode_seeds"] = [10, 12]
    dataset.close()
    reopened = DemoDataset(out, settings)
    assert reopened.episode_seeds == [10] and reopened.n_episodes == 1
    assert reopened.used_seeds == {10, 11}
    with pytest.raises(DatasetError, match="source"):
        DemoDataset(out, {"source": "other"})


def test_collect_refuses_a_dataset_it_did_not_make(tmp_path):
    out = tmp_path / "other.zarr"
    buffer = ReplayBuffer.create(out)
    buffer.append_episode(_fake_episode(2, 0.0))
    buffer.close()
    with pytest.raises(DatasetError, match="not made by `dpolicy collect`"):
        DemoDataset(out, {"source": "test"})


def _collect_command(out: Path, episodes: int) -> list[str]:
    return [sys.executable, "-m", "dpolicy", "collect", "--expert", "scripted", "--episodes", str(episodes),
            "--workers", "2", "--out", str(out), "--quiet"]


def _wait_for_first_episode(out: Path, process: subprocess.Popen, timeout: float = 120.0) -> int:
    """Poll the dataset a running collection writes until it holds an episode (or the process ends,
    or ``timeout`` s pass); returns the committed episode count."""
    deadline = time.monotonic() + timeout
    committed = 0
    while committed < 1 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        if (out / "meta" / "episode_ends" / ".zarray").exists():
            try:
                committed = ReplayBuffer.open(out).n_episodes
            except DatasetError:
                committed = 0  # caught between two files of a write; look again
    return committed


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*rolling back a write:UserWarning")
def test_killed_collection_restarts_losing_and_duplicating_nothing(tmp_path):
    """SIGKILL `dpolicy collect` (and its workers) mid-run, run it again: the result equals an
    uninterrupted collection, episode for episode."""
    episodes = 3
    reference = collect_expert(tmp_path / "reference.zarr", episodes=episodes, seed=0, progress=False)
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(_collect_command(out, episodes), cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        committed = _wait_for_first_episode(out, process)
        assert process.poll() is None, f"collection ended before it could be killed: {process.stderr.read()}"
        assert committed >= 1, "no episode committed within 120 s"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    survivor = DemoDataset(out, reference.collector)  # rolls back a write the kill interrupted, if any
    n_survived = survivor.n_episodes
    survived = [survivor.buffer.get_episode(i) for i in range(n_survived)]
    survivor.close()
    assert 1 <= n_survived < episodes

    rerun = subprocess.run(_collect_command(out, episodes), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    final = DemoDataset(out, reference.collector)
    assert final.n_episodes == episodes
    assert final.episode_seeds == reference.episode_seeds
    assert len(set(final.episode_seeds)) == episodes
    for i in range(episodes):
        expected = reference.buffer.get_episode(i)
        got = final.buffer.get_episode(i)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"episode {i} {key}")
        if i < n_survived:
            np.testing.assert_array_equal(got["action"], survived[i]["action"])


def test_ctrl_c_stops_collection_with_one_line_and_keeps_the_episodes(tmp_path):
    """Ctrl-C (SIGINT to the process group, workers included): exit status 130, one plain line on
    stderr saying how to continue, no traceback from the command or its workers, episodes kept."""
    out = tmp_path / "interrupted.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Far more episodes than can finish before the signal, however slowly the first one is seen.
    # A shell that starts the test suite in the background (without job control) starts it with
    # SIGINT ignored, and children inherit an ignored signal: the child restores the default.
    process = subprocess.Popen(_collect_command(out, 1000), cwd=tmp_path, env=env, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        committed = _wait_for_first_episode(out, process)
        assert committed >= 1 and process.poll() is None, "no episode committed while the collection ran"
        os.killpg(process.pid, signal.SIGINT)
        stderr = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 130:
        kept = DemoDataset(out, None)
        n_kept = kept.n_episodes
        kept.close()
        pytest.fail(f"exit status {process.returncode} after Ctrl-C at episode {committed}, {n_kept} episodes "
                    f"in the dataset; stderr: {stderr!r}")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted" in stderr and "run the same command again" in stderr
    dataset = DemoDataset(out, None)
    assert dataset.n_episodes >= 1
    dataset.close()


def test_near_wall_starts_and_action_noise_follow_the_variation(tmp_path):
    """A variation changes where episodes start and what is executed, never what is recorded as the
    expert's action; it is part of the dataset's settings, so a resume with another one is refused."""
    from dpolicy.collect import ExpertVariation, episode_start, expert_for
    from envs.pusht.starts import outline_wall_distance

    variation = ExpertVariation(near_wall_share=1.0, action_noise=4.0)
    env = PushTEnv(obs_type="state")
    result = run_expert_episode(env, expert_for(variation), reset_seed=4, expert_seed=expert_seed_for(0, 4),
                                variation=variation)
    assert result.success
    start = episode_start(0, 4, variation)
    np.testing.assert_allclose(result.episode["state"][0], start, atol=1e-3)
    assert outline_wall_distance(start[2:]) <= 30.0
    # The recorded actions are the expert's own targets (its step limit holds between them); the
    # executed ones had noise, so replaying the recorded actions leaves the recorded path.
    actions = result.episode["action"].astype(np.float64)
    assert np.linalg.norm(np.diff(actions, axis=0), axis=1).max() <= 25.0 + 1e-3
    sim = PushTSim()
    sim.set_state(start, legacy=False)
    drift = []
    for t, action in enumerate(actions[:40]):
        drift.append(np.abs(sim.get_state()[:2] - result.episode["state"][t, :2]).max())
        sim.step(action)
    assert max(drift) > 0.5
    assert episode_start(0, 4, ExpertVariation()) is None
    near_wall = ExpertVariation(near_wall_share=0.3)
    assert sum(episode_start(0, s, near_wall) is not None for s in range(200)) in range(40, 81)

    out = tmp_path / "varied.zarr"
    collect_expert(out, episodes=1, seed=0, progress=False, variation=ExpertVariation(near_wall_share=0.5)).close()
    assert ReplayBuffer.open(out).attrs["collector"]["variation"]["near_wall_share"] == 0.5
    with pytest.raises(DatasetError, match="variation"):
        collect_expert(out, episodes=2, seed=0, progress=False)
    with pytest.raises(ValueError, match="near_wall_share"):
        ExpertVariation(near_wall_share=1.5)


def test_expert_parameters_can_be_set_and_are_recorded(tmp_path):
    from dpolicy.collect import expert_params_from

    assert expert_params_from({"max_target_step": "12", "far_candidates": "8"}).max_target_step == 12.0
    with pytest.raises(ValueError, match="unknown expert parameter 'speed'"):
        expert_params_from({"speed": 1})
    with pytest.raises(ValueError, match="expected a float"):
        expert_params_from({"temperature": "warm"})
    out = tmp_path / "greedy.zarr"
    collect_expert(out, episodes=1, seed=0, progress=False, expert_params={"temperature": 0}).close()
    assert ReplayBuffer.open(out).attrs["collector"]["expert_params"]["temperature"] == 0.0
    with pytest.raises(DatasetError, match="expert_params"):
        collect_expert(out, episodes=2, seed=0, progress=False)


def test_a_dataset_recorded_before_a_parameter_existed_resumes_at_its_default(tmp_path):
    # The embedded dataset's metadata predates the re-planning tolerances, which were fixed constants
    # at today's defaults; growing it must not be refused, while a real difference still is.
    out = tmp_path / "older.zarr"
    collect_expert(out, episodes=1, seed=0, progress=False).close()
    buffer = ReplayBuffer.open(out, mode="a")
    collector = dict(buffer.attrs["collector"])
    collector["expert_params"] = {k: v for k, v in collector["expert_params"].items()
                                  if k != "replan_angle_tolerance"}
    buffer.attrs["collector"] = collector
    buffer.close()
    dataset = collect_expert(out, episodes=2, seed=0, progress=False)
    assert dataset.episode_seeds == [0, 1]
    dataset.close()
    with pytest.raises(DatasetError, match="expert_params"):
        collect_expert(out, episodes=3, seed=0, progress=False, expert_params={"replan_angle_tolerance": 0.02})
