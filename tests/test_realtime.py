"""The real-time runner: inference off the loop, timestamps, latency compensation, safety, watchdog, shutdown.

The loop runs on a simulated clock (:class:`SimClock`, passed as the robot's clock and the runner's
``sleep``): time advances only when the loop sleeps, and a policy "takes" time by waiting for the
clock. So every count these tests assert (ticks, held ticks, chunks, misses) follows from the
simulated latencies alone, whatever the load of the machine. One test keeps the real clock: the
default sleep, which :meth:`RealtimeRunner.stop` interrupts.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from dpolicy.bench.realtime import SlowedPolicy
from dpolicy.control.realtime import RealtimeRunner, SafetyLimits
from dpolicy.control.robot import Command, Observation, Robot, SimulatedRobot

RATE_HZ = 16.0
PERIOD = 1.0 / RATE_HZ  # 0.0625 s: tick times are exact binary fractions, so no tick is off by rounding
#: Real seconds any wait of the simulation may take before the test fails instead of hanging.
REAL_TIMEOUT_S = 20.0


class SimClock:
    """Simulated seconds: :meth:`sleep` (the runner's) and :meth:`advance` move them, nothing else does.

    A policy running in the inference thread takes simulated time by parking in :meth:`wait_until`
    (or :meth:`block_until`). Before and after every advance the clock waits until the runner's
    inference worker has settled (idle, or parked on a time or condition not reached yet), so a
    chunk is ready at exactly the tick its simulated latency says, never later because the machine
    was busy. :meth:`close` releases every parked policy (at the end of a test).
    """

    def __init__(self, start: float = 1000.0):
        self.now = float(start)
        self.worker = None  # the InferenceWorker to wait for; set by _sim_runner
        self.on_sleep = None  # called with the new time after every sleep
        self._cond = threading.Condition()
        self._parked = None
        self._closed = False

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        if self.on_sleep is not None:
            self.on_sleep(self.now)

    def advance(self, seconds: float) -> None:
        self._settle()
        with self._cond:
            self.now += seconds
            self._cond.notify_all()
        self._settle()

    def wait_until(self, when: float) -> None:
        self.block_until(lambda: self.now >= when)

    def block_until(self, condition) -> None:
        """Park the calling (inference) thread until ``condition()`` holds."""
        with self._cond:
            self._parked = condition
            self._cond.notify_all()
            released = self._cond.wait_for(lambda: self._closed or condition(), timeout=REAL_TIMEOUT_S)
            self._parked = None
            self._cond.notify_all()
        if not released:
            raise TimeoutError("a simulated policy call waited forever: nothing advanced the clock")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _settle(self) -> None:
        if self.worker is None:
            return
        give_up = time.monotonic() + REAL_TIMEOUT_S
        with self._cond:
            while True:
                parked = self._parked
                if parked is not None and not parked():
                    return  # waiting for a later time (or an event): settled
                if not self.worker.busy:
                    return
                if time.monotonic() > give_up:
                    raise AssertionError("the inference worker neither finished nor parked on the simulated clock")
                self._cond.notify_all()
                self._cond.wait(0.001)


class ClockRobot(Robot):
    """A robot whose only sensor reads the capture time; it records every command with its arrival time.

    ``stall_s`` maps the index of a command (0-based, in the order they arrive) to simulated seconds
    that command takes to send (a hiccup of the robot's bus).
    """

    def __init__(self, hold=(0.0, 0.0), clock=None, stall_s: dict[int, float] | None = None):
        self.clock = SimClock() if clock is None else clock
        self.action_low = None
        self.action_high = None
        self.hold = np.asarray(hold, dtype=np.float64)
        self.stall_s = stall_s or {}
        self.commands: list[tuple[float, Command]] = []

    def observe(self) -> Observation:
        now = self.clock()
        return Observation({"obs": np.array([now], dtype=np.float64)}, timestamp=now)

    def command(self, command: Command) -> None:
        stall = self.stall_s.get(len(self.commands))
        if stall:
            self.clock.advance(stall)
        self.commands.append((self.clock(), command))

    def hold_action(self) -> np.ndarray:
        return self.hold.copy()


def _take(clock, seconds: float) -> None:
    """Spend ``seconds`` of ``clock``: park on a simulated clock, sleep on a real one."""
    if seconds <= 0:
        return
    if hasattr(clock, "wait_until"):
        clock.wait_until(clock() + seconds)
    else:
        time.sleep(seconds)


class TimedPlanPolicy:
    """Plans ``horizon`` steps; step k of the plan is (capture time of the latest observation + (k - 1) * PERIOD, k).

    The executable chunk is steps To-1 .. To-1+Ta (To = 2), so every executed action names the
    time it was planned for. Each call takes ``delay_s`` of ``clock`` (like a remote server) and
    is logged with its thread and start/end times.
    """

    n_obs_steps = 2

    def __init__(self, clock, delay_s: float = 0.0, n_action_steps: int = 8, horizon: int = 16):
        self.clock = clock
        self.delay_s = delay_s
        self.n_action_steps = n_action_steps
        self.horizon = horizon
        self.calls: list[tuple[int, float, float]] = []  # (thread id, start, end)

    def predict_action(self, obs):
        start = self.clock()
        stamp = np.asarray(obs["obs"])[:, -1, 0]
        k = np.arange(self.horizon, dtype=np.float64)
        plan = np.stack([stamp[:, None] + (k - (self.n_obs_steps - 1)) * PERIOD,
                         np.broadcast_to(k, (len(stamp), self.horizon))], axis=-1)
        _take(self.clock, self.delay_s)
        self.calls.append((threading.get_ident(), start, self.clock()))
        first = self.n_obs_steps - 1
        return {"action": plan[:, first:first + self.n_action_steps], "action_pred": plan}


@contextmanager
def _sim_runner(policy, robot, **kwargs):
    """A runner on ``robot``'s simulated clock; the clock releases parked policies before the runner closes."""
    clock = robot.clock
    kwargs.setdefault("rate_hz", RATE_HZ)
    runner = RealtimeRunner(policy, robot, sleep=clock.sleep, **kwargs)
    clock.worker = runner.worker
    try:
        yield runner
    finally:
        clock.close()
        runner.close()


def test_inference_runs_off_the_loop_thread_and_commands_keep_flowing():
    robot = ClockRobot()
    policy = TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD)
    with _sim_runner(policy, robot) as runner:
        report = runner.run(max_ticks=50)
    assert report.ticks == 50
    assert len(robot.commands) == 51 and robot.commands[-1][1].hold  # + the hold at shutdown
    loop_thread = threading.get_ident()
    assert policy.calls and all(thread != loop_thread for thread, _, _ in policy.calls)
    # the loop never waited on inference: every command went out at its tick, also while a chunk was computed
    assert [sent for sent, _ in robot.commands[:-1]] == [r.tick_time for r in report.records]
    assert report.wall_s == pytest.approx(49 * PERIOD) and report.deadline_misses == 0
    during = [sent for sent, _ in robot.commands[:-1] if any(s < sent < e for _, s, e in policy.calls)]
    assert len(during) >= 2 * report.chunks_received  # every 3-period request spanned 2 ticks strictly inside
    assert report.chunks_received >= 6  # one chunk per ~7 ticks (8 actions, asked for 4 ticks ahead)
    # only the ticks before the first chunk (3 periods of latency) were held
    assert report.held_ticks == 3 and [r.held for r in report.records[:4]] == [True, True, True, False]
    assert report.latencies_s == [pytest.approx(3 * PERIOD)] * report.chunks_received


def test_no_action_executes_away_from_its_timestamp_with_latency_compensation():
    robot = ClockRobot()
    with _sim_runner(TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD), robot) as runner:
        report = runner.run(max_ticks=50)
    executed = [r for r in report.records if not r.held]
    assert len(executed) == 47  # all but the 3 ticks before the first chunk
    for record in executed:
        assert record.action[0] == pytest.approx(record.action_time)  # the plan's own time stamp
        assert record.action_time == pytest.approx(record.tick_time)  # planned for exactly this tick
    # the 3 late actions at the head of each chunk were skipped, every time
    assert report.actions_dropped == 3 * report.chunks_received
    assert report.chunks_requested == report.chunks_received + 1  # the last one still in flight


