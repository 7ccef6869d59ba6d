"""A scripted expert for :class:`~envs.arm.env.ToyArmEnv`: approach from above, descend, close.

:class:`ArmExpert` acts from the environment's full state (``ToyArmEnv.get_state()``), and decides
every step from that state alone which phase it is in, so it recovers from any state (a perturbed
arm, a half-closed gripper, a moved cube):

1. *approach*: unless the hand already hangs straight above the cube (within 1 cm sideways, at
   most a little above the approach height, pointing down with the fingers turned to the cube's
   faces), move in joint space to the pre-grasp configuration, the approach height above the cube,
   with the gripper opening. The motion is synchronised (all joints arrive together) and follows
   a trapezoidal speed profile (accelerate, cruise, brake), so the targets never jump.
2. *descend*: with the gripper open, lower the grasp point straight down onto the cube's centre,
   about a centimetre per step, each step's joint targets from a few warm-started IK iterations.
3. *close*: at the cube, hold and close the gripper; once grasped, hold with the gripper closed.

The pre-grasp configuration comes from damped-least-squares IK (:func:`envs.arm.kinematics.solve_ik`)
with the hand pointing down and the fingers turned to the cube face closest to the arm's natural
wrist angle (the cube looks the same every quarter turn), pulled toward a home-like posture that
faces the cube. It is solved once per cube pose (the plan of the latest pose is kept).

Diversity: :meth:`ArmExpert.reset` draws this episode's approach height, speeds, a small grasp
offset (inside the success radius) and a posture bias of the roll joints from its seed, so
episodes from the same start differ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from envs.arm.env import CONTROL_HZ, MAX_JOINT_SPEED, N_JOINTS, STATE_SIZE, SUCCESS_RADIUS
from envs.arm.kinematics import (
    HOME,
    downward_rotation,
    end_effector,
    orientation_error,
    solve_ik,
)

#: Sideways distance (m) and orientation error (rad) under which the hand counts as above the cube.
ALIGNED_DISTANCE = 0.01
ALIGNED_ANGLE = 0.1
#: Distance (m) to the grasp target at which the expert closes the gripper.
CLOSE_DISTANCE = 0.006
#: Gripper opening above which the expert waits (above the cube) for the fingers to open.
OPEN_ENOUGH = 0.3
#: IK iterations per descent step (warm-started from the current joints, the target is near).
DESCENT_IK_ITERATIONS = 15


@dataclass(frozen=True)
class ExpertParams:
    """One episode's behaviour.

    Attributes:
        approach_height: height (m) of the pre-grasp point above the cube's centre.
        joint_speed: cruise speed of the approach, as a fraction of the largest joint speed.
        ramp_steps: steps to reach the cruise speed (and to brake from it).
        descent_speed: speed (m/s) of the descent onto the cube.
        grasp_offset: (x, y) offset (m) of the grasp target from the cube's centre.
        roll_bias: (3,) bias (rad) of the roll joints 3, 5, 7 in the IK's preferred posture.
    """

    approach_height: float = 0.12
    joint_speed: float = 0.85
    ramp_steps: float = 5.0
    descent_speed: float = 0.2
    grasp_offset: tuple[float, float] = (0.0, 0.0)
    roll_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def jittered(self, rng: np.random.Generator) -> ExpertParams:
        """Parameters drawn around these for one episode."""
        radius, angle = 0.25 * SUCCESS_RADIUS * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        return replace(self, approach_height=float(rng.uniform(0.08, 0.16)),
                       joint_speed=float(rng.uniform(0.6, 0.95)), ramp_steps=float(rng.uniform(3.0, 7.0)),
                       descent_speed=float(rng.uniform(0.14, 0.26)),
                       grasp_offset=(float(radius * np.cos(angle)), float(radius * np.sin(angle))),
                       roll_bias=tuple(float(v) for v in rng.uniform(-0.3, 0.3, 3)))


@dataclass(frozen=True)
class _Plan:
    grasp_target: np.ndarray   # (3,) where the grasp point closes on the cube
    rotation: np.ndarray       # (3, 3) hand pointing down, fingers turned to the cube's faces
    pregrasp: np.ndarray       # (7,) joints above the cube


class ArmExpert:
    """Grasps the cube of :class:`~envs.arm.env.ToyArmEnv` from its full state (``get_state()``).

    Usage: ``expert.reset(seed)`` at the start of an episode, then ``action = expert.act(state)``
    every control step. With ``diverse=True`` (the default) the episode's parameters come from
    ``seed``; with ``diverse=False`` they are ``params`` unchanged.
    """

    def __init__(self, seed=0, diverse: bool = True, params: ExpertParams | None = None,
                 max_joint_speed: float = MAX_JOINT_SPEED):
        self.base_params = params or ExpertParams()
        self.diverse = diverse
        self.max_joint_step = float(max_joint_speed) / CONTROL_HZ
        self.reset(seed)

    def reset(self, seed=None) -> None:
        """Start a new episode: draw this episode's parameters from ``seed``."""
        rng = np.random.default_rng(seed)
        self.params = self.base_params.jittered(rng) if self.diverse else self.base_params
        self._speed = 0.0
        self._plan_key: tuple | None = None
        self._cached_plan: _Plan | None = None

    # ------------------------------------------------------------------ public API
    def act(self, state) -> np.ndarray:
        """The next action (8,) float32 (joint targets and gripper command) for ``state`` (13,)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_SIZE,) or not np.all(np.isfinite(state)):
            raise ValueError(f"state must be ToyArmEnv.get_state(), {STATE_SIZE} finite numbers, "
                             f"got shape {state.shape}")
        q, gripper = state[:N_JOINTS], state[N_JOINTS]
        cube, cube_yaw, grasped = state[N_JOINTS + 1:N_JOINTS + 4], state[N_JOINTS + 4], state[N_JOINTS + 5] > 0.5
        if grasped:
            self._speed = 0.0
            return _action(q, 1.0)
        plan = self._plan(cube, cube_yaw)
        position, rotation = end_effector(q)
        offset = position - plan.grasp_target
        height = offset[2]
        above = (np.hypot(offset[0], offset[1]) < ALIGNED_DISTANCE
                 and np.linalg.norm(orientation_error(rotation, plan.rotation)) < ALIGNED_ANGLE
                 and -CLOSE_DISTANCE < height < self.params.approach_height + 0.03)
        if not above:
            return _action(self._move_toward(q, plan.pregrasp), 0.0)
        self._speed = 0.0
        if np.linalg.norm(offset) < CLOSE_DISTANCE:
            return _action(self._solve_near(q, plan.grasp_target, plan.rotation), 1.0)
        if gripper > OPEN_ENOUGH:
            return _action(q, 0.0)  # descend only with the fingers open
        drop = min(self.params.descent_speed / CONTROL_HZ, max(height, 0.0))
        target = plan.grasp_target + (0.0, 0.0, max(height, 0.0) - drop)
        return _action(self._solve_near(q, target, plan.rotation), 0.0)

    # ------------------------------------------------------------------ planning
    def _plan(self, cube: np.ndarray, cube_yaw: float) -> _Plan:
        key = tuple(np.round(np.append(cube, cube_yaw), 6))
        if key != self._plan_key:
            facing = float(np.arctan2(cube[1], cube[0]))
            # The fingers of the home pose open along -x; turned by the base they open along
            # facing + pi. The cube looks the same every quarter turn: take the nearest face.
            natural = facing + np.pi
            quarter = np.pi / 2
            yaw = cube_yaw + quarter * np.round((natural - cube_yaw) / quarter)
            rotation = downward_rotation(yaw)
            grasp_target = cube + (*self.params.grasp_offset, 0.0)
            posture = HOME.copy()
            posture[0] = facing
            posture[[2, 4, 6]] += self.params.roll_bias
            pregrasp, _ = solve_ik(grasp_target + (0.0, 0.0, self.params.approach_height), rotation, posture,
                                   iterations=200, posture=posture)
            self._plan_key, self._cached_plan = key, _Plan(grasp_target, rotation, pregrasp)
        return self._cached_plan

    def _move_toward(self, q: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Joint targets one step along the straight joint-space line to ``goal``, trapezoidal in speed."""
        delta = goal - q
        distance = float(np.max(np.abs(delta)))
        cruise = self.params.joint_speed * self.max_joint_step
        acceleration = cruise / self.params.ramp_steps
        speed = min(self._speed + acceleration, cruise, np.sqrt(2.0 * acceleration * distance))
        if distance <= max(speed, 1e-9):
            self._speed = distance
            return goal.copy()
        self._speed = speed
        return q + delta * (speed / distance)

    def _solve_near(self, q: np.ndarray, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """Joints near ``q`` that put the grasp point at ``position``, no farther than one step away."""
        solution, _ = solve_ik(position, rotation, q, iterations=DESCENT_IK_ITERATIONS)
        delta = solution - q
        largest = float(np.max(np.abs(delta)))
        if largest > self.max_joint_step:
            delta *= self.max_joint_step / largest
        return q + delta


def _action(joints: np.ndarray, gripper: float) -> np.ndarray:
    return np.append(joints, gripper).astype(np.float32)
