"""Candidate pushes: contact points along the T's outline, push directions, and where the agent
starts each push (pre-contact point) and enters it from the transit path (entry point)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from envs.pusht.expert.routing import CLEARANCE, WAYPOINT_DISTANCE, _routing, _segments_clear
from envs.pusht.geometry import T_OUTLINE, outward_normals, rotation_matrix, t_signed_distance
from envs.pusht.sim import AGENT_RADIUS

#: Push directions tried at every contact: along the inward normal and turned by +-0.35 rad.
PUSH_ANGLES = (0.0, 0.35, -0.35)


@dataclass(frozen=True)
class _PushSet:
    """Body-frame candidate pushes for one contact spacing and stand-off gap (all arrays (N, ...))."""

    contact: np.ndarray      # contact point on the outline
    normal: np.ndarray       # outward normal of its edge
    tangent: np.ndarray      # unit edge direction
    direction: np.ndarray    # unit direction the agent moves while pushing
    slide: np.ndarray        # signed slide of the contact along ``tangent`` per px of normal depth
    start: np.ndarray        # pre-contact point of the agent's centre
    entry: np.ndarray        # entry point, backed off from ``start`` until clear of the T
    entry_to_node: np.ndarray  # (N, W) straight length entry -> waypoint, inf where not clear

    def __len__(self) -> int:
        return len(self.contact)


@lru_cache(maxsize=16)
def _push_set(spacing: float, gap: float) -> _PushSet:
    """All candidate pushes with contacts every ``spacing`` px and the agent ``gap`` px off the edge."""
    normals = outward_normals(T_OUTLINE)
    rows = []
    for i, a in enumerate(T_OUTLINE):
        b = T_OUTLINE[(i + 1) % len(T_OUTLINE)]
        length = float(np.linalg.norm(b - a))
        tangent = (b - a) / length
        corner_margin = 4.0
        n_points = max(1, int((length - 2 * corner_margin) // spacing) + 1)
        offsets = np.linspace(corner_margin, length - corner_margin, n_points) if n_points > 1 \
            else np.array([length / 2])
        for offset in offsets:
            for angle in PUSH_ANGLES:
                direction = rotation_matrix(angle) @ (-normals[i])
                rows.append((a + offset * tangent, normals[i], tangent, direction))
    contact, normal, tangent, direction = (np.array([r[k] for r in rows]) for k in range(4))
    cos_angle = -(direction * normal).sum(axis=1)
    # Frictionless: the contact slides along the edge with the agent's tangential motion.
    slide = (direction * tangent).sum(axis=1) / cos_angle
    # The agent's centre touches the edge at distance AGENT_RADIUS along the normal; moving along
    # ``direction`` it reaches that distance after ``gap`` px of normal approach.
    start = contact + normal * AGENT_RADIUS - direction * (gap / cos_angle)[:, None]
    # The agent at ``start`` must touch nothing else of the T (concave corners).
    keep = t_signed_distance(start) >= AGENT_RADIUS + gap * 0.5
    # Back off along -direction until clear of the routing margin.
    backoff = np.arange(0.0, 60.0, 1.0)
    trial = start[:, None, :] - backoff[None, :, None] * direction[:, None, :]
    clear = t_signed_distance(trial) >= WAYPOINT_DISTANCE - 2.0
    keep &= clear.any(axis=1)
    first = np.argmax(clear, axis=1)
    entry = trial[np.arange(len(trial)), first]
    routing = _routing()
    nodes = routing.nodes
    e_idx, n_idx = np.meshgrid(np.arange(len(entry)), np.arange(len(nodes)), indexing="ij")
    visible = _segments_clear(entry[e_idx.ravel()], nodes[n_idx.ravel()], CLEARANCE).reshape(e_idx.shape)
    entry_to_node = np.where(visible, np.linalg.norm(entry[:, None, :] - nodes[None, :, :], axis=-1), np.inf)
    sel = np.flatnonzero(keep)
    return _PushSet(contact=contact[sel], normal=normal[sel], tangent=tangent[sel], direction=direction[sel],
                    slide=slide[sel], start=start[sel], entry=entry[sel], entry_to_node=entry_to_node[sel])
