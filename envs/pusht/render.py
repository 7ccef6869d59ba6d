"""Headless rendering of Push-T states (OpenCV only, no display, no pygame).

The original benchmark drew the scene with pygame on a 512 x 512 canvas and shrank it with
``cv2.resize`` (bilinear) to the observation size; its image observations, and the dataset's
``img`` frames, therefore carry that canvas' look: integer-rounded vertices, a light fill with a
darker outline for the block, a ring for the agent, light-gray walls, aliasing from the
bilinear shrink. This module reproduces that pipeline with OpenCV:

1. a cached base layer: white, the goal T (LightGreen, no outline) and the four walls;
2. the block: each box filled with 1.2 x LightSlateGray, then a 4 px LightSlateGray outline;
3. the agent: a RoyalBlue disc of radius 15 with a 1.2 x RoyalBlue disc of radius 11 on top;
4. ``cv2.resize`` to the requested size (bilinear, as the original), then optional overlays drawn
   at the output resolution: a predicted action path and the current action target.

At 96 x 96 the frames match the dataset's ``img`` frames to a mean absolute difference of about
0.14 grey levels (see ``tests/test_env_render.py``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from envs.pusht.geometry import GOAL_POSE, T_BOXES, WORKSPACE_SIZE
from envs.pusht.sim import AGENT_RADIUS, WALL_RADIUS, WALLS

#: Side of the canvas everything is drawn on before resizing (the original's pygame window).
CANVAS_SIZE = int(WORKSPACE_SIZE)

# Colors as RGB (CSS names used by the original) and its "light" fill variant (x 1.2, rounded).
GOAL_COLOR = (144, 238, 144)  # LightGreen
BLOCK_COLOR = (119, 136, 153)  # LightSlateGray: outline
AGENT_COLOR = (65, 105, 225)  # RoyalBlue: outer ring
WALL_COLOR = (211, 211, 211)  # LightGray
ACTION_PATH_COLOR = (255, 140, 0)  # overlay: predicted action sequence (DarkOrange)
TARGET_COLOR = (255, 0, 0)  # overlay: current action target (red cross, as the original's marker)

#: Width of the block's outline. The original drew each edge as a "fat segment" of radius 2 (a 4 px
#: line, a quad and round caps); an OpenCV 4 px line gives 96 px frames within 0.01 grey levels of it.
OUTLINE_WIDTH = 4
#: The agent's light inner disc is this much smaller than the agent.
AGENT_RING_WIDTH = 4


def light_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """The original's fill color: each channel times 1.2, capped at 255, rounded."""
    return tuple(min(255, round(1.2 * c)) for c in color)


def _pixel(point) -> tuple[int, int]:
    """Round a world point to a canvas pixel as pygame's ``to_pygame`` did (Python round)."""
    return round(float(point[0])), round(float(point[1]))


def _box_pixels(pose) -> list[np.ndarray]:
    """Both boxes of a T at ``pose`` as int32 (4, 2) pixel polygons."""
    x, y, theta = (float(v) for v in pose)
    c, s = math.cos(theta), math.sin(theta)
    return [np.array([_pixel((c * px - s * py + x, s * px + c * py + y)) for px, py in box.tolist()],
                     dtype=np.int32) for box in T_BOXES]


def draw_block(canvas: np.ndarray, pose, color=BLOCK_COLOR) -> None:
    """Draw the T at ``pose`` onto a 512 x 512 RGB canvas: light fill, then a 4 px outline."""
    boxes = _box_pixels(pose)
    fill = light_color(color)
    for box in boxes:
        cv2.fillPoly(canvas, [box], fill)
    cv2.polylines(canvas, boxes, True, color, OUTLINE_WIDTH, cv2.LINE_8)


def draw_agent(canvas: np.ndarray, position, color=AGENT_COLOR) -> None:
    """Draw the agent: a disc of radius 15 and a lighter disc of radius 11 on top."""
    center = _pixel(position)
    cv2.circle(canvas, center, round(AGENT_RADIUS), color, -1, cv2.LINE_8)
    cv2.circle(canvas, center, round(AGENT_RADIUS - AGENT_RING_WIDTH), light_color(color), -1, cv2.LINE_8)


def draw_base_layer(goal_pose=GOAL_POSE) -> np.ndarray:
    """The static part of the scene (white, goal T, walls) as a 512 x 512 x 3 uint8 canvas."""
    canvas = np.full((CANVAS_SIZE, CANVAS_SIZE, 3), 255, dtype=np.uint8)
    for box in _box_pixels(goal_pose):
        cv2.fillPoly(canvas, [box], GOAL_COLOR)
    for a, b in WALLS:
        cv2.line(canvas, _pixel(a), _pixel(b), WALL_COLOR, round(2 * WALL_RADIUS), cv2.LINE_8)
    return canvas


