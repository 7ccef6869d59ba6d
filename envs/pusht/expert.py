"""A scripted Push-T expert: push primitives screened analytically, then checked in a replica.

Every decision the expert

1. lists candidate pushes: contact points along the 8 edges of the T's outline (every 10 px,
   every 5 px near the goal), each pushed along the inward normal or at +-0.35 rad from it;
2. screens them with the frictionless quasi-static model (a push of normal depth ``s`` at a contact
   moves the block along the normal and turns it by the lever arm, through the inverse mass matrix
   ``diag(1, 1, 3000)``): the best depth has a closed form, so every candidate gets a predicted pose
   error; adding a travel-distance cost ranks them;
3. builds, for the best dozen or two, a path for the agent: around the T through waypoints of the T
   grown by a safety margin, to an entry point in front of the contact, to the pre-contact point,
   then the push itself;
4. drives a private :class:`~envs.pusht.sim.PushTSim` replica along each path with a *carrot*
   follower (the target is a look-ahead point on the path; its motion is limited per step, so the
   commanded targets never jump), and scores every prefix of the simulated push;
5. executes the chosen prefix in the real environment, re-planning when it is done or when the
   real state departs from the prediction. When two plans in a row made no progress, the search is
   widened (twice the candidates) and, far from the goal, a push among the best few is taken whole.

Diversity is deliberate: the expert draws per-episode parameters (look-aheads, stand-off gap,
travel weight) from its own seed and, far from the goal, samples among the simulated candidates
with a softmax over their scores, so the same start can be solved along several routes. Near the
goal it always takes the best candidate, where precision matters more than variety.

Units are pixels, radians and control steps (10 Hz); all poses are ``(x, y, theta)`` of the body origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from envs.pusht.geometry import (
    BLOCK_CENTER_OF_GRAVITY,
    GOAL_POSE,
    SUCCESS_COVERAGE,
    T_BOXES,
    WORKSPACE_SIZE,
    body_to_world,
    coverage,
    rotation_matrix,
    world_to_body,
)
from envs.pusht.sim import AGENT_RADIUS, BLOCK_MASS, BLOCK_MOMENT, PushTSim

#: rho^2 of the pose error: polar moment of the T's area about the centre of gravity / area (px^2).
ROTATION_RADIUS_SQ = 1950.0
#: Pose error (px) below which the expert switches to fine pushes scored by coverage.
NEAR_GOAL_ERROR = 20.0
#: Agent targets are kept inside the walls by this margin (the walls are at 5 and 506 px).
ARENA_MARGIN = 12.0
#: The T grown by this much (px, signed distance of the agent's centre) is what transit paths avoid.
CLEARANCE = AGENT_RADIUS + 3.0
#: Routing waypoints and entry points lie this far from the T.
WAYPOINT_DISTANCE = 28.0
#: Typical transit speed of the agent (px per control step), to convert travel into steps.
TRANSIT_SPEED = 20.0
#: Score of a simulated state that reaches the success coverage (below every other score).
SUCCESS_SCORE = -10.0
#: Candidates whose pre-contact point is closer than this (px) may be reached in a straight line.
SHORTCUT_LENGTH = 80.0
#: Push directions tried at every contact: along the inward normal and turned by +-0.35 rad.
PUSH_ANGLES = (0.0, 0.35, -0.35)

_COG = np.asarray(BLOCK_CENTER_OF_GRAVITY, dtype=np.float64)
_GOAL_COG = body_to_world(_COG, GOAL_POSE)
# Axis-aligned boxes of the T in the body frame: (centre x, centre y, half width, half height).
_BOXES = np.array([[(b[:, 0].min() + b[:, 0].max()) / 2, (b[:, 1].min() + b[:, 1].max()) / 2,
                    (b[:, 0].max() - b[:, 0].min()) / 2, (b[:, 1].max() - b[:, 1].min()) / 2]
                   for b in T_BOXES])
#: The T's outline in the body frame, counter-clockwise in the cross-product sense.
T_OUTLINE = np.array([(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (15.0, 30.0),
                      (15.0, 120.0), (-15.0, 120.0), (-15.0, 30.0), (-60.0, 30.0)])


# ====================================================================== geometry in the body frame

def t_signed_distance(points: np.ndarray) -> np.ndarray:
    """Signed distance (px) from body-frame points (..., 2) to the T: negative inside."""
    p = np.asarray(points, dtype=np.float64)[..., None, :] - _BOXES[:, :2]
    q = np.abs(p) - _BOXES[:, 2:]
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return (outside + inside).min(axis=-1)


def _cross(a, b):
    """z-component of the 2-D cross product, broadcast over leading dimensions."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _signed_area(outline: np.ndarray) -> float:
    return 0.5 * float(np.sum(_cross(outline, np.roll(outline, -1, axis=0))))


