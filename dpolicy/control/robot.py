"""The robot side of real-time control: timestamped observations and commands.

A :class:`Robot` is what :class:`dpolicy.control.realtime.RealtimeRunner` drives. It reads the
sensors (:meth:`Robot.observe` returns an :class:`Observation` stamped with the time it was
captured), takes one :class:`Command` per control tick and knows which command holds it where it
is (:meth:`Robot.hold_action`). All times are seconds of one monotonic clock, ``Robot.clock``,
which the runner uses too, so observation stamps, action times and ticks compare directly.

:class:`SimulatedPushTRobot` is the Push-T simulator behind that interface: it advances with the
wall clock (10 control steps per simulated second, optionally sped up), whether or not anybody
sends commands, exactly as a real robot would. See ``docs/robot_interface.md`` for what to
implement for a real arm.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dpolicy.control.controller import observation_dict

Clock = Callable[[], float]


@dataclass(frozen=True)
class Observation:
    """One observation of the robot.

    Attributes:
        data: ``{key: array}`` in env units, one frame without batch or time dimension, with the
            policy's observation keys (e.g. ``{"obs": (20,)}`` or ``{"image": (96, 96, 3) uint8,
            "agent_pos": (2,)}``).
        timestamp: clock time (s) at which the sensors captured it.
        info: anything else the robot reports (not given to the policy).
    """

    data: dict[str, np.ndarray]
    timestamp: float
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """One command sent to the robot.

    Attributes:
        action: the action (D,) in env units, already through the runner's safety limits.
        timestamp: clock time (s) of the control tick it belongs to.
        hold: True when no fresh policy action was available and the runner repeats a safe command.
    """

    action: np.ndarray
    timestamp: float
    hold: bool = False


class Robot(abc.ABC):
    """What the real-time runner needs from a robot (see ``docs/robot_interface.md``).

    Attributes:
        clock: the monotonic clock (s) every timestamp refers to; the runner schedules ticks on it.
        action_low, action_high: the box (D,) commands must stay in (the runner clips to it).
    """

    clock: Clock = staticmethod(time.monotonic)
    action_low: np.ndarray
    action_high: np.ndarray

    @abc.abstractmethod
    def observe(self) -> Observation:
        """The latest observation, stamped with its capture time. Must not block for long."""

    @abc.abstractmethod
    def command(self, command: Command) -> None:
        """Send one command. Must return quickly (queue it, do not wait for the motion)."""

    @abc.abstractmethod
    def hold_action(self) -> np.ndarray:
        """The command that keeps the robot where it is now (sent before the first chunk arrives)."""

    def close(self) -> None:  # noqa: B027 (optional hook, nothing to release by default)
        """Release the hardware (the runner does not call it: the owner of the robot does)."""


#: Control steps of the Push-T task per simulated second.
PUSHT_CONTROL_HZ = 10.0


class SimulatedPushTRobot(Robot):
    """The Push-T simulator as a real-time robot, advancing with ``clock``.

    Simulated time runs ``speed`` times faster than the clock: one control step of the task
    (0.1 s of simulated time) takes ``0.1 / speed`` seconds of clock time. The simulator advances
    lazily: every call first plays the control steps whose time has come, each with the command
    that was in force, so a late caller sees exactly what a real robot would have done meanwhile.
    The observation is stamped with the clock time of the step boundary it shows. Thread-safe.

    Args:
        obs_type: "keypoints" (policy key ``"obs"``, 20 floats) or "image" (``"image"``, ``"agent_pos"``).
        speed: simulated seconds per clock second (1 = real time; tests use more).
        clock: the clock (default ``time.monotonic``); a fake clock makes the robot deterministic.
        max_episode_steps: the episode limit reported in ``info["truncated"]``.
        max_step_px: suggested cap on the motion of the target between ticks (px), see ``limits``.
    """

    def __init__(self, obs_type: str = "keypoints", speed: float = 1.0, clock: Clock = time.monotonic,
                 max_episode_steps: int = 300, max_step_px: float | None = 100.0):
        from envs.pusht.env import PushTEnv
        from envs.pusht.geometry import WORKSPACE_SIZE

        if obs_type not in ("keypoints", "image"):
            raise ValueError(f"obs_type must be 'keypoints' or 'image' (the policy observations of Push-T), "
                             f"got {obs_type!r}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.env = PushTEnv(obs_type=obs_type, max_episode_steps=max_episode_steps)
        self.clock = clock
        self.speed = float(speed)
        self.step_period_s = 1.0 / (PUSHT_CONTROL_HZ * self.speed)
        self.action_low = np.zeros(2)
        self.action_high = np.full(2, float(WORKSPACE_SIZE))
        self.max_step_px = max_step_px
        self._lock = threading.Lock()
        self._started = False

    @property
    def control_hz(self) -> float:
        """Clock-time rate of the simulated control steps (10 Hz times ``speed``)."""
        return PUSHT_CONTROL_HZ * self.speed

    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode (``PushTEnv.reset(seed=seed)``) now; the agent holds its position."""
        with self._lock:
            obs, info = self.env.reset(seed=seed)
            self._t0 = self.clock()
            self._steps = 0
            self._obs = obs
            self._info = info
            self._target = np.array(info["agent_pos"], dtype=np.float64)
            self._max_coverage = float(info["coverage"])
            self._terminated = False
            self._first_success_step = -1
            self._started = True
            return self._observation()

    def _require_reset(self) -> None:
        if not self._started:
            raise RuntimeError("SimulatedPushTRobot: call reset() before observe() or command()")

    def _advance(self) -> None:
        """Play every control step whose end time has passed, with the current target."""
        due = int((self.clock() - self._t0) / self.step_period_s)
        while self._steps < due:
            self._obs, _, terminated, _, self._info = self.env.step(self._target)
            self._steps += 1
            coverage = float(self._info["coverage"])
            self._max_coverage = max(self._max_coverage, coverage)
            if terminated and not self._terminated:
                self._terminated = True
                self._first_success_step = self._steps

    def _observation(self) -> Observation:
        info = {"steps": self._steps, "coverage": float(self._info["coverage"]),
                "max_coverage": self._max_coverage, "terminated": self._terminated,
                "first_success_step": self._first_success_step,
                "truncated": self._steps >= self.env.max_episode_steps,
                "state": self.env.get_state()}
        data = observation_dict(self._obs)
        return Observation(data={k: np.array(v, copy=True) for k, v in data.items()},
                           timestamp=self._t0 + self._steps * self.step_period_s, info=info)

    def observe(self) -> Observation:
        with self._lock:
            self._require_reset()
            self._advance()
            return self._observation()

    def command(self, command: Command) -> None:
        action = np.asarray(command.action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"Push-T command must be 2 finite numbers (target x, y in px), "
                             f"got {command.action!r}")
        with self._lock:
            self._require_reset()
            self._advance()  # steps already due ran with the previous target
            self._target = action

    def hold_action(self) -> np.ndarray:
        with self._lock:
            self._require_reset()
            self._advance()
            return self.env.sim.agent_pos