def test_without_compensation_actions_run_late_by_the_latency():
    robot = ClockRobot()
    with _sim_runner(TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD), robot, latency_compensation=False) as runner:
        report = runner.run(max_ticks=50)
    lags = [r.tick_time - r.action[0] for r in report.records if not r.held]
    assert len(lags) >= 40
    # each chunk starts from its first action on arrival, 3 periods after the observation it was planned from
    assert np.median(lags) == pytest.approx(3 * PERIOD)
    assert min(lags) >= 3 * PERIOD - 1e-9
    assert report.actions_dropped == 0


@pytest.mark.parametrize("refill", [True, False])
def test_late_heads_are_refilled_from_the_longer_prediction(refill):
    robot = ClockRobot()
    policy = TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD, n_action_steps=4, horizon=12)
    with _sim_runner(policy, robot, refill_from_prediction=refill) as runner:
        report = runner.run(max_ticks=40)
    executed = [r for r in report.records if not r.held]
    for record in executed:  # on time either way
        assert record.action[0] == pytest.approx(record.action_time)
        assert abs(record.action_time - record.tick_time) <= 0.5 * PERIOD
    steps = [r.action[1] for r in executed]
    if refill:  # plan steps after the Ta = 4 chunk (plan steps 1..4) were executed; the queue never ran dry
        assert len(executed) == 37 and report.held_ticks == 3 and max(steps) >= 5
    else:  # 3 of the 4 actions of each chunk are late: one on-time action per chunk, then holds
        assert all(step == 4 for step in steps)
        assert len(executed) == report.chunks_received and report.held_ticks > 2 * report.ticks // 3