def _outward_normals(outline: np.ndarray) -> np.ndarray:
    edges = np.roll(outline, -1, axis=0) - outline
    edges /= np.linalg.norm(edges, axis=1, keepdims=True)
    sign = 1.0 if _signed_area(outline) > 0 else -1.0
    return sign * np.stack([edges[:, 1], -edges[:, 0]], axis=1)


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
    normals = _outward_normals(T_OUTLINE)
    points = []
    for i, corner in enumerate(T_OUTLINE):
        n_in, n_out = normals[i - 1], normals[i]  # normals of the edge arriving at / leaving the corner
        edge_in = corner - T_OUTLINE[i - 1]
        edge_out = T_OUTLINE[(i + 1) % len(T_OUTLINE)] - corner
        convex = _cross(edge_in, edge_out) * _signed_area(T_OUTLINE) > 0
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
    normals = _outward_normals(T_OUTLINE)
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


# ====================================================================== pose error and the analytic model

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
        lever = _cross(contact - _COG, inward)
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


# ====================================================================== paths and the carrot follower

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


# ====================================================================== the expert

@dataclass(frozen=True)
class ExpertParams:
    """Per-episode parameters of the expert (jittered around these values when diverse)."""

    transit_lookahead: float = 40.0   # carrot look-ahead in transit (px)
    push_lookahead: float = 18.0      # ... while pushing far from the goal
    fine_lookahead: float = 6.0       # ... while pushing near the goal
    gap: float = 4.0                  # stand-off of the pre-contact point from the edge (px)
    travel_weight: float = 1.0       # screening cost of a travel step, relative to ``step_cost``
    step_cost: float = 0.012          # simulated score: log-error cost of one control step
    max_target_step: float = 25.0     # the commanded target moves at most this far per step (px)
    far_spacing: float = 10.0         # contact spacing far from the goal (px)
    near_spacing: float = 5.0         # ... near the goal
    far_depth: float = 70.0           # cap on the analytic push depth far from the goal (px)
    near_depth: float = 8.0           # ... near the goal
    far_candidates: int = 12          # candidates simulated per decision far from the goal
    near_candidates: int = 24         # ... near the goal
    max_sim_steps: int = 80           # simulation horizon per candidate
    max_push_steps: int = 15          # stop simulating this many steps after the push began
    temperature: float = 0.3          # softmax temperature over log-scores far from the goal (0: greedy)
    screen_noise: float = 0.05        # std of the noise added to screening (log) scores, for diversity

    def jittered(self, rng: np.random.Generator) -> ExpertParams:
        """A copy with look-aheads, gap and travel weight drawn around the defaults."""
        return replace(self,
                       transit_lookahead=self.transit_lookahead * rng.uniform(0.85, 1.15),
                       push_lookahead=self.push_lookahead * rng.uniform(0.8, 1.2),
                       fine_lookahead=self.fine_lookahead * rng.uniform(0.85, 1.15),
                       gap=float(rng.choice([3.0, 4.0, 5.0, 6.0])),
                       travel_weight=self.travel_weight * rng.uniform(0.5, 1.6))


@dataclass
class _Rollout:
    """One candidate push driven in the replica: the commanded targets, the predicted states
    (``get_state()`` after each target) and the score of the block after each step (lower is better)."""

    actions: list
    states: list
    scores: np.ndarray
    contact_step: int   # first step with a contact, -1 if none
    contact_edge: int   # outline edge (index into T_OUTLINE) touched first, -1 if none


