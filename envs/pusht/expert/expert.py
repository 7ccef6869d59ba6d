"""``ExpertParams`` and ``ScriptedExpert``: choose a push, check candidates in a replica, execute the best."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from envs.pusht.expert.candidates import _push_set
from envs.pusht.expert.follower import CarrotPath, clip_to_arena, limit_step
from envs.pusht.expert.push_model import pose_error, predict_pushes, wrap_angle
from envs.pusht.expert.routing import _Router
from envs.pusht.geometry import SUCCESS_COVERAGE, WORKSPACE_SIZE, coverage, nearest_outline_edge, world_to_body
from envs.pusht.sim import PushTSim

#: Pose error (px) below which the expert switches to fine pushes scored by coverage.
NEAR_GOAL_ERROR = 20.0
#: Typical transit speed of the agent (px per control step), to convert travel into steps.
TRANSIT_SPEED = 20.0
#: Score of a simulated state that reaches the success coverage (below every other score).
SUCCESS_SCORE = -10.0


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
    replan_position_tolerance: float = 0.5   # re-plan when agent or block departs from the plan by more (px)
    replan_angle_tolerance: float = 0.01     # ... or the block's angle by more (rad)

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
        #: Plans made since ``reset`` (each one simulates candidate pushes: the costly part of ``act``).
        self.plans = 0
        #: Outline edge (index into ``T_OUTLINE``) of every push executed so far, in order.
        self.pushed_edges: list[int] = []

    # ------------------------------------------------------------------ public API
    def act(self, full_state, previous_target=None) -> np.ndarray:
        """The next absolute agent target (2,) for the simulator state ``full_state`` (10 floats).

        ``previous_target``: the target actually commanded at the previous step, when another
        controller was in charge (labelling a policy's states, as in DAgger); the expert limits its
        next target's jump from there. By default, the expert's own previous target.
        """
        full_state = np.asarray(full_state, dtype=np.float64)
        if full_state.shape != (10,):
            raise ValueError("full_state must be PushTSim.get_full_state() with shape (10,), "
                             f"got shape {full_state.shape}")
        if previous_target is not None:
            self._previous_target = np.asarray(previous_target, dtype=np.float64).reshape(2).copy()
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
        return bool(np.all(np.abs(actual - predicted[:4]) <= self.params.replan_position_tolerance)
                    and abs(float(wrap_angle(full_state[6] - predicted[4]))) <= self.params.replan_angle_tolerance)

    def _plan(self, full_state: np.ndarray) -> None:
        """Choose the next push and queue its actions (see the module docstring)."""
        self.plans += 1
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
                contact_step, contact_edge = step, nearest_outline_edge(world_to_body(state[:2], block))
            push_steps += s >= path.ramp_end - 1.0
            if score == SUCCESS_SCORE or push_steps >= p.max_push_steps:
                break
            if s >= path.length - 0.5 and np.hypot(*(state[:2] - agent)) < 0.2:
                break  # the push is over and the agent has stopped
        return _Rollout(actions=actions, states=states, scores=np.array(scores), contact_step=contact_step,
                        contact_edge=contact_edge)
