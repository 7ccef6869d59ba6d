"""The scripted Push-T expert: geometry, the analytic push model, the carrot follower, and that it
solves, smoothly and diversely. (The 500-reset success rate is `dpolicy bench expert`.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.pusht.expert import (
    CarrotPath,
    ExpertParams,
    ScriptedExpert,
    _push_set,
    limit_step,
    pose_error,
    predict_pushes,
    t_signed_distance,
)
from envs.pusht.geometry import GOAL_POSE, body_to_world, coverage, world_to_body
from envs.pusht.sim import AGENT_RADIUS, PushTSim


def rollout(reset_seed: int, expert: ScriptedExpert, max_steps: int = 300):
    sim = PushTSim()
    sim.reset_legacy(reset_seed)
    actions, agent = [], []
    for _ in range(max_steps):
        action = expert.act(sim.get_full_state())
        sim.step(action)
        actions.append(action)
        agent.append(sim.agent_pos)
        if sim.coverage() > 0.95:
            return True, np.array(actions), np.array(agent)
    return False, np.array(actions), np.array(agent)


def test_signed_distance_to_the_t():
    points = np.array([[0.0, 15.0],     # inside the bar, 15 px from its long edges
                       [0.0, 100.0],    # inside the stem, 15 px from its sides
                       [0.0, -10.0],    # 10 px above the bar
                       [40.0, 50.0],    # beside the stem (25 px) and below the bar (20 px)
                       [70.0, -10.0]])  # off a convex corner: sqrt(10^2 + 10^2)
    expected = [-15.0, -15.0, 10.0, 20.0, math.hypot(10.0, 10.0)]
    np.testing.assert_allclose(t_signed_distance(points), expected, atol=1e-9)


def test_pose_error_is_zero_at_the_goal_and_counts_rotation():
    assert pose_error(GOAL_POSE) == pytest.approx(0.0, abs=1e-9)
    shifted = GOAL_POSE + np.array([3.0, 4.0, 0.0])
    assert pose_error(shifted) == pytest.approx(5.0)
    # A rotation about the centre of gravity costs rho * angle = sqrt(1950) * angle, up to a half turn,
    # so that turning an upside-down T back is progress all the way.
    cog = body_to_world(np.array([0.0, 45.0]), GOAL_POSE)

    def turned(angle):
        theta = GOAL_POSE[2] + angle
        origin = cog - body_to_world(np.array([0.0, 45.0]), (0.0, 0.0, theta))
        return (origin[0], origin[1], theta)

    for angle in (0.02, -0.5, math.pi - 0.3, -(math.pi - 0.01)):
        assert pose_error(turned(angle)) == pytest.approx(math.sqrt(1950) * abs(angle), rel=1e-6)


def test_analytic_push_model_matches_the_simulator():
    """A short frictionless push: the predicted centre-of-gravity motion and turn match pymunk."""
    pushes = _push_set(10.0, 4.0)
    pose = np.array([256.0, 200.0, 0.3])
    sim = PushTSim()
    checked = 0
    for i in range(0, len(pushes), 7):
        if pushes.slide[i] != 0.0:
            continue
        # Predict a push of 6 px normal depth with the model, then do it in the simulator.
        depth = 6.0
        contact_world = body_to_world(pushes.contact[i], pose)
        inward = body_to_world(-pushes.normal[i], (0.0, 0.0, pose[2]))
        start = contact_world - inward * (AGENT_RADIUS + 3.0)
        sim.set_state([*start, *pose], legacy=False)
        cog0 = body_to_world(np.array([0.0, 45.0]), sim.block_pose)
        target = start + inward * (3.0 + depth)
        for _ in range(20):
            sim.step(target)
        cog1 = body_to_world(np.array([0.0, 45.0]), sim.block_pose)
        moved = cog1 - cog0
        turned = (sim.block_pose[2] - pose[2] + math.pi) % (2 * math.pi) - math.pi
        arm = pushes.contact[i] - (0.0, 45.0)
        lever = arm[0] * -pushes.normal[i][1] - arm[1] * -pushes.normal[i][0]
        k = 1.0 + lever ** 2 / 3000.0
        np.testing.assert_allclose(moved, inward * depth / k, atol=0.25 * depth / k + 0.3)
        expected_turn = lever * depth / (3000.0 * k)
        assert turned == pytest.approx(expected_turn, abs=0.25 * abs(expected_turn) + 2e-3)
        checked += 1
    assert checked >= 5


def test_predicted_push_improves_the_pose():
    pushes = _push_set(10.0, 4.0)
    # The goal pose moved 20 px along the stem: pushing the end of the stem straight back solves it.
    offset = body_to_world(np.array([0.0, 20.0]), (0.0, 0.0, GOAL_POSE[2]))
    pose = GOAL_POSE + np.array([offset[0], offset[1], 0.0])
    assert pose_error(pose) == pytest.approx(20.0)
    depth, error = predict_pushes(pose, pushes, 40.0)
    best = int(np.argmin(error))
    assert error[best] < 0.5
    assert depth[best] == pytest.approx(20.0, abs=0.5)
    np.testing.assert_allclose(pushes.normal[best], [0.0, 1.0], atol=1e-9)  # the stem's end
    assert np.all((depth >= 0.0) & (depth <= 40.0))


def test_carrot_path_projection_lookahead_and_step_limit():
    path = CarrotPath(np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0]]), ramp_start=100.0, ramp_end=150.0,
                      far=40.0, near=10.0)
    assert path.length == pytest.approx(200.0)
    np.testing.assert_allclose(path.point_at(150.0), [100.0, 50.0])
    assert path.project(np.array([30.0, 5.0]), 0.0) == pytest.approx(30.0)
    assert path.lookahead(50.0) == 40.0 and path.lookahead(125.0) == pytest.approx(25.0)
    target, s = path.carrot(np.array([30.0, 5.0]), 0.0)
    np.testing.assert_allclose(target, [70.0, 0.0])
    # The carrot never runs past the end of the path.
    target, _ = path.carrot(np.array([100.0, 195.0]), 150.0)
    np.testing.assert_allclose(target, [100.0, 100.0])
    np.testing.assert_allclose(limit_step(np.zeros(2), np.array([30.0, 40.0]), 25.0), [15.0, 20.0])
    np.testing.assert_allclose(limit_step(np.zeros(2), np.array([3.0, 4.0]), 25.0), [3.0, 4.0])


@pytest.mark.parametrize("reset_seed", [100003, 7])
def test_expert_solves_smoothly_within_300_steps(reset_seed):
    expert = ScriptedExpert(seed=0)
    success, actions, _ = rollout(reset_seed, expert)
    assert success, f"expert did not reach coverage > 0.95 from reset seed {reset_seed} in 300 steps"
    jumps = np.linalg.norm(np.diff(actions, axis=0), axis=1)
    assert jumps.max() <= expert.params.max_target_step + 1e-6
    assert np.all((actions >= 0.0) & (actions <= 512.0))


def test_same_seed_same_episode_other_seeds_other_routes():
    reset_seed, steps = 3, 80  # the first 80 steps (about 8 s) show the route
    _, a, agent_a = rollout(reset_seed, ScriptedExpert(seed=11), steps)
    _, b, _ = rollout(reset_seed, ScriptedExpert(seed=11), steps)
    np.testing.assert_array_equal(a, b)
    # With other expert seeds, at least one run takes a visibly different route.
    from dpolicy.bench.expert import route_distance

    others = [rollout(reset_seed, ScriptedExpert(seed=s), steps)[2] for s in (12, 13)]
    distances = [route_distance(agent_a, agent) for agent in others]
    assert max(distances) > 25.0, distances


def test_deterministic_expert_ignores_its_seed():
    sim = PushTSim()
    sim.reset_legacy(5)
    full = sim.get_full_state()
    a = ScriptedExpert(seed=1, diverse=False).act(full)
    b = ScriptedExpert(seed=2, diverse=False).act(full)
    np.testing.assert_array_equal(a, b)
    assert ScriptedExpert(diverse=False).params == ExpertParams(temperature=0.0, screen_noise=0.0)


def test_act_rejects_a_state_of_the_wrong_shape():
    with pytest.raises(ValueError, match="get_full_state"):
        ScriptedExpert().act(np.zeros(5))


def test_expert_finishes_a_nearly_solved_start():
    """Fine stage: 3 px and 2 degrees off the goal (coverage below 0.95) is finished quickly."""
    pose = GOAL_POSE + np.array([3.0, 0.0, math.radians(2.0)])
    assert coverage(pose) < 0.95
    sim = PushTSim()
    sim.set_state([100.0, 420.0, *pose], legacy=False)
    expert = ScriptedExpert(seed=0)
    for _ in range(150):
        sim.step(expert.act(sim.get_full_state()))
        if sim.coverage() > 0.95:
            break
    assert sim.coverage() > 0.95, f"coverage {sim.coverage():.3f} after 150 steps"


def _uniform_state(rng: np.random.Generator) -> np.ndarray:
    """Any start the environment accepts: agent and block anywhere clear of each other and the walls."""
    from envs.pusht.starts import outline_wall_distance

    while True:
        state = np.r_[rng.uniform(20.0, 492.0, 4), rng.uniform(-np.pi, np.pi)]
        clear_of_t = t_signed_distance(world_to_body(state[None, :2], state[2:]))[0] > AGENT_RADIUS + 2.0
        if clear_of_t and outline_wall_distance(state[2:]) > 2.0:
            return state


def test_near_wall_starts_put_the_t_by_a_wall_and_the_agent_clear_of_it():
    from envs.pusht.starts import near_wall_state, outline_wall_distance

    rng = np.random.default_rng(0)
    for _ in range(50):
        state = near_wall_state(rng, wall_distance=(8.0, 30.0))
        assert 8.0 <= outline_wall_distance(state[2:]) <= 30.0
        assert t_signed_distance(world_to_body(state[None, :2], state[2:]))[0] > 20.0
    with pytest.raises(ValueError, match="wall_distance"):
        near_wall_state(rng, wall_distance=(30.0, 8.0))


@pytest.mark.parametrize("kind, index", [("near wall", 0), ("near wall", 1), ("near wall", 2), ("anywhere", 0),
                                         ("anywhere", 1)])
def test_expert_solves_from_arbitrary_states(kind, index):
    """The expert needs no benchmark reset: from starts set with reset_to_state (the block against
    a wall or in a corner, or anywhere at all) it reaches success within the episode's 300 steps."""
    from envs.pusht.env import PushTEnv
    from envs.pusht.starts import near_wall_state

    rng = np.random.default_rng([3, index])
    state = near_wall_state(rng) if kind == "near wall" else _uniform_state(rng)
    env = PushTEnv(obs_type="state")
    env.reset(options={"reset_to_state": state})
    sim = env.unwrapped.sim
    expert = ScriptedExpert(seed=index)
    for _ in range(300):
        info = env.step(expert.act(sim.get_full_state()))[4]
        if info["is_success"]:
            break
    assert info["is_success"], f"no success from {kind} start {np.round(state, 1).tolist()}"
