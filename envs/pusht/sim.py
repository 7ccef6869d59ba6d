"""Physics of Push-T with pymunk 7, reproducing the original benchmark's simulator.

``PushTSim`` is physics only (no gym, no rendering) and cheap to construct, so that planners can
keep private replicas for lookahead. The facts it reproduces, including the original's quirks,
which are part of the task:

- 512 x 512 px world, gravity 0, ``damping = 0``: pymunk multiplies velocities by
  ``damping ** dt = 0`` when it integrates them, so the T has no lasting momentum (quasi-static
  pushing). It is not quite "no velocity": a substep first moves bodies by the velocity the
  *previous* substep's contact solver left, then zeroes it and solves again. That leftover block
  velocity carries over into the next control step, so it is part of :meth:`PushTSim.get_full_state`.
- Frictionless, inelastic contacts. (The original sets ``friction = 1`` on the *body*, which pymunk
  ignores; shapes keep friction 0.)
- T block: mass 1, moment of inertia 3000 = twice the *bar's* moment (the original adds the bar's
  moment to itself), centre of gravity (0, 45).
- Agent: kinematic circle (radius 15) driven by a PD law toward the absolute target
  (k_p = 100, k_v = 20), 10 substeps of 0.01 s per control step.
- Four static wall segments of radius 2.
- Legacy seeded reset: ``numpy.random.RandomState(seed)`` draws, block position set *before* its
  angle (pymunk rotates about the centre of gravity, so the origin moves), then one substep.

A state is ``[agent_x, agent_y, block_x, block_y, block_angle]`` (block position = body origin).

Checked against the 206 human demonstrations (``tests/test_env_sim.py``): replaying each episode's
actions from its first state reproduces the recorded agent positions to 2e-5 px and, for 183 of
the 206 episodes, the whole recorded block trajectory to 0.01 px; pymunk 7 reproduces the
original (pymunk 6) dynamics.
"""

from __future__ import annotations

import math

import numpy as np
import pymunk

from envs.pusht.geometry import (
    BAR_VERTICES,
    BLOCK_CENTER_OF_GRAVITY,
    GOAL_POSE,
    T_BOXES,
    WORKSPACE_SIZE,
    coverage,
    keypoints_world,
)

#: Physics substep in seconds (100 Hz).
SUBSTEP_DT = 1.0 / 100
#: Physics substeps per control step (control at 10 Hz).
SUBSTEPS_PER_STEP = 10
#: PD gains of the agent's target-tracking law.
K_P = 100.0
K_V = 20.0
#: Agent circle radius in px.
AGENT_RADIUS = 15.0
#: Static wall segments (endpoints in px) and their radius.
WALLS = (((5.0, 506.0), (5.0, 5.0)), ((5.0, 5.0), (506.0, 5.0)),
         ((506.0, 5.0), (506.0, 506.0)), ((5.0, 506.0), (506.0, 506.0)))
WALL_RADIUS = 2.0
#: Block mass; its moment of inertia reproduces the original's double-counted bar (= 3000).
BLOCK_MASS = 1.0
BLOCK_MOMENT = 2.0 * pymunk.moment_for_poly(BLOCK_MASS, BAR_VERTICES.tolist())

#: Names of the entries of :meth:`PushTSim.get_full_state`.
FULL_STATE_FIELDS = ("agent_x", "agent_y", "agent_vx", "agent_vy", "block_x", "block_y", "block_angle",
                     "block_vx", "block_vy", "block_angular_velocity")

TWO_PI = 2.0 * math.pi


def legacy_reset_state(seed: int) -> np.ndarray:
    """The original's random initial state for ``seed`` (legacy ``numpy.random.RandomState``).

    agent x, y ~ randint(50, 450); block x, y ~ randint(100, 400); angle = randn() * 2 pi - pi
    (Gaussian, as the original draws it).
    """
    rs = np.random.RandomState(seed=int(seed))
    return np.array([rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400), rs.randint(100, 400),
                     rs.randn() * 2 * np.pi - np.pi], dtype=np.float64)


def _as_vector(values, length: int, name: str) -> np.ndarray:
    """``values`` as a finite float64 vector of ``length`` entries, or a ValueError that says why."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {length} numbers, got {values!r}") from exc
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def clip_action(action) -> tuple[float, float]:
    """Validate a target position and clip it to the workspace [0, 512]^2.

    Raises ValueError for a wrong shape or NaN/inf. Targets outside the workspace are clipped
    (the agent could otherwise be driven through the walls, out of the world).
    """
    target = _as_vector(action, 2, "action (absolute agent target x, y in px)")
    return (min(max(float(target[0]), 0.0), WORKSPACE_SIZE), min(max(float(target[1]), 0.0), WORKSPACE_SIZE))


def _count_contact_points(arbiter: pymunk.Arbiter, space: pymunk.Space, counter: list) -> None:
    """post_solve callback: add this pair's contact points to ``counter[0]``."""
    counter[0] += len(arbiter.contact_point_set.points)


