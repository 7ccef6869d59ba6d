"""Geometry of the Push-T task: the T block, its keypoints, the goal, coverage, frames.

Coordinates are pixels of the 512 x 512 workspace, y growing downwards (pymunk coordinates
equal image pixels). A pose is ``(x, y, theta)``: the body origin in world pixels and the
rotation in radians. Body-frame points map to the world as ``R(theta) @ p + (x, y)``.

The T is the union of two boxes with disjoint interiors (they share the edge y = 30), so the
overlap of two T's is the sum of the four box-box overlaps; each is a convex clip, computed
exactly in plain Python (no shapely on the hot path; tests check it against shapely).

The outline of the T (:data:`T_OUTLINE`), its edge normals and the signed distance to the T
(:func:`t_signed_distance`) serve the scripted expert (:mod:`envs.pusht.expert`).
"""

from __future__ import annotations

import math

import numpy as np

#: Side of the square workspace in pixels; actions and positions live in [0, WORKSPACE_SIZE].
WORKSPACE_SIZE = 512.0

#: The T's top bar (120 x 30) in the body frame.
BAR_VERTICES = np.array([(-60.0, 30.0), (60.0, 30.0), (60.0, 0.0), (-60.0, 0.0)])
#: The T's stem (30 x 90) in the body frame.
STEM_VERTICES = np.array([(-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0)])
#: Both boxes of the T, in the order the original simulator creates its shapes.
T_BOXES = (BAR_VERTICES, STEM_VERTICES)
#: Area of the T in px^2 (3600 + 2700).
T_AREA = 6300.0
#: Centre of gravity of the block in the body frame: the plain mean of the two box centroids
#: (0, 15) and (0, 75), as the original sets it (not the area-weighted centroid of the T).
BLOCK_CENTER_OF_GRAVITY = (0.0, 45.0)

#: Goal pose (x, y, theta) of the T.
GOAL_POSE = np.array([256.0, 256.0, math.pi / 4])

#: Coverage above which an episode is a success and terminates.
SUCCESS_COVERAGE = 0.95

#: The 9 keypoints of the original benchmark in the T's body frame (pixels), in the order of the
#: dataset's ``keypoint`` array. The original chose them by farthest-point sampling on a mask of the
#: T; these values were recovered from the human dataset with :func:`derive_body_keypoints`
#: (``tests/test_env_geometry.py`` re-derives them and compares), so policies trained on the
#: dataset's keypoints see the same points in this environment.
KEYPOINTS_BODY = np.array([
    [9.269787, 90.040974],
    [-60.983472, -1.186730],
    [60.912755, -1.393363],
    [-0.270504, 25.543625],
    [-14.064927, 122.815854],
    [39.002738, 32.857404],
    [-39.966414, 32.729655],
    [-16.824344, 62.863179],
    [23.541461, -1.700288],
])