class Renderer:
    """Renders states at any size; caches the static base layer for its goal pose."""

    def __init__(self, goal_pose=GOAL_POSE):
        self.goal_pose = np.array(goal_pose, dtype=np.float64)
        if self.goal_pose.shape != (3,) or not np.all(np.isfinite(self.goal_pose)):
            raise ValueError(f"goal_pose must be 3 finite numbers (x, y, theta), got {goal_pose!r}")
        self._base = draw_base_layer(self.goal_pose)
        self._canvas = np.empty_like(self._base)

    def render(self, state, size: int = 96, action_path=None, target=None) -> np.ndarray:
        """RGB uint8 image (size, size, 3) of ``state`` = [agent_x, agent_y, block_x, block_y, angle].

        ``action_path`` (T, 2) world points are drawn as a polyline with dots, ``target`` (2,) as a
        cross; both at the output resolution, after the resize, so they stay sharp.
        """
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (5,) or not np.all(np.isfinite(state)):
            raise ValueError(f"state must be 5 finite numbers [agent_x, agent_y, block_x, block_y, angle], "
                             f"got shape {state.shape}")
        size = int(size)
        if size < 8:
            raise ValueError(f"render size must be at least 8 px, got {size}")
        canvas = self._canvas
        np.copyto(canvas, self._base)
        draw_block(canvas, state[2:5])
        draw_agent(canvas, state[0:2])
        image = canvas.copy() if size == CANVAS_SIZE else cv2.resize(canvas, (size, size),
                                                                      interpolation=cv2.INTER_LINEAR)
        scale = size / WORKSPACE_SIZE
        if action_path is not None:
            draw_action_path(image, action_path, scale)
        if target is not None:
            draw_target(image, target, scale)
        return image


def _overlay_points(points, scale: float, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be world points of shape (T, 2), got shape {np.shape(points)}")
    array = array[np.all(np.isfinite(array), axis=1)]
    return np.round(array * scale * 16).astype(np.int32)  # 4 fractional bits for cv2's shift


def draw_action_path(image: np.ndarray, path, scale: float, color=ACTION_PATH_COLOR) -> None:
    """Overlay a sequence of world points (T, 2) as an anti-aliased polyline with small dots."""
    pixels = _overlay_points(path, scale, "action_path")
    if len(pixels) == 0:
        return
    thickness = max(1, round(image.shape[0] / 256))
    cv2.polylines(image, [pixels], False, color, thickness, cv2.LINE_AA, shift=4)
    radius = max(1, round(image.shape[0] / 128)) * 16
    for p in pixels:
        cv2.circle(image, tuple(p.tolist()), radius, color, -1, cv2.LINE_AA, shift=4)


def draw_target(image: np.ndarray, target, scale: float, color=TARGET_COLOR) -> None:
    """Overlay the current action target (a world point) as a cross, sized like the original's marker."""
    pixels = _overlay_points(target, scale, "target")
    if len(pixels) == 0:
        return
    center = tuple(np.round(pixels[0] / 16).astype(int).tolist())
    cv2.drawMarker(image, center, color, cv2.MARKER_CROSS, max(3, round(8 / 96 * image.shape[0])),
                   max(1, round(image.shape[0] / 96)))


_DEFAULT_RENDERERS: dict[tuple[float, ...], Renderer] = {}
_MAX_CACHED_GOALS = 16


def render_state(state, size: int = 96, goal_pose=GOAL_POSE, action_path=None, target=None) -> np.ndarray:
    """Render ``state`` [agent_x, agent_y, block_x, block_y, angle] as an RGB uint8 (size, size, 3) image.

    Matches the original benchmark's look (and the dataset's ``img`` at size 96). Optional overlays:
    ``action_path`` (T, 2) world points, ``target`` (2,) world point.
    """
    key = tuple(float(v) for v in np.asarray(goal_pose, dtype=np.float64).ravel())
    renderer = _DEFAULT_RENDERERS.get(key)
    if renderer is None:
        if len(_DEFAULT_RENDERERS) >= _MAX_CACHED_GOALS:
            _DEFAULT_RENDERERS.clear()
        renderer = _DEFAULT_RENDERERS.setdefault(key, Renderer(goal_pose))
    return renderer.render(state, size, action_path=action_path, target=target)
