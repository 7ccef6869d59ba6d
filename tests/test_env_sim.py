"""PushTSim: the original's physics facts, state handling, bad input, and fidelity to the human data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import zarr

from envs.pusht.geometry import BLOCK_CENTER_OF_GRAVITY, body_to_world, t_polygons
from envs.pusht.sim import (
    BLOCK_MOMENT,
    FULL_STATE_FIELDS,
    PushTSim,
    clip_action,
    legacy_reset_state,
)

# ---------------------------------------------------------------------- physics facts and state


def test_block_inertia_and_center_of_gravity_keep_the_original_quirks():
    sim = PushTSim()
    assert BLOCK_MOMENT == pytest.approx(3000.0)
    assert sim.block.moment == pytest.approx(3000.0)
    assert tuple(sim.block.center_of_gravity) == BLOCK_CENTER_OF_GRAVITY
    assert all(shape.friction == 0 and shape.elasticity == 0 for shape in sim.space.shapes)
    assert sim.space.damping == 0


def test_legacy_reset_draws_and_position_then_angle_quirk():
    state = legacy_reset_state(100000)
    rs = np.random.RandomState(100000)
    expected = [rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400), rs.randint(100, 400),
                rs.randn() * 2 * np.pi - np.pi]
    assert np.array_equal(state, expected)

    sim = PushTSim()
    sim.set_state(state, legacy=True)
    # pymunk rotates about the centre of gravity, so the origin ends at xy + cog - R(angle) cog
    cog = np.array(BLOCK_CENTER_OF_GRAVITY)
    origin = state[2:4] + cog - body_to_world([cog], (0.0, 0.0, state[4]))[0]
    assert np.allclose(sim.block_pose[:2], origin, atol=1e-9)
    sim.set_state(state, legacy=False)
    assert np.allclose(sim.block_pose[:2], state[2:4], atol=1e-9)
    assert sim.block_pose[2] == pytest.approx(state[4] % (2 * math.pi))


def test_reset_legacy_is_deterministic_and_takes_one_substep():
    a, b = PushTSim(), PushTSim()
    a.step((10.0, 10.0))  # history must not matter
    a.reset_legacy(7)
    b.reset_legacy(7)
    assert np.array_equal(a.get_full_state(), b.get_full_state())
    c = PushTSim()
    c.set_state(legacy_reset_state(7), legacy=True)
    c.substep()
    assert np.array_equal(c.get_full_state(), b.get_full_state())
    assert not np.array_equal(legacy_reset_state(7), legacy_reset_state(8))


def test_get_state_wraps_angle_and_full_state_round_trips():
    sim = PushTSim()
    sim.set_state([100.0, 100.0, 300.0, 300.0, -1.0])
    state = sim.get_state()
    assert state.dtype == np.float64 and state.shape == (5,)
    assert state[4] == pytest.approx(2 * math.pi - 1.0)
    full = np.array([100.0, 120.0, 3.0, -4.0, 250.0, 260.0, 7.5, 0.25, -0.5, 0.01])
    sim.set_full_state(full)
    assert len(FULL_STATE_FIELDS) == 10
    assert np.allclose(sim.get_full_state(), full, atol=1e-9)


def test_set_full_state_makes_replicas_independent_of_history():
    source = PushTSim()
    source.set_state([200.0, 330.0, 256.0, 300.0, 0.0])
    for _ in range(5):  # push the block upwards: contacts and block velocity
        source.step((256.0, 250.0))
    full = source.get_full_state()
    used, fresh = PushTSim(), PushTSim()
    used.reset_legacy(3)
    for _ in range(4):
        used.step((300.0, 300.0))
    for sim in (used, fresh):
        sim.set_full_state(full)
        sim.step((256.0, 240.0))
    assert np.array_equal(used.get_full_state(), fresh.get_full_state())


def test_agent_tracks_its_target_and_pushes_the_block():
    sim = PushTSim()
    sim.set_state([256.0, 480.0, 256.0, 300.0, 0.0])  # agent below the stem, whose end is at y = 420
    for _ in range(30):
        sim.step((256.0, 440.0))
    assert np.allclose(sim.agent_pos, (256.0, 440.0), atol=1e-3)
    assert np.allclose(sim.block_pose, (256.0, 300.0, 0.0), atol=1e-9)  # not touched yet
    start_y = sim.block_pose[1]
    touched = 0
    for _ in range(10):
        sim.step((256.0, 380.0))
        touched += sim.n_contacts
    assert touched > 0 and sim.n_contact_points >= sim.n_contacts
    assert sim.block_pose[1] < start_y - 30  # pushed upwards (y down), not rotated: the push is centred
    assert abs(sim.block_pose[2] % (2 * math.pi) - math.pi) > 3.0


def test_walls_keep_the_block_inside():
    sim = PushTSim()
    sim.set_state([200.0, 285.0, 100.0, 270.0, math.pi / 2])
    for _ in range(60):
        sim.step((0.0, 285.0))  # keep pushing towards the left wall
    corners = np.concatenate(t_polygons(sim.block_pose))
    assert corners[:, 0].min() > 5.0  # the wall's inner face is at x = 7; slop allows ~0.1 px
    assert sim.agent_pos[0] < 5.0  # the kinematic agent itself is not stopped by walls


# ---------------------------------------------------------------------- bad input


BAD_ACTIONS = [(np.nan, 10.0), (10.0, np.inf), (1.0, 2.0, 3.0), [[1.0, 2.0]], "ab", None]


@pytest.mark.parametrize("action", BAD_ACTIONS)
def test_step_rejects_bad_actions_without_touching_the_sim(action):
    sim = PushTSim()
    sim.reset_legacy(0)
    before = sim.get_full_state()
    with pytest.raises(ValueError, match="action"):
        sim.step(action)
    assert np.array_equal(sim.get_full_state(), before)


def test_targets_outside_the_workspace_are_clipped():
    assert clip_action((-50.0, 900.0)) == (0.0, 512.0)
    sim = PushTSim()
    sim.set_state([400.0, 400.0, 150.0, 150.0, 0.0])
    for _ in range(40):
        applied = sim.step((1e6, 600.0))
    assert applied == (512.0, 512.0)
    assert np.allclose(sim.agent_pos, (512.0, 512.0), atol=1e-3)


def test_set_state_rejects_bad_shapes():
    sim = PushTSim()
    with pytest.raises(ValueError, match=r"state .* shape \(5,\)"):
        sim.set_state([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        sim.set_state([1.0, 2.0, 3.0, 4.0, np.nan])
    with pytest.raises(ValueError, match=r"full state .* shape \(10,\)"):
        sim.set_full_state(np.zeros(5))


# ---------------------------------------------------------------------- fidelity to the human data


@pytest.fixture(scope="module")
def human(human_dataset_path):
    group = zarr.open_group(str(human_dataset_path), mode="r")
    ends = group["meta"]["episode_ends"][:].astype(np.int64)
    return {
        "state": group["data"]["state"][:].astype(np.float64),
        "action": group["data"]["action"][:].astype(np.float64),
        "n_contacts": group["data"]["n_contacts"][:, 0].astype(np.int64),
        "episodes": list(zip(np.r_[0, ends[:-1]].tolist(), ends.tolist(), strict=True)),
    }


@pytest.fixture(scope="module")
def replay(human):
    """Free-running replay of every episode from its first recorded state with the recorded actions.

    For each step t (action t taken from state t): the full state before it and the sim after it.
    """
    sim = PushTSim()
    steps, full_before, state_after, n_contacts = [], [], [], []
    for start, end in human["episodes"]:
        sim.set_state(human["state"][start])
        for t in range(start, end - 1):
            full_before.append(sim.get_full_state())
            sim.step(human["action"][t])
            state_after.append(sim.get_state())
            n_contacts.append(sim.n_contacts)
            steps.append(t)
    return {"t": np.array(steps), "full_before": np.array(full_before), "state_after": np.array(state_after),
            "n_contacts": np.array(n_contacts)}


@pytest.mark.human_data
def test_agent_replay_reproduces_recorded_agent_positions(human, replay):
    recorded = human["state"][replay["t"] + 1, :2]
    assert len(replay["t"]) == len(human["state"]) - len(human["episodes"])
    assert np.abs(replay["state_after"][:, :2] - recorded).max() < 1e-3


@pytest.mark.human_data
def test_one_step_block_fidelity_from_recorded_poses(human, replay):
    """Block set to each recorded pose (agent and velocities from the replay), one recorded action."""
    sim = PushTSim()
    errors = np.empty(len(replay["t"]))
    for i, (t, full) in enumerate(zip(replay["t"], replay["full_before"], strict=True)):
        full = full.copy()
        full[4:7] = human["state"][t, 2:5]
        sim.set_full_state(full)
        sim.step(human["action"][t])
        errors[i] = math.dist(sim.block_pose[:2], human["state"][t + 1, 2:4])
    assert np.median(errors) < 0.01
    assert np.percentile(errors, 99) < 1.0


@pytest.mark.human_data
def test_free_running_replay_reproduces_most_block_trajectories(human, replay):
    errors = np.linalg.norm(replay["state_after"][:, 2:4] - human["state"][replay["t"] + 1, 2:4], axis=1)
    per_episode, offset = [], 0
    for start, end in human["episodes"]:
        per_episode.append(errors[offset:offset + end - 1 - start].max())
        offset += end - 1 - start
    # whole episodes of 100-300 steps replay to float32 precision; a few diverge through contact chaos
    assert np.mean(np.array(per_episode) < 0.01) > 0.8
    assert np.median(errors) < 1e-3


@pytest.mark.human_data
def test_n_contacts_agrees_with_the_recorded_counts(human, replay):
    # the dataset's n_contacts[t] belongs to the step taken with action[t]
    agreement = np.mean(replay["n_contacts"] == human["n_contacts"][replay["t"]])
    assert agreement > 0.95
    assert replay["n_contacts"].max() >= 1


@pytest.mark.human_data
def test_replicas_from_full_state_continue_like_the_original_sim(human, replay):
    """Restoring a full state loses only the solver's warm-start cache: tiny differences."""
    sim = PushTSim()
    errors = np.empty(len(replay["t"]))
    for i, (t, full) in enumerate(zip(replay["t"], replay["full_before"], strict=True)):
        sim.set_full_state(full)
        sim.step(human["action"][t])
        errors[i] = math.dist(sim.block_pose[:2], replay["state_after"][i, 2:4])
    assert np.median(errors) < 1e-6
    assert np.percentile(errors, 99) < 0.05
