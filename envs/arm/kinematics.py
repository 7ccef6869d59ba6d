"""Forward kinematics, the geometric Jacobian and damped-least-squares IK of the toy 7-DoF arm.

World frame: the base stands at the origin on the table (z = 0 is the table top), x points to
the front of the arm, z up. The chain alternates yaw/roll joints (about the local z axis, which
points along the link) and pitch joints (about the local y axis):

====  ======  =====================  =================================================
joint axis    limits (rad)           role
====  ======  =====================  =================================================
1     z       [-2.8, 2.8]            base yaw, at the top of a column of ``BASE_HEIGHT``
2     y       [-1.6, 1.6]            shoulder pitch, then the upper arm (``UPPER_ARM``)
3     z       [-2.8, 2.8]            upper-arm roll
4     y       [-0.2, 2.7]            elbow pitch, then the forearm (``FOREARM``)
5     z       [-2.8, 2.8]            forearm roll
6     y       [-2.0, 2.0]            wrist pitch, then the hand (``HAND``) to the grasp point
7     z       [-2.8, 2.8]            wrist roll: turns the fingers about the hand axis
====  ======  =====================  =================================================

The end effector is the grasp point between the fingertips; its frame's z axis points along the
hand (the approach direction) and its x axis is the direction in which the fingers open. A
positive pitch tilts the next link toward the local +x: positive shoulder, elbow and wrist
pitches bend the arm forward and down.
"""

from __future__ import annotations

import math

import numpy as np

N_JOINTS = 7
#: Height of the shoulder (joint 2) above the table.
BASE_HEIGHT = 0.30
#: Shoulder to elbow.
UPPER_ARM = 0.40
#: Elbow to wrist (joint 6).
FOREARM = 0.35
#: Wrist to the grasp point between the fingertips.
HAND = 0.12
#: Joint axis in the local frame: 2 for z (yaw/roll), 1 for y (pitch).
JOINT_AXES = (2, 1, 2, 1, 2, 1, 2)
JOINT_LOW = np.array([-2.8, -1.6, -2.8, -0.2, -2.8, -2.0, -2.8])
JOINT_HIGH = np.array([2.8, 1.6, 2.8, 2.7, 2.8, 2.0, 2.8])
#: A tucked pose: the hand points straight down, short of the cube area (both cameras see the cube).
HOME = np.array([0.0, -0.2, 0.0, 1.9, 0.0, np.pi - 1.7, 0.0])
#: Link (local z) offset that follows each joint; joint 1 sits at the top of the base column.
_OFFSETS = (0.0, UPPER_ARM, 0.0, FOREARM, 0.0, 0.0, HAND)


def _combine(a: float, u: tuple, b: float, v: tuple) -> tuple[float, float, float]:
    """``a * u + b * v`` for 3-tuples of floats."""
    return a * u[0] + b * v[0], a * u[1] + b * v[1], a * u[2] + b * v[2]


def forward_kinematics(q) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pose of the chain at joint angles ``q`` (7,).

    Returns ``(points, rotation, joint_origins, joint_axes)``: ``points`` (5, 3) are the base,
    shoulder, elbow, wrist and grasp point; ``rotation`` (3, 3) the end-effector frame (columns:
    finger direction, side, approach axis); ``joint_origins`` and ``joint_axes`` (7, 3) where each
    joint sits and its unit axis in the world, for the Jacobian.
    """
    # Plain floats: numpy's per-call overhead would dominate a chain of 3-vectors (the expert's IK
    # and every camera frame run this).
    x, y, z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)  # columns of the running rotation
    position = (0.0, 0.0, BASE_HEIGHT)
    points = [(0.0, 0.0, 0.0), position]
    origins, axes = [], []
    for i, angle in enumerate(np.asarray(q, dtype=np.float64).tolist()):
        origins.append(position)
        c, s = math.cos(angle), math.sin(angle)
        if JOINT_AXES[i] == 2:
            axes.append(z)
            x, y = _combine(c, x, s, y), _combine(c, y, -s, x)
        else:
            axes.append(y)
            x, z = _combine(c, x, -s, z), _combine(s, x, c, z)
        if _OFFSETS[i]:
            position = _combine(1.0, position, _OFFSETS[i], z)
            points.append(position)
    return np.array(points), np.array([x, y, z]).T, np.array(origins), np.array(axes)


def end_effector(q) -> tuple[np.ndarray, np.ndarray]:
    """Grasp point (3,) and end-effector rotation (3, 3) at joint angles ``q``."""
    points, rotation, _, _ = forward_kinematics(q)
    return points[-1], rotation


def jacobian(q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(J, position, rotation)``: the geometric Jacobian (6, 7) of the grasp point (linear
    velocity rows first, then angular) and the pose it was taken at."""
    points, rotation, origins, axes = forward_kinematics(q)
    position = points[-1]
    return np.vstack([_cross(axes, position - origins).T, axes.T]), position, rotation


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (N, 3) arrays (np.cross costs several times more at this size)."""
    return a[:, [1, 2, 0]] * b[:, [2, 0, 1]] - a[:, [2, 0, 1]] * b[:, [1, 2, 0]]


def orientation_error(rotation: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Small-angle rotation vector (3,) that turns ``rotation`` toward ``target`` (both 3 x 3)."""
    return 0.5 * _cross(rotation.T, target.T).sum(axis=0)


def solve_ik(target_position, target_rotation, q0, iterations: int = 100, damping: float = 0.01,
             orientation_weight: float = 0.3, posture=None, posture_gain: float = 0.05,
             max_joint_step: float = 0.3, tolerance: float = 1e-4) -> tuple[np.ndarray, float]:
    """Joint angles that put the grasp point at ``target_position`` with ``target_rotation``.

    Damped least squares from ``q0``, clipped to the joint limits after every iteration, with an
    optional pull toward ``posture`` in the Jacobian's null space (it picks among the redundant
    solutions). Returns ``(q, error)``, the error being the weighted pose error norm (m).
    """
    q = np.clip(np.asarray(q0, dtype=np.float64), JOINT_LOW, JOINT_HIGH)
    weights = np.array([1.0, 1.0, 1.0, orientation_weight, orientation_weight, orientation_weight])
    error_norm = np.inf
    for _ in range(iterations):
        J, position, rotation = jacobian(q)
        error = np.concatenate([target_position - position, orientation_error(rotation, target_rotation)])
        error *= weights
        error_norm = float(np.linalg.norm(error))
        if error_norm < tolerance:
            break
        Jw = J * weights[:, None]
        inverse = np.linalg.solve(Jw @ Jw.T + damping ** 2 * np.eye(6), Jw).T
        step = inverse @ error
        if posture is not None:
            step += posture_gain * (np.eye(N_JOINTS) - inverse @ Jw) @ (posture - q)
        largest = np.max(np.abs(step))
        if largest > max_joint_step:
            step *= max_joint_step / largest
        q = np.clip(q + step, JOINT_LOW, JOINT_HIGH)
    return q, error_norm


def downward_rotation(yaw: float) -> np.ndarray:
    """End-effector rotation with the hand pointing straight down and the fingers opening along
    the horizontal direction at angle ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])
