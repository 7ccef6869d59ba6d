"""Following a path: the carrot follower, the per-step limit on the commanded target, the arena walls."""

from __future__ import annotations

import math

import numpy as np

from envs.pusht.geometry import WORKSPACE_SIZE

#: Agent targets are kept inside the walls by this margin (the walls are at 5 and 506 px).
ARENA_MARGIN = 12.0


class CarrotPath:
    """A polyline the agent follows with a carrot: the target is a look-ahead point along the path.

    ``lookahead`` is ``far`` up to arc length ``ramp_start``, ``near`` from ``ramp_end`` on, and
    linear in between.
    """

    def __init__(self, points: np.ndarray, ramp_start: float, ramp_end: float, far: float, near: float):
        points = np.asarray(points, dtype=np.float64)
        keep = np.r_[True, np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-9]
        self.points = points[keep]
        seg = np.diff(self.points, axis=0)
        self.seg_len = np.linalg.norm(seg, axis=1)
        self.cum = np.r_[0.0, np.cumsum(self.seg_len)]
        self.length = float(self.cum[-1])
        self.ramp_start, self.ramp_end = ramp_start, max(ramp_end, ramp_start + 1e-6)
        self.far, self.near = far, near

    def lookahead(self, s: float) -> float:
        if s <= self.ramp_start:
            return self.far
        if s >= self.ramp_end:
            return self.near
        f = (s - self.ramp_start) / (self.ramp_end - self.ramp_start)
        return self.far + f * (self.near - self.far)

    def point_at(self, s: float) -> np.ndarray:
        s = min(max(s, 0.0), self.length)
        i = int(np.searchsorted(self.cum, s, side="right")) - 1
        i = min(max(i, 0), len(self.seg_len) - 1) if len(self.seg_len) else 0
        if not len(self.seg_len):
            return self.points[0].copy()
        f = (s - self.cum[i]) / self.seg_len[i]
        return self.points[i] + f * (self.points[i + 1] - self.points[i])

    def project(self, p: np.ndarray, s_min: float, window: float = 60.0) -> float:
        """Arc length of the point of the path nearest ``p`` within ``[s_min, s_min + window]``."""
        best_s, best_d = s_min, math.inf
        for i in range(len(self.seg_len)):
            s0, s1 = self.cum[i], self.cum[i + 1]
            if s1 < s_min or s0 > s_min + window:
                continue
            a = self.points[i]
            d = self.points[i + 1] - a
            t = float(np.clip((p - a) @ d / (self.seg_len[i] ** 2), 0.0, 1.0))
            s = min(max(s0 + t * self.seg_len[i], s_min), s_min + window)
            q = self.point_at(s)
            dist = float(np.sum((p - q) ** 2))
            if dist < best_d:
                best_s, best_d = s, dist
        return best_s

    def carrot(self, p: np.ndarray, s_min: float) -> tuple[np.ndarray, float]:
        """The look-ahead target for an agent at ``p``; returns ``(target, projected arc length)``."""
        s = self.project(p, s_min)
        return self.point_at(s + self.lookahead(s)), s


def limit_step(previous: np.ndarray, target: np.ndarray, max_step: float) -> np.ndarray:
    """``target`` moved toward ``previous`` so that it is at most ``max_step`` px from it."""
    d = target - previous
    n = float(np.hypot(d[0], d[1]))
    return target if n <= max_step else previous + d * (max_step / n)


def clip_to_arena(point: np.ndarray) -> np.ndarray:
    """``point`` moved inside the walls (ARENA_MARGIN from the workspace border)."""
    return np.clip(point, ARENA_MARGIN, WORKSPACE_SIZE - ARENA_MARGIN)


def _inside_arena(points: np.ndarray) -> np.ndarray:
    return np.all((points >= ARENA_MARGIN) & (points <= WORKSPACE_SIZE - ARENA_MARGIN), axis=-1)
