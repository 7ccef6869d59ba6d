"""Transit routing around the T: waypoints of the T grown by a margin, their visibility graph, and the
path from the agent to a candidate's pre-contact point (all in the block's body frame)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from envs.pusht.expert.follower import CarrotPath, _inside_arena
from envs.pusht.geometry import (
    T_OUTLINE,
    body_to_world,
    cross_2d,
    outward_normals,
    signed_area,
    t_signed_distance,
    world_to_body,
)
from envs.pusht.sim import AGENT_RADIUS

if TYPE_CHECKING:
    from envs.pusht.expert.candidates import _PushSet
    from envs.pusht.expert.expert import ExpertParams

#: The T grown by this much (px, signed distance of the agent's centre) is what transit paths avoid.
CLEARANCE = AGENT_RADIUS + 3.0
#: Routing waypoints and entry points lie this far from the T.
WAYPOINT_DISTANCE = 28.0
#: Candidates whose pre-contact point is closer than this (px) may be reached in a straight line.
SHORTCUT_LENGTH = 80.0


def _segments_clear(starts: np.ndarray, ends: np.ndarray, clearance, spacing: float = 2.0) -> np.ndarray:
    """Whether each segment starts[i] -> ends[i] (body frame) stays at least ``clearance`` (a number
    or one per segment) from the T.

    Sampled every ``spacing`` px, which is exact enough given the margins used.
    """
    starts = np.atleast_2d(starts)
    ends = np.atleast_2d(ends)
    starts, ends = np.broadcast_arrays(starts, ends)
    if starts.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    length = np.linalg.norm(ends - starts, axis=-1).max()
    n = max(2, int(math.ceil(length / spacing)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    samples = starts[None] + t * (ends - starts)[None]
    return t_signed_distance(samples).min(axis=0) >= clearance


def _waypoints() -> np.ndarray:
    """Routing waypoints around the T: two per convex corner (one along each edge normal), one per
    concave corner (along the bisector), all WAYPOINT_DISTANCE from the T."""
    normals = outward_normals(T_OUTLINE)
    points = []
    for i, corner in enumerate(T_OUTLINE):
        n_in, n_out = normals[i - 1], normals[i]  # normals of the edge arriving at / leaving the corner
        edge_in = corner - T_OUTLINE[i - 1]
        edge_out = T_OUTLINE[(i + 1) % len(T_OUTLINE)] - corner
        convex = cross_2d(edge_in, edge_out) * signed_area(T_OUTLINE) > 0
        if convex:
            points += [corner + WAYPOINT_DISTANCE * n_in, corner + WAYPOINT_DISTANCE * n_out]
        else:
            points.append(corner + WAYPOINT_DISTANCE * (n_in + n_out))
    return np.array(points)


@dataclass(frozen=True)
class _Routing:
    """Precomputed body-frame routing graph: waypoints, their visibility and lengths."""

    nodes: np.ndarray       # (W, 2)
    edge_length: np.ndarray  # (W, W), inf where the straight segment is not clear


@lru_cache(maxsize=1)
def _routing() -> _Routing:
    nodes = _waypoints()
    w = len(nodes)
    i, j = np.triu_indices(w, k=1)
    clear = _segments_clear(nodes[i], nodes[j], CLEARANCE)
    length = np.full((w, w), np.inf)
    np.fill_diagonal(length, 0.0)
    d = np.linalg.norm(nodes[i] - nodes[j], axis=1)
    length[i[clear], j[clear]] = d[clear]
    length[j[clear], i[clear]] = d[clear]
    return _Routing(nodes=nodes, edge_length=length)


class _Router:
    """Transit paths from the agent to every candidate's pre-contact point, around the T."""

    def __init__(self, pose: np.ndarray, agent_world: np.ndarray, pushes: _PushSet):
        self.pose = pose
        self.pushes = pushes
        routing = _routing()
        self.routing = routing
        self.agent_world = agent_world
        agent = world_to_body(agent_world, pose)
        # Leave the block first when the agent is within the clearance (e.g. right after a push).
        self.retreat = _retreat(agent)
        self.origin = self.retreat[-1]
        nodes_world = body_to_world(routing.nodes, pose)
        node_ok = _inside_arena(nodes_world)
        length = routing.edge_length.copy()
        length[~node_ok, :] = np.inf
        length[:, ~node_ok] = np.inf
        np.fill_diagonal(length, 0.0)
        nxt = np.tile(np.arange(len(length)), (len(length), 1))
        for k in range(len(length)):  # Floyd-Warshall on a dozen nodes
            via = length[:, k:k + 1] + length[k:k + 1, :]
            better = via < length
            length = np.where(better, via, length)
            nxt = np.where(better, nxt[:, k:k + 1], nxt)
        self.dist, self.next = length, nxt
        visible = _segments_clear(self.origin[None], routing.nodes, CLEARANCE) & node_ok
        self.origin_to_node = np.where(visible, np.linalg.norm(routing.nodes - self.origin, axis=1), np.inf)
        self.retreat_length = float(np.sum(np.linalg.norm(np.diff(self.retreat, axis=0), axis=1)))
        self.agent_body = agent

    def travel_lengths(self) -> np.ndarray:
        """Length of the transit path to every candidate's pre-contact point (inf if none)."""
        ps = self.pushes
        # via waypoints: min over (a, b) of |o - a| + D[a, b] + |b - entry|
        g = (self.origin_to_node[:, None] + self.dist).min(axis=0)          # (W,)
        via = (g[None, :] + ps.entry_to_node).min(axis=1)                  # (N,)
        direct = np.where(_segments_clear(self.origin[None], ps.entry, CLEARANCE),
                          np.linalg.norm(ps.entry - self.origin, axis=1), np.inf)
        to_entry = np.minimum(via, direct) + self.retreat_length
        approach = np.linalg.norm(ps.start - ps.entry, axis=1)
        total = to_entry + approach
        # Close by (e.g. continuing along the same edge): straight to the pre-contact point when that
        # stays as clear of the T as both ends are.
        sd_agent = float(t_signed_distance(self.agent_body))
        straight = np.linalg.norm(ps.start - self.agent_body, axis=1)
        self.short = straight < SHORTCUT_LENGTH
        threshold = np.minimum(min(CLEARANCE, sd_agent), t_signed_distance(ps.start[self.short])) - 0.5
        self.short[self.short] = _segments_clear(self.agent_body, ps.start[self.short], threshold)
        self.direct_entry = np.isfinite(direct) & (direct <= via)
        return np.where(self.short, straight, total)

    def inside_arena(self, depth: np.ndarray) -> np.ndarray:
        """Whether each candidate's entry, pre-contact point and push end lie inside the walls."""
        ps = self.pushes
        ok = np.ones(len(ps), dtype=bool)
        for points in (ps.start, ps.entry, ps.start + ps.direction * (depth + 10.0)[:, None]):
            ok &= _inside_arena(body_to_world(points, self.pose))
        return ok

    def path(self, i: int, depth: float, near: bool, p: ExpertParams) -> CarrotPath | None:
        """The carrot path for candidate ``i`` pushing ``depth`` px (normal depth) past first contact."""
        ps = self.pushes
        cos_angle = float(-(ps.direction[i] @ ps.normal[i]))
        push_length = (p.gap + 1.2 * depth + 2.0) / cos_angle
        end = ps.start[i] + ps.direction[i] * push_length
        if self.short[i]:
            body = [self.agent_body, ps.start[i], end]
            ramp_end = float(np.linalg.norm(ps.start[i] - self.agent_body))
            ramp_start = max(0.0, ramp_end - 20.0)
        else:
            body = list(self.retreat)
            if not self.direct_entry[i]:
                g = self.origin_to_node[:, None] + self.dist
                total = g + ps.entry_to_node[i][None, :]
                a, b = np.unravel_index(int(np.argmin(total)), total.shape)
                if not np.isfinite(total[a, b]):
                    return None
                body.append(self.routing.nodes[a])
                while a != b:
                    a = int(self.next[a, b])
                    body.append(self.routing.nodes[a])
            body += [ps.entry[i], ps.start[i], end]
            arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(np.array(body), axis=0), axis=1))]
            ramp_start, ramp_end = float(arc[-3]), float(arc[-2])
        world = body_to_world(np.array(body), self.pose)
        world[0] = self.agent_world
        near_lookahead = p.fine_lookahead if near else p.push_lookahead
        return CarrotPath(world, ramp_start, ramp_end, p.transit_lookahead, near_lookahead)


def _retreat(agent_body: np.ndarray, target: float = CLEARANCE + 4.0, steps: int = 8) -> list:
    """Points that move the agent straight away from the T until it is ``target`` px clear.

    The first point is the agent itself; each further one follows the gradient of the signed distance.
    """
    points = [np.asarray(agent_body, dtype=np.float64)]
    p = points[0]
    for _ in range(steps):
        sd = float(t_signed_distance(p))
        if sd >= target - 1e-6:
            break
        eps = 0.5
        grad = np.array([float(t_signed_distance(p + (eps, 0))) - float(t_signed_distance(p - (eps, 0))),
                         float(t_signed_distance(p + (0, eps))) - float(t_signed_distance(p - (0, eps)))])
        norm = float(np.linalg.norm(grad))
        if norm < 1e-9:
            break
        p = p + grad / norm * (target - sd)
        points.append(p)
    return points