def test_a_prediction_that_does_not_start_with_the_chunk_is_never_used_to_refill():
    clock = SimClock()

    class Inconsistent:
        n_obs_steps = 1

        def predict_action(self, obs):
            _take(clock, 2 * PERIOD)
            return {"action": np.full((1, 8, 2), 7.0), "action_pred": np.zeros((1, 16, 2))}

    with _sim_runner(Inconsistent(), ClockRobot(hold=(7.0, 7.0), clock=clock)) as runner:
        report = runner.run(max_ticks=30)
    assert report.chunks_received >= 3
    assert all(np.allclose(r.action, 7.0) for r in report.records)


def test_automatic_request_threshold_keeps_the_queue_from_running_dry():
    def held_after_first_chunk(report) -> int:
        first = next(i for i, r in enumerate(report.records) if not r.held)
        return sum(r.held for r in report.records[first:])

    robot = ClockRobot()
    with _sim_runner(TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD), robot) as runner:
        automatic = runner.run(max_ticks=60)
    robot = ClockRobot()
    with _sim_runner(TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD), robot, request_threshold=0) as runner:
        when_empty = runner.run(max_ticks=60)
    # asking only when the queue is empty starves 3 ticks per chunk; asking early never does
    assert held_after_first_chunk(when_empty) >= 3 * (when_empty.chunks_received - 1) >= 9
    assert held_after_first_chunk(automatic) == 0


class ConstantChunkPolicy:
    """Every action of chunk number c is (c, 0); each call takes ``delay_s`` of ``clock``."""

    n_obs_steps = 1

    def __init__(self, clock=None, delay_s: float = 0.0):
        self.clock, self.delay_s = clock, delay_s
        self.count = 0

    def predict_action(self, obs):
        if self.delay_s:
            _take(self.clock, self.delay_s)
        self.count += 1
        return {"action": np.tile([[[float(self.count), 0.0]]], (1, 8, 1))}