class ScriptedExpert:
    """Solves Push-T from the simulator's full state (``PushTSim.get_full_state()``).

    Usage: ``expert.reset(seed)`` at the start of an episode, then ``action = expert.act(full_state)``
    every control step. With ``diverse=True`` (the default) the route depends on ``seed`` (any value
    ``numpy.random.default_rng`` accepts); with ``diverse=False`` the expert is deterministic and
    greedy (the given parameters, no jitter, no sampling).
    """

    #: The state may depart from the prediction by this much (px, rad) before the expert re-plans.
    POSITION_TOLERANCE = 0.5
    ANGLE_TOLERANCE = 0.01
    #: Plans in a row without progress after which the expert counts as stuck.
    STUCK_PLANS = 2

    def __init__(self, seed=0, diverse: bool = True, params: ExpertParams | None = None):
        self.base_params = params or ExpertParams()
        self.diverse = diverse
        self._replica = PushTSim()
        self.reset(seed)

    def reset(self, seed=None) -> None:
        """Start a new episode: draw this episode's parameters from ``seed``."""
        self.rng = np.random.default_rng(seed)
        if self.diverse:
            self.params = self.base_params.jittered(self.rng)
        else:
            self.params = replace(self.base_params, temperature=0.0, screen_noise=0.0)
        self._actions: list = []
        self._states: list = []
        self._next = 0
        self._previous_target: np.ndarray | None = None
        self._plans_without_progress = 0
        self._last_error: float | None = None
        #: Outline edge (index into ``T_OUTLINE``) of every push executed so far, in order.
        self.pushed_edges: list[int] = []

    # ------------------------------------------------------------------ public API
    def act(self, full_state) -> np.ndarray:
        """The next absolute agent target (2,) for the simulator state ``full_state`` (10 floats)."""
        full_state = np.asarray(full_state, dtype=np.float64)
        if full_state.shape != (10,):
            raise ValueError("full_state must be PushTSim.get_full_state() with shape (10,), "
                             f"got shape {full_state.shape}")
        if self._previous_target is None:
            self._previous_target = full_state[:2].copy()
        if not self._plan_still_valid(full_state):
            self._plan(full_state)
        self._previous_target = np.asarray(self._actions[self._next], dtype=np.float64)
        self._next += 1
        return self._previous_target.copy()

    # ------------------------------------------------------------------ planning
    def _plan_still_valid(self, full_state: np.ndarray) -> bool:
        """Whether actions are left and the state is the one the replica predicted."""
        if self._next >= len(self._actions):
            return False
        if self._next == 0:
            return True
        predicted = self._states[self._next - 1]
        actual = np.r_[full_state[:2], full_state[4:6]]
        return bool(np.all(np.abs(actual - predicted[:4]) <= self.POSITION_TOLERANCE)
                    and abs(float(wrap_angle(full_state[6] - predicted[4]))) <= self.ANGLE_TOLERANCE)

    def _plan(self, full_state: np.ndarray) -> None:
        """Choose the next push and queue its actions (see the module docstring)."""
        p = self.params
        pose = full_state[4:7].copy()
        error = pose_error(pose)
        if self._last_error is not None and error > self._last_error - 0.05:
            self._plans_without_progress += 1
        else:
            self._plans_without_progress = 0
        self._last_error = error
        stuck = self._plans_without_progress >= self.STUCK_PLANS
        near = error < NEAR_GOAL_ERROR

        pushes = _push_set(p.near_spacing if near else p.far_spacing, p.gap)
        depth, predicted = predict_pushes(pose, pushes, p.near_depth if near else p.far_depth)
        router = _Router(pose, full_state[:2], pushes)
        travel = router.travel_lengths()
        feasible = np.isfinite(travel) & router.inside_arena(depth)
        # Screening in the units of the simulated score: log of the error + the step cost of the travel.
        travel_steps = np.where(feasible, travel, 0.0) / TRANSIT_SPEED
        screen = np.log(predicted + 0.5) + p.travel_weight * p.step_cost * travel_steps
        if p.screen_noise > 0:
            screen = screen + self.rng.normal(0.0, p.screen_noise, size=screen.shape)
        improving = feasible & (predicted < error - 0.05)
        pool = improving if improving.any() and not stuck else feasible
        n_keep = (p.near_candidates if near else p.far_candidates) * (2 if stuck else 1)
        chosen = np.flatnonzero(pool)[np.argsort(screen[pool])][:n_keep]

        rollouts = []
        for i in chosen:
            path = router.path(int(i), float(depth[i]), near, p)
            if path is not None:
                rollouts.append(self._rollout(full_state, path, near))
        if not rollouts:
            self._queue_step_toward_centre()
            return
        rollout, n_steps = self._choose(rollouts, near, stuck, self._score(error, coverage(pose), near))
        self._actions, self._states, self._next = rollout.actions[:n_steps], rollout.states[:n_steps], 0
        if 0 <= rollout.contact_step < n_steps:
            self.pushed_edges.append(rollout.contact_edge)

    def _choose(self, rollouts: list[_Rollout], near: bool, stuck: bool, current_score: float):
        """Pick a rollout and how many of its steps to execute: ``(rollout, n_steps)``.

        Each rollout is cut after its best step (block score + step cost). Far from the goal the pick
        is a softmax over those scores (diversity); near it, the best. When stuck (far), or when no
        rollout improves the block at all, a rollout among the best few is executed in full to leave
        the configuration.
        """
        p = self.params
        # Every step costs ``step_cost``, so that quick progress wins over slow progress.
        costed = [r.scores + p.step_cost * np.arange(1, len(r.scores) + 1) for r in rollouts]
        best_step = [int(np.argmin(c)) for c in costed]
        best = np.array([c[k] for c, k in zip(costed, best_step, strict=True)])
        if stuck and not near:
            choice = int(self.rng.choice(np.argsort(best)[:4]))
            return rollouts[choice], len(rollouts[choice].actions)
        if near or p.temperature <= 0:
            choice = int(np.argmin(best))
        else:
            weights = np.exp(-(best - best.min()) / p.temperature)
            choice = int(self.rng.choice(len(rollouts), p=weights / weights.sum()))
        if best[choice] < current_score:
            return rollouts[choice], best_step[choice] + 1
        # Nothing pays for its steps: take the largest improvement regardless of time, if there is one,
        # else execute a whole rollout to leave the configuration.
        raw_step = [int(np.argmin(r.scores)) for r in rollouts]
        raw_best = np.array([r.scores[k] for r, k in zip(rollouts, raw_step, strict=True)])
        slowest_fix = int(np.argmin(raw_best))
        if raw_best[slowest_fix] < current_score - 1e-3:
            return rollouts[slowest_fix], raw_step[slowest_fix] + 1
        return rollouts[choice], len(rollouts[choice].actions)

    def _queue_step_toward_centre(self) -> None:
        """Fallback when no push can be planned: move toward the workspace centre for one step."""
        centre = np.array([WORKSPACE_SIZE / 2, WORKSPACE_SIZE / 2])
        self._actions = [limit_step(self._previous_target, centre, self.params.max_target_step)]
        self._states, self._next = [], 0

    @staticmethod
    def _score(error: float, cov: float, near: bool) -> float:
        """Log-scaled badness of a block state (lower is better); a success is far below everything.

        Far from the goal: log of the pose error; near it: log of 100 (1 - coverage).
        """
        if near:
            return SUCCESS_SCORE if cov > SUCCESS_COVERAGE else math.log(max(100.0 * (1.0 - cov), 1e-3))
        return math.log(max(error, 1e-3))

    def _rollout(self, full_state: np.ndarray, path: CarrotPath, near: bool) -> _Rollout:
        """Drive the replica from ``full_state`` along ``path`` with the carrot follower; score every step."""
        p = self.params
        sim = self._replica
        sim.set_full_state(full_state)
        previous = self._previous_target.copy()
        s = 0.0
        actions, states, scores = [], [], []
        push_steps = 0
        contact_step = contact_edge = -1
        last_block, score = None, 0.0
        for step in range(p.max_sim_steps):
            agent = sim.agent_pos
            carrot, s = path.carrot(agent, s)
            target = clip_to_arena(limit_step(previous, carrot, p.max_target_step))
            sim.step(target)
            previous = target
            state = sim.get_state()
            block = np.array([state[2], state[3], sim.block.angle])
            if last_block is None or np.any(block != last_block):  # the score only changes with the block
                score = self._score(pose_error(block), sim.coverage() if near else 0.0, near)
                last_block = block
            actions.append(target)
            states.append(state)
            scores.append(score)
            if sim.n_contact_points > 0 and contact_step < 0:
                contact_step, contact_edge = step, _nearest_edge(world_to_body(state[:2], block))
            push_steps += s >= path.ramp_end - 1.0
            if score == SUCCESS_SCORE or push_steps >= p.max_push_steps:
                break
            if s >= path.length - 0.5 and np.hypot(*(state[:2] - agent)) < 0.2:
                break  # the push is over and the agent has stopped
        return _Rollout(actions=actions, states=states, scores=np.array(scores), contact_step=contact_step,
                        contact_edge=contact_edge)


def _nearest_edge(point_body: np.ndarray) -> int:
    """Index of the outline edge nearest a body-frame point."""
    a = T_OUTLINE
    d = np.roll(T_OUTLINE, -1, axis=0) - a
    t = np.clip(((point_body - a) * d).sum(axis=1) / (d ** 2).sum(axis=1), 0.0, 1.0)
    return int(np.argmin(np.linalg.norm(a + t[:, None] * d - point_body, axis=1)))


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