def rotation_matrix(theta: float) -> np.ndarray:
    """2 x 2 matrix rotating body-frame vectors by ``theta`` into the world frame."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def body_to_world(points: np.ndarray, pose) -> np.ndarray:
    """Map body-frame points (..., 2) to world pixels for a pose (x, y, theta)."""
    x, y, theta = (float(v) for v in pose)
    return np.asarray(points, dtype=np.float64) @ rotation_matrix(theta).T + (x, y)


def world_to_body(points: np.ndarray, pose) -> np.ndarray:
    """Map world points (..., 2) into the body frame of a pose (x, y, theta)."""
    x, y, theta = (float(v) for v in pose)
    return (np.asarray(points, dtype=np.float64) - (x, y)) @ rotation_matrix(theta)


def keypoints_world(pose) -> np.ndarray:
    """The 9 keypoints (9, 2) of a T at ``pose``, in world pixels."""
    return body_to_world(KEYPOINTS_BODY, pose)


def derive_body_keypoints(state: np.ndarray, keypoint: np.ndarray) -> np.ndarray:
    """Recover the body-frame keypoints (K, 2) from recorded states (N, 5) and world keypoints (N, K, 2).

    Each frame gives ``R(-theta) @ (keypoint - block_xy)``; the median over frames is returned
    (a few recorded frames disagree by up to ~1 px, so the median is used rather than the mean).
    """
    state = np.asarray(state, dtype=np.float64)
    keypoint = np.asarray(keypoint, dtype=np.float64)
    if state.ndim != 2 or state.shape[1] != 5:
        raise ValueError(f"state must have shape (N, 5) [agent_x, agent_y, block_x, block_y, angle], "
                         f"got {state.shape}")
    if keypoint.ndim != 3 or keypoint.shape[0] != state.shape[0] or keypoint.shape[2] != 2:
        raise ValueError(f"keypoint must have shape (N, K, 2) with N = {state.shape[0]}, "
                         f"got {keypoint.shape}")
    c = np.cos(state[:, 4])[:, None]
    s = np.sin(state[:, 4])[:, None]
    d = keypoint - state[:, None, 2:4]
    body = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)
    return np.median(body, axis=0)


def t_polygons(pose) -> list[np.ndarray]:
    """The two boxes (4, 2) of a T at ``pose``, in world pixels."""
    return [body_to_world(box, pose) for box in T_BOXES]


# ------------------------------------------------------------------ coverage (exact, fast)

def _box_corners(pose) -> list[list[tuple[float, float]]]:
    """World corners of the two boxes as lists of (x, y) tuples (plain floats, for the clipper)."""
    x, y, theta = (float(v) for v in pose)
    c, s = math.cos(theta), math.sin(theta)
    return [[(c * px - s * py + x, s * px + c * py + y) for px, py in box.tolist()] for box in T_BOXES]


def _clip_convex(subject: list[tuple[float, float]], clip: list[tuple[float, float]],
                 orientation: float) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: the part of convex ``subject`` inside convex ``clip``.

    ``orientation`` is +1 when ``clip`` is counter-clockwise (in the maths sense of the
    cross product), -1 otherwise.
    """
    output = subject
    n = len(clip)
    for i in range(n):
        if not output:
            break
        ax, ay = clip[i]
        bx, by = clip[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        points = output
        output = []
        px, py = points[-1]
        p_side = orientation * (ex * (py - ay) - ey * (px - ax))
        for qx, qy in points:
            q_side = orientation * (ex * (qy - ay) - ey * (qx - ax))
            if q_side >= 0.0:
                if p_side < 0.0:
                    t = p_side / (p_side - q_side)
                    output.append((px + t * (qx - px), py + t * (qy - py)))
                output.append((qx, qy))
            elif p_side >= 0.0:
                t = p_side / (p_side - q_side)
                output.append((px + t * (qx - px), py + t * (qy - py)))
            px, py, p_side = qx, qy, q_side
    return output


def _polygon_area(points: list[tuple[float, float]]) -> float:
    """Unsigned shoelace area."""
    if len(points) < 3:
        return 0.0
    total = 0.0
    px, py = points[-1]
    for qx, qy in points:
        total += px * qy - qx * py
        px, py = qx, qy
    return abs(total) * 0.5


def _orientation(points: list[tuple[float, float]]) -> float:
    (ax, ay), (bx, by), (cx, cy) = points[:3]
    return 1.0 if (bx - ax) * (cy - ay) - (by - ay) * (cx - ax) > 0.0 else -1.0


def overlap_area(pose_a, pose_b) -> float:
    """Area in px^2 of the intersection of a T at ``pose_a`` with a T at ``pose_b``."""
    boxes_a = _box_corners(pose_a)
    boxes_b = _box_corners(pose_b)
    area = 0.0
    for clip in boxes_b:
        orientation = _orientation(clip)
        for subject in boxes_a:
            area += _polygon_area(_clip_convex(subject, clip, orientation))
    return area


def coverage(block_pose, goal_pose=GOAL_POSE) -> float:
    """Fraction of the goal T covered by the block T: area(goal & block) / area(goal), in [0, 1]."""
    return min(1.0, overlap_area(block_pose, goal_pose) / T_AREA)


def reward_from_coverage(cov: float) -> float:
    """The task reward: ``clip(coverage / 0.95, 0, 1)``."""
    return min(1.0, max(0.0, cov / SUCCESS_COVERAGE))


# ------------------------------------------------------------------ the outline and signed distance

#: The T's outline in the body frame, counter-clockwise in the cross-product sense.
T_OUTLINE = np.array([(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (15.0, 30.0),
                      (15.0, 120.0), (-15.0, 120.0), (-15.0, 30.0), (-60.0, 30.0)])
# Axis-aligned boxes of the T in the body frame: (centre x, centre y, half width, half height).
_T_AXIS_BOXES = np.array([[(b[:, 0].min() + b[:, 0].max()) / 2, (b[:, 1].min() + b[:, 1].max()) / 2,
                           (b[:, 0].max() - b[:, 0].min()) / 2, (b[:, 1].max() - b[:, 1].min()) / 2]
                          for b in T_BOXES])


def t_signed_distance(points: np.ndarray) -> np.ndarray:
    """Signed distance (px) from body-frame points (..., 2) to the T: negative inside."""
    p = np.asarray(points, dtype=np.float64)[..., None, :] - _T_AXIS_BOXES[:, :2]
    q = np.abs(p) - _T_AXIS_BOXES[:, 2:]
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return (outside + inside).min(axis=-1)


def cross_2d(a, b):
    """z-component of the 2-D cross product, broadcast over leading dimensions."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def signed_area(outline: np.ndarray) -> float:
    """Shoelace area of a closed polyline (M, 2): positive when counter-clockwise (cross-product sense)."""
    return 0.5 * float(np.sum(cross_2d(outline, np.roll(outline, -1, axis=0))))


def outward_normals(outline: np.ndarray) -> np.ndarray:
    """Unit outward normals (M, 2) of the edges ``outline[i] -> outline[i + 1]`` of a closed polyline."""
    edges = np.roll(outline, -1, axis=0) - outline
    edges /= np.linalg.norm(edges, axis=1, keepdims=True)
    sign = 1.0 if signed_area(outline) > 0 else -1.0
    return sign * np.stack([edges[:, 1], -edges[:, 0]], axis=1)


def nearest_outline_edge(point_body: np.ndarray) -> int:
    """Index of the edge of :data:`T_OUTLINE` nearest a body-frame point."""
    a = T_OUTLINE
    d = np.roll(T_OUTLINE, -1, axis=0) - a
    t = np.clip(((point_body - a) * d).sum(axis=1) / (d ** 2).sum(axis=1), 0.0, 1.0)
    return int(np.argmin(np.linalg.norm(a + t[:, None] * d - point_body, axis=1)))