def test_blending_cross_fades_the_overlap_between_chunks():
    robot = ClockRobot()
    # one period of latency, asked for 3 actions ahead: a new chunk arrives with 2 actions of the old one queued
    policy = ConstantChunkPolicy(robot.clock, delay_s=PERIOD)
    with _sim_runner(policy, robot, blend_steps=2, request_threshold=3) as runner:
        report = runner.run(max_ticks=40)
    values = np.array([r.action[0] for r in report.records if not r.held])
    assert len(values) == 39  # only the first tick held: the first chunk took one period
    thirds = values * 3
    np.testing.assert_allclose(thirds, np.round(thirds), atol=1e-9)  # weights 1/3, 2/3, then the new plan
    fractions = {round(float(v % 1.0), 6) for v in values}
    assert fractions == {0.0, round(1 / 3, 6), round(2 / 3, 6)}  # both blend weights occurred
    assert np.all(np.diff(values) >= -1e-9)  # the switch is gradual, never back and forth
    # without blending the same run switches at once
    robot = ClockRobot()
    with _sim_runner(ConstantChunkPolicy(robot.clock, delay_s=PERIOD), robot, request_threshold=3) as runner:
        plain = runner.run(max_ticks=40)
    assert all(float(r.action[0]).is_integer() for r in plain.records if not r.held)


class ScriptedChunks:
    """Returns the given chunks in turn (the last one forever); call i can be held until ``block[i]`` is set."""

    n_obs_steps = 1

    def __init__(self, chunks, clock, block: dict[int, threading.Event] | None = None):
        self.chunks = [np.asarray(c, dtype=np.float64) for c in chunks]
        self.clock = clock
        self.block = block or {}
        self.count = 0

    def predict_action(self, obs):
        call = self.count
        self.count += 1
        if call in self.block:
            self.clock.block_until(self.block[call].is_set)
        return {"action": self.chunks[min(call, len(self.chunks) - 1)][None]}


def test_nan_chunks_are_rejected_and_the_last_safe_command_is_held():
    good = np.tile([[10.0, 20.0]], (8, 1))
    robot = ClockRobot(hold=(1.0, 2.0))
    policy = ScriptedChunks([np.full((8, 2), np.nan), good], robot.clock)
    with _sim_runner(policy, robot) as runner:
        report = runner.run(max_ticks=20)
    assert report.chunks_rejected == 1
    assert any(e.kind == "chunk_rejected" for e in report.events)
    sent = np.array([c.action for _, c in robot.commands])
    assert np.all(np.isfinite(sent))
    # held while the NaN chunk came and went, then the good chunk
    assert [r.held for r in report.records[:3]] == [True, True, False]
    assert all(np.allclose(r.action, [1.0, 2.0]) for r in report.records[:2])
    assert np.allclose(report.records[2].action, [10.0, 20.0])


def test_commands_are_clipped_to_the_workspace_and_their_steps_capped():
    robot = ClockRobot(hold=(500.0, 20.0))  # near a corner of the workspace
    policy = ScriptedChunks([np.tile([[1000.0, -1000.0]], (8, 1))], robot.clock)
    limits = SafetyLimits(low=[0.0, 0.0], high=[512.0, 512.0], max_step=10.0)
    with _sim_runner(policy, robot, limits=limits) as runner:
        report = runner.run(max_ticks=20)
    sent = np.array([c.action for _, c in robot.commands[:-1]])
    assert np.all(sent >= 0.0) and np.all(sent <= 512.0)
    assert np.all(np.linalg.norm(np.diff(np.vstack([[500.0, 20.0], sent]), axis=0), axis=1) <= 10.0 + 1e-9)
    assert report.capped_commands > 0 and report.clipped_commands > 0


