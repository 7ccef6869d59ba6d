"""The robot side of real-time control: timestamped observations and commands.

A :class:`Robot` is what :class:`dpolicy.control.realtime.RealtimeRunner` drives. It reads the
sensors (:meth:`Robot.observe` returns an :class:`Observation` stamped with the time it was
captured), takes one :class:`Command` per control tick and knows which command holds it where it
is (:meth:`Robot.hold_action`). All times are seconds of one monotonic clock, ``Robot.clock``,
which the runner uses too, so observation stamps, action times and ticks compare directly.

:class:`SimulatedRobot` puts any gymnasium environment behind that interface: it advances with
the clock (the task's control rate, optionally sped up), whether or not anybody sends commands,
exactly as a real robot would. See the deployment docs for what to implement for a real arm.
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


class SimulatedRobot(Robot):
    """A gymnasium environment as a real-time robot, advancing with ``clock``.

    Simulated time runs ``speed`` times faster than the clock: one control step of the task
    (``1 / control_hz`` s of simulated time) takes ``1 / (control_hz * speed)`` seconds of clock
    time. The environment advances lazily: every call first plays the control steps whose time
    has come, each with the command that was in force, so a late caller sees exactly what a real
    robot would have done meanwhile. The observation is stamped with the clock time of the step
    boundary it shows. Thread-safe.

    The environment's Box action space bounds the commands. The hold command is the env's own
    ``hold_action()`` where it has one (e.g. "stay where you are" for absolute-target tasks),
    else the last command sent, else the middle of the action box.

    Args:
        env: a gymnasium environment (e.g. from ``dpolicy.evaluation.vector.make_env``).
        speed: simulated seconds per clock second (1 = real time; tests use more).
        clock: the clock (default ``time.monotonic``); a fake clock makes the robot deterministic.
        control_hz: control steps per simulated second (default: the env's ``metadata["render_fps"]``).
        max_episode_steps: the episode limit reported in ``info["truncated"]``.
        max_step: suggested cap on the change of the command between ticks (action units), see ``limits``.
    """

    def __init__(self, env, speed: float = 1.0, clock: Clock = time.monotonic, control_hz: float | None = None,
                 max_episode_steps: int = 300, max_step: float | None = None):
        import gymnasium as gym

        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"SimulatedRobot needs a Box action space, got {space}")
        hz = control_hz if control_hz is not None else env.metadata.get("render_fps")
        if not hz or hz <= 0:
            raise ValueError("control_hz is not given and the environment's metadata has no render_fps")
        self.env = env
        self.clock = clock
        self.speed = float(speed)
        self.task_hz = float(hz)
        self.step_period_s = 1.0 / (self.task_hz * self.speed)
        self.max_episode_steps = int(max_episode_steps)
        self.action_shape = tuple(space.shape)
        self.action_low = np.asarray(space.low, dtype=np.float64).copy()
        self.action_high = np.asarray(space.high, dtype=np.float64).copy()
        self.max_step = max_step
        self._lock = threading.Lock()
        self._started = False

    @property
    def control_hz(self) -> float:
        """Clock-time rate of the simulated control steps (the task's rate times ``speed``)."""
        return self.task_hz * self.speed

    def _env_hold_action(self) -> np.ndarray:
        hold = getattr(self.env.unwrapped, "hold_action", None)
        if callable(hold):
            return np.asarray(hold(), dtype=np.float64)
        if self._target is not None:
            return self._target.copy()
        return (self.action_low + self.action_high) / 2

    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode (``env.reset(seed=seed)``) now; the robot holds its position."""
        with self._lock:
            obs, info = self.env.reset(seed=seed)
            self._t0 = self.clock()
            self._steps = 0
            self._obs = obs
            self._info = info
            self._target = None
            self._target = self._env_hold_action()
            self._reward = float("nan")
            self._score = -np.inf
            self._terminated = False
            self._first_success_step = -1
            self._started = True
            return self._observation()

    def _require_reset(self) -> None:
        if not self._started:
            raise RuntimeError("SimulatedRobot: call reset() before observe() or command()")

    def _advance(self) -> None:
        """Play every control step whose end time has passed, with the current target."""
        due = int((self.clock() - self._t0) / self.step_period_s)
        while self._steps < due:
            self._obs, reward, terminated, _, self._info = self.env.step(self._target)
            self._steps += 1
            self._reward = float(reward)
            self._score = max(self._score, self._reward)
            if self._info.get("is_success") and self._first_success_step < 0:
                self._first_success_step = self._steps
            self._terminated = self._terminated or bool(terminated)

    def _observation(self) -> Observation:
        info = {"steps": self._steps, "reward": self._reward, "score": self._score,
                "terminated": self._terminated, "first_success_step": self._first_success_step,
                "truncated": self._steps >= self.max_episode_steps, "env_info": dict(self._info)}
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
        if action.shape != self.action_shape or not np.all(np.isfinite(action)):
            raise ValueError(f"command must be {self.action_shape} finite numbers, got {command.action!r}")
        with self._lock:
            self._require_reset()
            self._advance()  # steps already due ran with the previous target
            self._target = action

    def hold_action(self) -> np.ndarray:
        with self._lock:
            self._require_reset()
            self._advance()
            return self._env_hold_action()
