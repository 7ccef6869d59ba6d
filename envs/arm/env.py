"""``ToyArmEnv``: a kinematic 7-DoF arm with a gripper and two cameras that grasps a cube.

No physics: joints follow their commands at a limited speed and the cube sits on the table until
it is grasped, then moves with the gripper. The kinematic chain (link lengths, joint axes and
limits) is in :mod:`envs.arm.kinematics`, the cameras in :mod:`envs.arm.render`.

- Observation dict: ``joint_pos`` (7,) float32 rad, ``gripper`` (1,) float32 in [0, 1] (0 open),
  ``cam_front`` and ``cam_top`` (S, S, 3) uint8 with S = ``camera_size`` (32): fixed orthographic
  views, from the front-left and above, and from straight above (see :mod:`envs.arm.render`).
- Action (8,) float32: absolute target joint positions (7, rad, clipped to the joint limits) and
  the gripper command (0 open .. 1 closed, clipped). Every step (20 Hz) each joint moves toward
  its target by at most ``max_joint_speed`` / 20 (1.5 rad/s) and the gripper by at most
  ``max_gripper_speed`` / 20 (2.5 per s: about 8 steps from open to closed). NaN/inf or a wrong
  shape raise ValueError.
- Task: a cube (6 cm, turned about z by up to 45 degrees) on the table at x in [0.35, 0.60] m,
  y in [-0.25, 0.25] m in front of the base. It is grasped when the grasp point between the
  fingertips is within ``success_radius`` (2 cm) of the cube's centre while the gripper is at
  least 0.9 closed; it stays grasped (and follows the grasp point) until the gripper opens below
  0.5, when it drops back onto the table.
- Reward, in [0, 1]: 1 while the cube is grasped; otherwise ``0.8 * (1 - min(d / 0.5, 1))``, plus
  ``0.2 * gripper`` while d < ``success_radius``, with d the distance (m) of the grasp point to
  the cube's centre (so reaching earns up to 0.8 and closing on the cube the rest).
- ``terminated`` (and ``info["is_success"]``) while the cube is grasped; ``truncated`` after
  ``max_episode_steps`` (100) steps, counted by the environment itself (no TimeLimit wrapper).
  Stepping on after either is allowed. ``info`` also has ``distance`` (d, tracked per episode by
  evaluations), ``ee_pos`` and ``cube_pos`` (3,) in m.
- ``reset(seed=s)`` is deterministic: the cube as above, the joints at ``HOME`` plus uniform noise
  of +-0.1 rad, the gripper open. ``reset(options={"reset_to_state": s})`` (or
  :meth:`ToyArmEnv.reset_to_state`) starts from a :meth:`ToyArmEnv.get_state` vector instead.
- ``render_mode="rgb_array"``: both views side by side, (``render_size``, 2 * ``render_size``, 3)
  uint8 (front on the left).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.arm import render as cameras
from envs.arm.kinematics import HOME, JOINT_HIGH, JOINT_LOW, N_JOINTS, forward_kinematics

#: Steps after which an episode is truncated.
MAX_EPISODE_STEPS = 100
#: Control rate (steps per second).
CONTROL_HZ = 20
#: Largest joint speed (rad/s) and gripper speed (opening per s).
MAX_JOINT_SPEED = 1.5
MAX_GRIPPER_SPEED = 2.5
#: Edge of the cube (m).
CUBE_SIZE = 0.06
#: Where the cube's centre is placed at reset (m) and its turn about z (rad).
CUBE_X_RANGE = (0.35, 0.60)
CUBE_Y_RANGE = (-0.25, 0.25)
CUBE_YAW_RANGE = (-np.pi / 4, np.pi / 4)
#: Distance (m) of the grasp point to the cube's centre within which closing grasps it.
SUCCESS_RADIUS = 0.02
#: Gripper opening at or above which the cube is grasped, and below which it is released.
GRIPPER_CLOSED = 0.9
GRIPPER_RELEASE = 0.5
#: Distance (m) at which the reaching part of the reward starts to grow.
REACH_SCALE = 0.5
#: Half width (rad) of the uniform noise added to the home pose at reset.
START_NOISE = 0.1
#: Layout of :meth:`ToyArmEnv.get_state`.
STATE_FIELDS = ("joint_pos (7)", "gripper", "cube_x", "cube_y", "cube_z", "cube_yaw", "grasped")
STATE_SIZE = N_JOINTS + 6


class ToyArmEnv(gym.Env):
    """Grasp a cube with a kinematic 7-DoF arm by commanding absolute joint targets (20 Hz)."""

    # episode_info_keys: info values an evaluator tracks per episode (best and final).
    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ, "episode_info_keys": ("distance",)}

    def __init__(self, render_mode: str | None = None, render_size: int = 128, camera_size: int = 32,
                 max_episode_steps: int = MAX_EPISODE_STEPS, max_joint_speed: float = MAX_JOINT_SPEED,
                 max_gripper_speed: float = MAX_GRIPPER_SPEED, success_radius: float = SUCCESS_RADIUS):
        """
        Args:
            render_mode: None or "rgb_array" (``render()`` returns both views side by side).
            render_size: height in px of the frames ``render()`` returns (their width is twice that).
            camera_size: side in px of the two camera observations.
            max_episode_steps: steps after which an episode is truncated.
            max_joint_speed: largest joint speed (rad/s).
            max_gripper_speed: largest gripper speed (full opening per s).
            success_radius: distance (m) of the grasp point to the cube within which closing grasps it.
        """
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        if int(render_size) < 8 or int(camera_size) < 8:
            raise ValueError(f"render_size and camera_size must be >= 8, got {render_size} and {camera_size}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if not (max_joint_speed > 0 and max_gripper_speed > 0 and success_radius > 0):
            raise ValueError("max_joint_speed, max_gripper_speed and success_radius must be positive, got "
                             f"{max_joint_speed}, {max_gripper_speed} and {success_radius}")
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.camera_size = int(camera_size)
        self.max_episode_steps = int(max_episode_steps)
        self.max_joint_step = float(max_joint_speed) / CONTROL_HZ
        self.max_gripper_step = float(max_gripper_speed) / CONTROL_HZ
        self.success_radius = float(success_radius)

        image = spaces.Box(low=0, high=255, shape=(self.camera_size, self.camera_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict({
            "joint_pos": spaces.Box(low=JOINT_LOW.astype(np.float32), high=JOINT_HIGH.astype(np.float32),
                                    dtype=np.float32),
            "gripper": spaces.Box(low=0.0, high=1.0, shape=(1,), dtype=np.float32),
            "cam_front": image,
            "cam_top": image,
        })
        self.action_space = spaces.Box(low=np.append(JOINT_LOW, 0.0).astype(np.float32),
                                       high=np.append(JOINT_HIGH, 1.0).astype(np.float32), dtype=np.float32)
        self.joint_pos = HOME.copy()
        self.gripper = 0.0
        self.cube_pos = np.zeros(3)
        self.cube_yaw = 0.0
        self.grasped = False
        self._elapsed_steps = 0
        self._needs_reset = True
        self._kinematics = forward_kinematics(self.joint_pos)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"reset_to_state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['reset_to_state']")
        if options.get("reset_to_state") is not None:
            self._set_state(options["reset_to_state"])
        else:
            rng = self.np_random
            x, y = rng.uniform(*CUBE_X_RANGE), rng.uniform(*CUBE_Y_RANGE)
            self.cube_pos = np.array([x, y, CUBE_SIZE / 2])
            self.cube_yaw = float(rng.uniform(*CUBE_YAW_RANGE))
            self.joint_pos = np.clip(HOME + rng.uniform(-START_NOISE, START_NOISE, N_JOINTS), JOINT_LOW, JOINT_HIGH)
            self.gripper = 0.0
            self.grasped = False
        self._kinematics = forward_kinematics(self.joint_pos)
        self._elapsed_steps = 0
        self._needs_reset = False
        return self._observation(), self._info()

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("ToyArmEnv.step() called before reset()")
        action = _as_action(action)
        joint_target = np.clip(action[:N_JOINTS], JOINT_LOW, JOINT_HIGH)
        gripper_target = min(max(action[N_JOINTS], 0.0), 1.0)
        step = self.max_joint_step
        self.joint_pos = np.clip(self.joint_pos + np.clip(joint_target - self.joint_pos, -step, step),
                                 JOINT_LOW, JOINT_HIGH)
        self.gripper += min(max(gripper_target - self.gripper, -self.max_gripper_step), self.max_gripper_step)
        self._kinematics = forward_kinematics(self.joint_pos)
        grasp_point = self._kinematics[0][-1]
        if self.grasped and self.gripper < GRIPPER_RELEASE:
            self.grasped = False
            self.cube_pos = np.array([self.cube_pos[0], self.cube_pos[1], CUBE_SIZE / 2])  # drops onto the table
        if (not self.grasped and self.gripper >= GRIPPER_CLOSED
                and np.linalg.norm(grasp_point - self.cube_pos) < self.success_radius):
            self.grasped = True
        if self.grasped:
            self.cube_pos = grasp_point.copy()
        self._elapsed_steps += 1
        info = self._info()
        truncated = self._elapsed_steps >= self.max_episode_steps
        return self._observation(), self._reward(info["distance"]), self.grasped, truncated, info

    def render(self):
        """RGB uint8 frame (render_size, 2 * render_size, 3): front view | top view; None without render_mode."""
        if self.render_mode is None:
            return None
        return np.concatenate([self._camera(cameras.FRONT, self.render_size),
                               self._camera(cameras.TOP, self.render_size)], axis=1)

    # ------------------------------------------------------------------ helpers
    def hold_action(self) -> np.ndarray:
        """The action that keeps the arm where it is: the current joints and gripper as targets."""
        return np.append(self.joint_pos, self.gripper)

    def get_state(self) -> np.ndarray:
        """The full state (13,) float64: joints (7), gripper, cube x, y, z, yaw, grasped (0/1)."""
        return np.concatenate([self.joint_pos, [self.gripper], self.cube_pos, [self.cube_yaw, float(self.grasped)]])

    def reset_to_state(self, state):
        """``reset(options={"reset_to_state": state})``: start an episode from a :meth:`get_state` vector."""
        return self.reset(options={"reset_to_state": state})

    def grasp_point(self) -> np.ndarray:
        """World position (3,) of the grasp point between the fingertips."""
        return self._kinematics[0][-1].copy()

    def cube_rotation(self) -> np.ndarray:
        """The cube's rotation (3, 3): a turn of ``cube_yaw`` about z."""
        c, s = np.cos(self.cube_yaw), np.sin(self.cube_yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def _set_state(self, state) -> None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_SIZE,) or not np.all(np.isfinite(state)):
            raise ValueError(f"reset_to_state must be {STATE_SIZE} finite numbers {list(STATE_FIELDS)}, "
                             f"got {state!r}")
        joints = state[:N_JOINTS]
        if np.any(joints < JOINT_LOW) or np.any(joints > JOINT_HIGH):
            raise ValueError(f"reset_to_state joints must lie within the joint limits [{JOINT_LOW}, {JOINT_HIGH}], "
                             f"got {joints}")
        if not 0.0 <= state[N_JOINTS] <= 1.0:
            raise ValueError(f"reset_to_state gripper must lie in [0, 1], got {state[N_JOINTS]}")
        self.joint_pos = joints.copy()
        self.gripper = float(state[N_JOINTS])
        self.cube_pos = state[N_JOINTS + 1:N_JOINTS + 4].copy()
        self.cube_yaw = float(state[N_JOINTS + 4])
        self.grasped = bool(state[N_JOINTS + 5] > 0.5)

    def _camera(self, view: cameras.View, size: int) -> np.ndarray:
        points, rotation, _, _ = self._kinematics
        return cameras.draw(view, size, points, rotation, self.gripper, self.cube_pos, self.cube_rotation(),
                            CUBE_SIZE / 2)

    def _observation(self) -> dict:
        return {
            "joint_pos": self.joint_pos.astype(np.float32),
            "gripper": np.array([self.gripper], dtype=np.float32),
            "cam_front": self._camera(cameras.FRONT, self.camera_size),
            "cam_top": self._camera(cameras.TOP, self.camera_size),
        }

    def _reward(self, distance: float) -> float:
        if self.grasped:
            return 1.0
        reward = 0.8 * (1.0 - min(distance / REACH_SCALE, 1.0))
        if distance < self.success_radius:
            reward += 0.2 * self.gripper
        return float(reward)

    def _info(self) -> dict:
        grasp_point = self._kinematics[0][-1]
        return {"is_success": self.grasped, "distance": float(np.linalg.norm(grasp_point - self.cube_pos)),
                "ee_pos": grasp_point.copy(), "cube_pos": self.cube_pos.copy()}


def _as_action(action) -> np.ndarray:
    """``action`` as a finite float64 (8,) vector, or a ValueError that says why."""
    try:
        values = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action must be 8 numbers (7 target joint angles and the gripper command), "
                         f"got {action!r}") from exc
    if values.shape != (N_JOINTS + 1,):
        raise ValueError(f"action must have shape ({N_JOINTS + 1},), got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"action must be finite, got {values.tolist()}")
    return values