def test_safety_limits_cap_then_clip_and_refuse_nan():
    limits = SafetyLimits(low=[0.0, 0.0], high=[100.0, 100.0], max_step=5.0)
    safe, clipped, capped = limits.apply(np.array([50.0, 200.0]), np.array([50.0, 98.0]))
    np.testing.assert_allclose(safe, [50.0, 100.0])  # capped to 103, then clipped to the box
    assert clipped and capped
    with pytest.raises(ValueError, match="non-finite"):
        limits.apply(np.array([np.nan, 1.0]), None)
    with pytest.raises(ValueError, match="low"):
        SafetyLimits(low=[1.0], high=[0.0])


def test_watchdog_reports_and_holds_until_a_fresh_chunk_arrives():
    release = threading.Event()
    chunk = np.tile([[5.0, 5.0]], (8, 1))
    robot = ClockRobot()
    policy = ScriptedChunks([chunk, chunk * 2], robot.clock, block={1: release})
    events = []

    def on_event(event):
        events.append(event.kind)
        if event.kind == "watchdog":
            release.set()  # the stalled "network" comes back

    with _sim_runner(policy, robot, watchdog_s=0.3, request_threshold=0, on_event=on_event) as runner:
        report = runner.run(max_ticks=40)
    assert report.watchdog_trips == 1
    assert events.index("watchdog") < events.index("recovered")
    tripped_at = next(e.time for e in report.events if e.kind == "watchdog")
    stalled_request = next(r.tick_time for r in report.records if r.held and r.tick_time > report.records[0].tick_time)
    # tripped at the first tick more than watchdog_s after the stalled request went out
    assert tripped_at - PERIOD <= stalled_request + 0.3 < tripped_at
    trip = next(i for i, r in enumerate(report.records) if r.tick_time >= tripped_at)
    held, before = report.records[trip], report.records[trip - 1]
    assert held.held and np.allclose(held.action, before.action)
    assert report.records[trip + 1].chunk_id == 1 and np.allclose(report.records[trip + 1].action, [10.0, 10.0])


def test_policy_errors_are_reported_and_the_loop_keeps_running():
    class Failing:
        n_obs_steps = 1

        def predict_action(self, obs):
            raise RuntimeError("GPU fell off the bus")

    robot = ClockRobot()
    with _sim_runner(Failing(), robot, watchdog_s=10.0) as runner:
        report = runner.run(max_ticks=10)
    assert report.ticks == 10 and report.held_ticks == 10
    # every request failed and was asked for again at the next tick; the last one was still running
    assert report.chunks_failed == report.chunks_requested - 1 == 9
    assert any("GPU fell off the bus" in e.message for e in report.events)


def test_the_run_counts_ticks_skips_and_deadline_misses_on_the_robot_clock():
    # Sending commands 4, 12 and 20 takes 2.25 periods each: each of those ticks misses its
    # deadline and the loop skips the one tick it fell a whole period behind, instead of bursting.
    robot = ClockRobot(stall_s={4: 2.25 * PERIOD, 12: 2.25 * PERIOD, 20: 2.25 * PERIOD})
    with _sim_runner(ConstantChunkPolicy(), robot) as runner:
        report = runner.run(duration_s=2.0)
    assert report.skipped_ticks == 3
    assert report.deadline_misses == 6  # the 3 late ticks and the 3 skipped ones
    assert report.ticks == int(2.0 * RATE_HZ) - 3
    ticks = [r.tick for r in report.records]
    assert sorted(set(range(32)) - set(ticks)) == [5, 14, 23]  # the skipped ticks
    late = [r.tick for r in report.records if r.sent_time - r.tick_time > report.deadline_s]
    assert late == [4, 13, 22]
    assert [e.kind for e in report.events].count("skipped_ticks") == 3
    assert report.wall_s == pytest.approx(31 * PERIOD)


def test_stop_is_honoured_after_an_injected_sleep():
    robot = ClockRobot(hold=(3.0, 4.0))
    start = robot.clock()
    with _sim_runner(ConstantChunkPolicy(), robot) as runner:
        robot.clock.on_sleep = lambda now: runner.stop() if now >= start + 10 * PERIOD else None
        report = runner.run(max_ticks=1000)
    assert report.ticks == 10
    last = robot.commands[-1][1]
    assert last.hold and np.allclose(last.action, [3.0, 4.0])


