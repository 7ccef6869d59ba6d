"""The pose error and the frictionless quasi-static push model that screens candidate pushes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from envs.pusht.geometry import BLOCK_CENTER_OF_GRAVITY, GOAL_POSE, body_to_world, cross_2d, rotation_matrix
from envs.pusht.sim import BLOCK_MASS, BLOCK_MOMENT

if TYPE_CHECKING:
    from envs.pusht.expert.candidates import _PushSet

#: rho^2 of the pose error: polar moment of the T's area about the centre of gravity / area (px^2).
ROTATION_RADIUS_SQ = 1950.0

_COG = np.asarray(BLOCK_CENTER_OF_GRAVITY, dtype=np.float64)
_GOAL_COG = body_to_world(_COG, GOAL_POSE)


def wrap_angle(angle):
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(angle) + math.pi) % (2 * math.pi) - math.pi


def pose_error(pose, goal_pose=GOAL_POSE) -> float:
    """Distance of a block pose from the goal in px: sqrt(|d_cog|^2 + rho^2 d_theta^2).

    ``d_theta`` is wrapped to [-pi, pi). The rotation term grows linearly with the angle up to half
    a turn (unlike ``2 (1 - cos d_theta) rho^2``, which is flat there), so turning a block that is
    upside down counts as progress.
    """
    cog = body_to_world(_COG, pose)
    goal_cog = body_to_world(_COG, goal_pose)
    d_theta = float(wrap_angle(float(pose[2]) - float(goal_pose[2])))
    rotation_sq = ROTATION_RADIUS_SQ * d_theta ** 2
    return math.sqrt(float(np.sum((cog - goal_cog) ** 2)) + rotation_sq)


def predict_pushes(pose, pushes: _PushSet, max_depth: float):
    """Frictionless quasi-static prediction for every candidate push from block ``pose``.

    Returns ``(depth, error)``: the normal push depth (px, in [0, max_depth]) that minimises the
    predicted pose error along that push, and the predicted error after it. A push of normal depth
    ``s`` at a contact with inward normal ``u`` and lever ``l = (c - cog) x u`` moves the centre of
    gravity by ``u s / k`` and turns the block by ``l s / (I k)``, with ``k = 1/m + l^2 / I``.
    """
    rot = rotation_matrix(float(pose[2]))
    cog = body_to_world(_COG, pose)
    d_cog = cog - _GOAL_COG
    d_theta = float(wrap_angle(float(pose[2]) - GOAL_POSE[2]))
    inward = -pushes.normal
    inward_world = inward @ rot.T

    def evaluate(contact):
        lever = cross_2d(contact - _COG, inward)
        k = 1.0 / BLOCK_MASS + lever ** 2 / BLOCK_MOMENT
        g = inward_world / k[:, None]          # d cog / d s
        h = lever / (BLOCK_MOMENT * k)         # d theta / d s
        # Quadratic (small-angle) model of the error along the push; closed-form best depth.
        num = d_cog @ g.T + ROTATION_RADIUS_SQ * d_theta * h
        den = (g ** 2).sum(axis=1) + ROTATION_RADIUS_SQ * h ** 2
        depth = np.clip(-num / den, 0.0, max_depth)
        return depth, g, h

    depth, _, _ = evaluate(pushes.contact)
    # Sliding pushes move their contact along the edge: use the contact halfway through the push.
    depth, g, h = evaluate(pushes.contact + pushes.tangent * (0.5 * depth * pushes.slide)[:, None])
    new_cog = d_cog + g * depth[:, None]
    new_theta = d_theta + h * depth
    error = np.sqrt((new_cog ** 2).sum(axis=1) + ROTATION_RADIUS_SQ * wrap_angle(new_theta) ** 2)
    return depth, error
