"""Two fixed orthographic cameras of the toy arm, drawn with numpy.

- ``front``: from the front-left of the arm (35 degrees from +x toward +y), 30 degrees above the
  table, centred on (0.25, 0, 0.3) m: the table, the floor beyond it, the arm and the cube.
- ``top``: from straight above, centred on (0.3, 0, 0): image rows follow -x from x = 0.8 m (top
  row) to x = -0.2 m, columns follow -y over [0.5, -0.5] m, so the base sits near the bottom middle.

Both views are 1 m wide and high whatever their size in px (a :class:`View` is any orthographic
camera). The links are thick lines, the gripper (palm bar and two fingers, spread by its opening)
and the cube are drawn in their own colours over a plain background (the table, the floor beyond
it), each pixel showing the nearest of them (a depth buffer).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

TABLE_COLOR = (196, 164, 120)
FLOOR_COLOR = (228, 228, 232)
LINK_COLOR = (50, 70, 140)
GRIPPER_COLOR = (245, 150, 20)
CUBE_COLOR = (220, 30, 40)

#: Half thickness of the drawn links (m).
LINK_RADIUS = 0.03
#: Half thickness of the palm bar and the fingers (m).
FINGER_RADIUS = 0.015
#: Palm (finger roots) and fingertips, measured from the wrist along the hand (m).
PALM_OFFSET = 0.07
TIP_OFFSET = 0.14
#: Half distance between the fingers when closed and when open (m).
FINGER_CLOSED = 0.01
FINGER_OPEN = 0.05
#: Least drawn half thickness (px), so that small frames still show every part.
MIN_RADIUS_PX = 0.75


@dataclass(frozen=True)
class View:
    """An orthographic camera looking at ``centre`` from the direction (``azimuth``, ``elevation``).

    ``azimuth`` (deg) turns from +x toward +y and ``elevation`` (deg) rises from the table, giving
    the unit vector ``toward`` from the scene to the camera. Image columns follow ``col_axis``
    (horizontal, to the camera's right) and rows ``row_axis`` (down the image); the view is
    ``width`` m wide and high, whatever its size in px.
    """

    name: str
    azimuth: float
    elevation: float
    centre: tuple[float, float, float]
    width: float = 1.0

    @cached_property
    def toward(self) -> np.ndarray:
        az, el = np.radians(self.azimuth), np.radians(self.elevation)
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])

    @cached_property
    def col_axis(self) -> np.ndarray:
        az = np.radians(self.azimuth)
        return np.array([-np.sin(az), np.cos(az), 0.0])

    @cached_property
    def row_axis(self) -> np.ndarray:
        return -np.cross(self.toward, self.col_axis)

    def project(self, points, size: int) -> np.ndarray:
        """(..., 3) world points -> (..., 2) continuous ``(column, row)`` pixel coordinates (the
        centre of pixel ``[r, c]`` is at ``(c + 0.5, r + 0.5)``)."""
        axes = np.array([self.col_axis, self.row_axis]).T * (size / self.width)
        return np.asarray(points) @ axes - (np.asarray(self.centre) @ axes - size / 2)

    def depth(self, points) -> np.ndarray:
        """(..., 3) world points -> (...) distance (m) toward the camera from the plane through ``centre``."""
        return (np.asarray(points) - self.centre) @ self.toward


#: Seen from the front-left of the arm and above; the workspace fills the view.
FRONT = View("front", azimuth=35.0, elevation=30.0, centre=(0.25, 0.0, 0.3))
#: Seen from straight above, the front of the table (+x) up; columns follow -y.
TOP = View("top", azimuth=180.0, elevation=90.0, centre=(0.3, 0.0, 0.0))
#: Table top (z = 0), x and y bounds (m); the floor shows beyond it.
TABLE_X = (-0.35, 0.95)
TABLE_Y = (-0.65, 0.65)

#: Primitives, in this order: four links, the palm bar, two fingers, the cube.
_PALETTE = np.array([LINK_COLOR] * 4 + [GRIPPER_COLOR] * 3 + [CUBE_COLOR], dtype=np.uint8)
_SEGMENT_IDS = np.arange(7, dtype=np.float32)[:, None, None]
_CUBE_ID = 7
_N_IDS = 8
#: Depth buffer resolution (steps per m). Each pixel keeps ``floor(depth * steps) * 8 + id`` of
#: its primitives, so a single max over them gives the nearest one and its id at once (a max is
#: several times cheaper than an argmax across primitives at this size).
_DEPTH_STEPS = 1e4


@dataclass(frozen=True)
class _Grid:
    cols: np.ndarray        # (1, 1, S) pixel-centre columns (px)
    rows: np.ndarray        # (1, S, 1) pixel-centre rows (px)
    points: np.ndarray      # (3, S * S) world points of the pixel centres on the plane through centre
    background: np.ndarray  # (S, S, 3) uint8


@lru_cache(maxsize=16)
def _grid(view: View, size: int) -> _Grid:
    centres = np.arange(size) + 0.5
    offsets = centres * (view.width / size) - view.width / 2
    centres = centres.astype(np.float32)
    points = (np.asarray(view.centre)[:, None, None] + view.col_axis[:, None, None] * offsets[None, None, :]
              + view.row_axis[:, None, None] * offsets[None, :, None]).reshape(3, -1)
    background = np.empty((size * size, 3), dtype=np.uint8)
    background[:] = FLOOR_COLOR
    toward = view.toward
    if toward[2] > 1e-9:  # where each pixel's line meets the table plane z = 0
        hit = points - points[2] / toward[2] * toward[:, None]
        on_table = ((hit[0] >= TABLE_X[0]) & (hit[0] <= TABLE_X[1]) & (hit[1] >= TABLE_Y[0]) & (hit[1] <= TABLE_Y[1]))
        background[on_table] = TABLE_COLOR
    for array in (centres, points, background):
        array.setflags(write=False)
    return _Grid(centres[None, None, :], centres[None, :, None], points, background.reshape(size, size, 3))


def gripper_segments(wrist: np.ndarray, rotation: np.ndarray, gripper: float) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (3, 3) of the palm bar and the two fingers for opening ``gripper`` (0 open)."""
    approach, spread = rotation[:, 2], rotation[:, 0]
    offset = (FINGER_OPEN + (FINGER_CLOSED - FINGER_OPEN) * float(gripper)) * spread
    palm, tip = wrist + PALM_OFFSET * approach, wrist + TIP_OFFSET * approach
    return (np.array([palm - offset, palm - offset, palm + offset]),
            np.array([palm + offset, tip - offset, tip + offset]))


def _segment_keys(view: View, grid: _Grid, size: int, starts: np.ndarray, ends: np.ndarray,
                  radii: np.ndarray) -> np.ndarray:
    """(7, S, S) depth keys of the thick segments where they cover a pixel, else -inf."""
    n = len(starts)
    both = np.concatenate([starts, ends])
    # float32 halves the cost of the (7, S, S) arithmetic; keys stay exact (below 2 ** 24).
    uv = view.project(both, size).astype(np.float32)
    key = (view.depth(both) * _DEPTH_STEPS).astype(np.float32)
    du, dv = (uv[n:] - uv[:n]).T[:, :, None, None]
    inverse = np.float32(1.0) / np.maximum(du * du + dv * dv, np.float32(1e-12))
    pu = grid.cols - uv[:n, 0, None, None]  # (N, 1, S)
    pv = grid.rows - uv[:n, 1, None, None]  # (N, S, 1)
    t = pu * (du * inverse) + pv * (dv * inverse)
    np.clip(t, 0.0, 1.0, out=t)
    off_u, off_v = pu - t * du, pv - t * dv
    covered = off_u * off_u + off_v * off_v <= (radii * radii).astype(np.float32)[:, None, None]
    depth = key[:n, None, None] + t * (key[n:] - key[:n])[:, None, None]
    return np.where(covered, np.floor(depth) * np.float32(_N_IDS) + _SEGMENT_IDS, np.float32(-np.inf))


def _cube_key(view: View, grid: _Grid, size: int, centre: np.ndarray, rotation: np.ndarray,
              half: float) -> np.ndarray:
    """(S, S) depth key of the cube's nearest face where a pixel sees it, else -inf (slab test)."""
    # A pixel sees the line {point + t * toward}; in the cube's frame each axis bounds t to an
    # interval, and the largest t in all three is the depth of the face it sees. An axis parallel to
    # the line gets a tiny rate instead: its interval is then unbounded or far away.
    relative = rotation.T @ grid.points - (rotation.T @ centre)[:, None]  # (3, S * S), cube frame
    rates = rotation.T @ view.toward
    rates = np.where(np.abs(rates) < 1e-12, 1e-12, rates)[:, None]
    middle, span = -relative / rates, half / np.abs(rates)
    low, high = (middle - span).max(axis=0), (middle + span).min(axis=0)
    return np.where(low <= high, np.floor(high * _DEPTH_STEPS) * _N_IDS + _CUBE_ID, -np.inf).reshape(size, size)


def draw(view: View, size: int, points: np.ndarray, rotation: np.ndarray, gripper: float,
         cube_position: np.ndarray, cube_rotation: np.ndarray, cube_half: float) -> np.ndarray:
    """One (size, size, 3) uint8 frame of ``view``.

    Args:
        points: (5, 3) base, shoulder, elbow, wrist and grasp point (``forward_kinematics``).
        rotation: (3, 3) end-effector rotation.
        gripper: opening in [0, 1] (0 open).
        cube_position, cube_rotation, cube_half: the cube's centre, rotation and half edge (m).
    """
    grid = _grid(view, size)
    scale = size / view.width
    finger_starts, finger_ends = gripper_segments(points[3], rotation, gripper)
    palm = (finger_starts[:1] + finger_ends[:1]) / 2  # the middle of the palm bar
    starts = np.concatenate([points[:4], finger_starts])
    ends = np.concatenate([points[1:4], palm, finger_ends])
    link, finger = max(LINK_RADIUS * scale, MIN_RADIUS_PX), max(FINGER_RADIUS * scale, MIN_RADIUS_PX)
    radii = np.array([link] * 4 + [finger] * 3)
    nearest = np.maximum(_segment_keys(view, grid, size, starts, ends, radii).max(axis=0),
                         _cube_key(view, grid, size, cube_position, cube_rotation, cube_half))
    covered = nearest > -np.inf
    frame = grid.background.copy()
    frame[covered] = _PALETTE[np.mod(nearest[covered], _N_IDS).astype(np.intp)]
    return frame