def test_stop_from_another_thread_ends_the_run_with_a_hold_and_close_joins_the_worker():
    # The real clock and the default sleep: stop() cuts the wait for the next tick short.
    robot = ClockRobot(hold=(3.0, 4.0), clock=time.monotonic)
    runner = RealtimeRunner(TimedPlanPolicy(time.monotonic, delay_s=PERIOD), robot, rate_hz=RATE_HZ)
    threading.Timer(0.5, runner.stop).start()
    start = time.monotonic()
    report = runner.run(duration_s=30.0)
    assert time.monotonic() - start < 5.0
    assert report.ticks >= 1
    last = robot.commands[-1][1]
    assert last.hold and np.allclose(last.action, [3.0, 4.0])
    assert runner.close()
    assert not runner.worker._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(max_ticks=1)


def test_run_needs_a_limit_and_the_runner_validates_its_arguments():
    robot = ClockRobot()
    with _sim_runner(TimedPlanPolicy(robot.clock), robot) as runner:
        with pytest.raises(ValueError, match="limit"):
            runner.run()
    with pytest.raises(ValueError, match="rate_hz"):
        RealtimeRunner(TimedPlanPolicy(robot.clock), ClockRobot(), rate_hz=0)
    with pytest.raises(TypeError, match="predict_action"):
        RealtimeRunner(object(), ClockRobot())


def test_slowed_policy_takes_at_least_its_delay_and_forwards_attributes():
    policy = SlowedPolicy(TimedPlanPolicy(time.monotonic), 0.05)
    assert policy.n_obs_steps == 2 and policy.n_action_steps == 8
    start = time.monotonic()
    policy.predict_action({"obs": np.zeros((1, 2, 1))})
    assert time.monotonic() - start >= 0.05


# ------------------------------------------------------------------ the simulated Push-T robot
def _pusht_robot(clock, speed: float, **kwargs) -> SimulatedRobot:
    from envs.pusht.env import PushTEnv

    return SimulatedRobot(PushTEnv(obs_type="keypoints"), speed=speed, clock=clock, **kwargs)


def test_simulated_pusht_robot_advances_with_its_clock_like_the_env():
    from envs.pusht.env import PushTEnv

    clock = SimClock()
    robot = _pusht_robot(clock, speed=2.0)  # one control step per 0.05 s of clock
    first = robot.reset(seed=100000)
    assert first.info["steps"] == 0 and first.timestamp == 1000.0
    assert set(first.data) == {"obs"} and first.data["obs"].shape == (20,)
    robot.command(Command(np.array([300.0, 200.0]), clock.now))
    clock.now += 0.175  # 3.5 steps
    obs = robot.observe()
    assert obs.info["steps"] == 3 and obs.timestamp == pytest.approx(1000.15)
    env = PushTEnv(obs_type="keypoints")
    env.reset(seed=100000)
    for _ in range(3):
        expected, *_ = env.step([300.0, 200.0])
    np.testing.assert_allclose(obs.data["obs"], expected)
    np.testing.assert_allclose(robot.hold_action(), expected[-2:])
    with pytest.raises(ValueError, match="finite"):
        robot.command(Command(np.array([np.nan, 1.0]), clock.now))


def test_simulated_robot_needs_a_reset_a_box_action_space_and_a_control_rate():
    import gymnasium as gym

    robot = _pusht_robot(SimClock(), speed=1.0)
    with pytest.raises(RuntimeError, match="reset"):
        robot.observe()

    class Discrete(gym.Env):
        action_space = gym.spaces.Discrete(3)
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
        metadata = {"render_fps": 10}

    with pytest.raises(ValueError, match="Box"):
        SimulatedRobot(Discrete())

    class NoRate(Discrete):
        action_space = gym.spaces.Box(-1.0, 1.0, (2,))
        metadata = {}

    with pytest.raises(ValueError, match="control_hz"):
        SimulatedRobot(NoRate())
    assert SimulatedRobot(NoRate(), control_hz=5.0, speed=2.0).control_hz == 10.0