class PushTSim:
    """The Push-T physics: an agent pushing a T block on a table, stepped at 10 Hz."""

    def __init__(self):
        # One-element list shared with the collision callback (no reference from the space back to
        # the simulator, so discarded spaces are freed at once).
        self._contact_points = [0]
        self._build_space()

    @property
    def n_contact_points(self) -> int:
        """Contact points summed over the substeps of the last step (the original's raw counter)."""
        return self._contact_points[0]

    @property
    def n_contacts(self) -> int:
        """Contacts of the last step as the original reports them: ``ceil(n_contact_points / 10)``.

        This is the figure in the dataset's ``n_contacts`` array (where entry t belongs to the step
        taken with ``action[t]``): about one contact point per substep while pushing.
        """
        return -(-self.n_contact_points // SUBSTEPS_PER_STEP)

    # ------------------------------------------------------------------ construction
    def _build_space(self) -> None:
        """A fresh pymunk space (no contact history), agent and block at rest at the origin."""
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0  # quirk kept: zeroes dynamic velocities each substep
        for a, b in WALLS:
            wall = pymunk.Segment(space.static_body, a, b, WALL_RADIUS)
            space.add(wall)

        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))

        block = pymunk.Body(BLOCK_MASS, BLOCK_MOMENT)
        shapes = [pymunk.Poly(block, box.tolist()) for box in T_BOXES]
        block.center_of_gravity = BLOCK_CENTER_OF_GRAVITY
        space.add(block, *shapes)

        # All shapes have collision type 0, as in the original, which counted contact points
        # of every (0, 0) pair after the solver ran.
        space.on_collision(0, 0, post_solve=_count_contact_points, data=self._contact_points)
        self.space, self.agent, self.block = space, agent, block
        self._contact_points[0] = 0

    # ------------------------------------------------------------------ state
    def reset_legacy(self, seed: int) -> None:
        """The original seeded reset: legacy draws, position-then-angle, then one substep."""
        self.set_state(legacy_reset_state(seed), legacy=True)
        self.substep()

    def set_state(self, state, legacy: bool = False) -> None:
        """Place agent and block from ``[agent_x, agent_y, block_x, block_y, block_angle]``, all at rest.

        ``legacy=False`` sets the angle first, then the position, which puts the body origin exactly
        at (block_x, block_y) (recorded states replay exactly). ``legacy=True`` sets the position
        first, as the original's resets did: the rotation about the centre of gravity then moves
        the origin. The contact history is cleared (a fresh space), no substep is taken.
        """
        state = _as_vector(state, 5, "state [agent_x, agent_y, block_x, block_y, block_angle]")
        self._build_space()
        self.agent.position = (float(state[0]), float(state[1]))
        if legacy:
            self.block.position = (float(state[2]), float(state[3]))
            self.block.angle = float(state[4])
        else:
            self.block.angle = float(state[4])
            self.block.position = (float(state[2]), float(state[3]))

    def get_state(self) -> np.ndarray:
        """``[agent_x, agent_y, block_x, block_y, block_angle mod 2 pi]`` (float64)."""
        ax, ay = self.agent.position
        bx, by = self.block.position
        return np.array([ax, ay, bx, by, self.block.angle % TWO_PI])

    def get_full_state(self) -> np.ndarray:
        """Everything needed to continue the simulation (10 float64, see ``FULL_STATE_FIELDS``).

        The block velocity matters: the first substep moves the block by the velocity the last
        contact solve left (see the module docstring). Not included is the solver's warm-start cache
        (contact impulses remembered between substeps): pymunk cannot set it, so a replica restored
        with :meth:`set_full_state` starts with a fresh contact history; in replays of the human
        data this changes the next block position by < 0.02 px at the 99th percentile.
        """
        ax, ay = self.agent.position
        avx, avy = self.agent.velocity
        bx, by = self.block.position
        bvx, bvy = self.block.velocity
        return np.array([ax, ay, avx, avy, bx, by, self.block.angle, bvx, bvy, self.block.angular_velocity])

    def set_full_state(self, full_state) -> None:
        """Restore a :meth:`get_full_state` vector (fresh contact history, as in :meth:`set_state`)."""
        full = _as_vector(full_state, len(FULL_STATE_FIELDS), "full state " + str(FULL_STATE_FIELDS))
        self._build_space()
        self.agent.position = (float(full[0]), float(full[1]))
        self.agent.velocity = (float(full[2]), float(full[3]))
        self.block.angle = float(full[6])
        self.block.position = (float(full[4]), float(full[5]))
        self.block.velocity = (float(full[7]), float(full[8]))
        self.block.angular_velocity = float(full[9])

    @property
    def agent_pos(self) -> np.ndarray:
        """Agent position (2,) in px."""
        return np.array(self.agent.position)

    @property
    def block_pose(self) -> np.ndarray:
        """Block pose ``(x, y, theta)`` with theta wrapped to [0, 2 pi)."""
        x, y = self.block.position
        return np.array([x, y, self.block.angle % TWO_PI])

    def coverage(self, goal_pose=GOAL_POSE) -> float:
        """Fraction of the goal T covered by the block."""
        x, y = self.block.position
        return coverage((x, y, self.block.angle), goal_pose)

    def keypoints(self) -> np.ndarray:
        """The 9 block keypoints in world px, (9, 2)."""
        x, y = self.block.position
        return keypoints_world((x, y, self.block.angle))

    # ------------------------------------------------------------------ dynamics
    def substep(self) -> None:
        """One physics substep (0.01 s) without changing the agent's velocity."""
        self.space.step(SUBSTEP_DT)

    def step(self, action) -> tuple[float, float]:
        """One control step: 10 substeps of the PD law toward the absolute target ``action`` (x, y).

        The target is validated and clipped to the workspace by :func:`clip_action`; the target
        actually used is returned. ``n_contact_points`` counts the contact points of all substeps.
        """
        tx, ty = clip_action(action)
        self._contact_points[0] = 0
        agent, space = self.agent, self.space
        for _ in range(SUBSTEPS_PER_STEP):
            px, py = agent.position
            vx, vy = agent.velocity
            # Same operation order as the original: v += (k_p (target - p) + k_v (0 - v)) dt
            agent.velocity = (vx + (K_P * (tx - px) + K_V * (0.0 - vx)) * SUBSTEP_DT,
                              vy + (K_P * (ty - py) + K_V * (0.0 - vy)) * SUBSTEP_DT)
            space.step(SUBSTEP_DT)
        return tx, ty