class SimulatedLatency:
    """Wraps a policy: each call returns ``delay_s`` of simulated time after it started (computing takes none)."""

    def __init__(self, policy, clock: SimClock, delay_s: float):
        self.policy, self.clock, self.delay_s = policy, clock, delay_s
        self.n_obs_steps = policy.n_obs_steps

    def predict_action(self, obs):
        start = self.clock()
        out = self.policy.predict_action(obs)
        self.clock.wait_until(start + self.delay_s)
        return out


def test_realtime_pusht_with_a_diffusion_policy_at_a_higher_rate(make_tiny_diffusion_policy):
    clock = SimClock()
    robot = _pusht_robot(clock, speed=1.6, max_step=100.0)  # 16 control steps per second of clock
    policy = SimulatedLatency(make_tiny_diffusion_policy(), clock, delay_s=2 / robot.control_hz)
    robot.reset(seed=100000)
    limits = SafetyLimits.for_robot(robot, max_step=robot.max_step)
    with _sim_runner(policy, robot, rate_hz=robot.control_hz, limits=limits) as runner:
        report = runner.run(max_ticks=60)
        steps = robot.observe().info["steps"]
    assert report.ticks == 60 and steps == 59  # the simulator followed the clock (last tick: step 59)
    assert report.chunks_received >= 6 and report.held_ticks == 2  # only the ticks before the first chunk
    # latency runs from the observation's capture on the robot (a step boundary) to the chunk being ready
    assert report.latencies_s == [pytest.approx(2 * PERIOD)] * report.chunks_received
    sent = np.array([r.action for r in report.records])
    assert np.all(sent >= 0.0) and np.all(sent <= 512.0)
    assert np.all(np.linalg.norm(np.diff(sent, axis=0), axis=1) <= robot.max_step + 1e-9)
    summary = report.summary()
    assert summary["latency_p50_ms"] == pytest.approx(125.0) and summary["ticks"] == 60


# ------------------------------------------------------------------ garbage collection off the ticks
@pytest.fixture
def restore_gc():
    """The runner freezes the heap and switches automatic collection off during runs: undo both after the test."""
    import gc

    enabled = gc.isenabled()
    yield gc
    gc.unfreeze()
    if enabled:
        gc.enable()


class PhaseRobot(ClockRobot):
    """A :class:`ClockRobot` that knows whether the loop is inside a tick (observed, command not sent yet)
    and samples the collector's state while it is."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.phase = "before the first tick"
        self.gc_states: set[tuple[bool, bool]] = set()  # (automatic collection on, heap frozen) inside ticks

    def observe(self) -> Observation:
        import gc

        self.phase = "in a tick"
        self.gc_states.add((gc.isenabled(), gc.get_freeze_count() > 0))
        return super().observe()

    def command(self, command: Command) -> None:
        super().command(command)
        self.phase = "after a command"


class Cycle:
    """Cyclic garbage: only the cyclic collector frees it."""

    def __init__(self):
        self.me = self


class GarbagePolicy(ConstantChunkPolicy):
    """Leaves ``n`` reference cycles behind per call (in the inference thread) and counts the live ones."""

    def __init__(self, clock, n: int = 800):
        super().__init__(clock, delay_s=PERIOD)
        self.n = n
        import weakref

        self.alive = weakref.WeakSet()

    def predict_action(self, obs):
        for _ in range(self.n):
            self.alive.add(Cycle())
        return super().predict_action(obs)


def test_garbage_is_collected_by_the_loop_between_ticks_never_inside_one_nor_in_the_worker(restore_gc):
    gc = restore_gc
    robot = PhaseRobot()
    policy = GarbagePolicy(robot.clock)
    collections = []  # (generation, on the loop thread, robot phase)
    loop_thread = threading.get_ident()

    def record(phase, info):
        if phase == "start":
            collections.append((info["generation"], threading.get_ident() == loop_thread, robot.phase))

    gc.enable()
    with _sim_runner(policy, robot, request_threshold=2) as runner:
        release = runner.gc.release

        def end_of_run():
            robot.phase = "after the run"
            release()

        runner.gc.release = end_of_run
        gc.callbacks.append(record)
        try:
            report = runner.run(max_ticks=120)
        finally:
            gc.callbacks.remove(record)
        created = policy.count * policy.n
        alive_at_the_end = len(policy.alive)
    assert report.ticks == 120 and report.deadline_misses == 0 and policy.count >= 12
    # before the first tick: one full collection (then the freeze); during the run, automatic collection off
    assert collections[0] == (2, True, "before the first tick")
    assert robot.gc_states == {(False, True)}
    assert gc.isenabled()  # back on after the run
    during = [c for c in collections[1:] if c[2] != "after the run"]
    # the worker's garbage was collected during the run, by the loop, after a tick's command went out
    assert len(during) == len(report.gc_s) >= 12
    assert all(on_loop and phase == "after a command" and generation in (0, 1)
               for generation, on_loop, phase in during)
    assert {generation for generation, _, _ in during} == {0, 1}  # generation 1 every 10th time, as CPython
    assert alive_at_the_end < created // 2


def test_gc_control_off_leaves_the_collector_alone(restore_gc):
    gc = restore_gc
    gc.enable()
    frozen = gc.get_freeze_count()
    robot = PhaseRobot()
    with _sim_runner(GarbagePolicy(robot.clock, n=10), robot, gc_control=False) as runner:
        report = runner.run(max_ticks=20)
    assert robot.gc_states == {(True, gc.get_freeze_count() > 0)} and gc.get_freeze_count() == frozen
    assert report.gc_s == [] and report.summary()["gc_collections"] == 0


def test_collect_garbage_freezes_the_heap_and_leaves_automatic_collection_on(restore_gc):
    gc = restore_gc
    gc.enable()
    gc.unfreeze()
    robot = ClockRobot()
    with _sim_runner(ConstantChunkPolicy(), robot) as runner:
        runner.collect_garbage()
        assert gc.get_freeze_count() > 0 and gc.isenabled()
        gc.disable()  # the caller's choice: the run leaves it off and collects nothing itself
        report = runner.run(max_ticks=5)
        assert not gc.isenabled() and report.gc_s == []


def test_tick_work_covers_reading_the_robot():
    class SlowSensor(ClockRobot):
        def observe(self) -> Observation:
            if len(self.commands) == 3:  # the 4th read takes 10 ms
                self.clock.advance(0.01)
            return super().observe()

    robot = SlowSensor()
    with _sim_runner(ConstantChunkPolicy(), robot) as runner:
        report = runner.run(max_ticks=6)
    assert report.busy_s[3] == pytest.approx(0.01) and max(report.busy_s[:3] + report.busy_s[4:]) == 0.0
    assert report.lateness_s[3] == pytest.approx(0.01)


def test_a_chunk_is_requested_only_after_the_ticks_command_has_gone_out():
    # the woken inference thread would compete with the rest of the tick for the GIL and a CPU
    robot = PhaseRobot()
    policy = TimedPlanPolicy(robot.clock, delay_s=3 * PERIOD)
    with _sim_runner(policy, robot) as runner:
        submit, submitted = runner.worker.submit, []

        def watched(request_id, window, stamp):
            submitted.append((robot.phase, len(robot.commands), stamp))
            submit(request_id, window, stamp)

        runner.worker.submit = watched
        report = runner.run(max_ticks=50)
    assert len(submitted) == report.chunks_requested >= 7
    assert all(phase == "after a command" for phase, _, _ in submitted)
    # ... still planned from that tick's observation: the first request at tick 0, stamped with its capture
    assert submitted[0][1:] == (1, report.records[0].tick_time)
    assert report.latencies_s == [pytest.approx(3 * PERIOD)] * report.chunks_received
