"""The real-time runner: inference off the loop, timestamps, latency compensation, safety, watchdog, shutdown.

Timing tests run at 20 Hz with generous margins (the CI machine has 2 loaded cores): they assert
behaviour (which thread ran the policy, which action went out at which tick), not tight timings.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_export import one_torch_thread  # noqa: F401 (autouse fixture: 1 torch thread)

from dpolicy.control.realtime import RealtimeRunner, SafetyLimits, SlowedPolicy
from dpolicy.control.robot import Command, Observation, Robot, SimulatedPushTRobot

RATE_HZ = 20.0
PERIOD = 1.0 / RATE_HZ


class ClockRobot(Robot):
    """A robot whose only sensor reads the capture time; it records every command with its arrival time."""

    def __init__(self, hold=(0.0, 0.0)):
        self.action_low = None
        self.action_high = None
        self.hold = np.asarray(hold, dtype=np.float64)
        self.commands: list[tuple[float, Command]] = []

    def observe(self) -> Observation:
        now = self.clock()
        return Observation({"obs": np.array([now], dtype=np.float64)}, timestamp=now)

    def command(self, command: Command) -> None:
        self.commands.append((self.clock(), command))

    def hold_action(self) -> np.ndarray:
        return self.hold.copy()


class TimedPlanPolicy:
    """Plans ``horizon`` steps; step k of the plan is (capture time of the latest observation + (k - 1) * PERIOD, k).

    The executable chunk is steps To-1 .. To-1+Ta (To = 2), so every executed action names the
    time it was planned for. Each call takes ``delay_s`` (sleeping, like a remote server) and is
    logged with its thread and start/end times.
    """

    n_obs_steps = 2

    def __init__(self, delay_s: float = 0.0, n_action_steps: int = 8, horizon: int = 16):
        self.delay_s = delay_s
        self.n_action_steps = n_action_steps
        self.horizon = horizon
        self.calls: list[tuple[int, float, float]] = []  # (thread id, start, end)

    def predict_action(self, obs):
        start = time.monotonic()
        stamp = np.asarray(obs["obs"])[:, -1, 0]
        k = np.arange(self.horizon, dtype=np.float64)
        plan = np.stack([stamp[:, None] + (k - (self.n_obs_steps - 1)) * PERIOD,
                         np.broadcast_to(k, (len(stamp), self.horizon))], axis=-1)
        time.sleep(self.delay_s)
        self.calls.append((threading.get_ident(), start, time.monotonic()))
        first = self.n_obs_steps - 1
        return {"action": plan[:, first:first + self.n_action_steps], "action_pred": plan}


def _runner(policy, robot, **kwargs) -> RealtimeRunner:
    kwargs.setdefault("limits", SafetyLimits())
    return RealtimeRunner(policy, robot, rate_hz=RATE_HZ, **kwargs)


def test_inference_runs_off_the_loop_thread_and_commands_keep_flowing():
    policy, robot = TimedPlanPolicy(delay_s=3 * PERIOD), ClockRobot()
    with _runner(policy, robot) as runner:
        report = runner.run(max_ticks=50)
    assert report.ticks == 50
    assert len(robot.commands) == 51 and robot.commands[-1][1].hold  # + the hold at shutdown
    loop_thread = threading.get_ident()
    assert policy.calls and all(thread != loop_thread for thread, _, _ in policy.calls)
    # the loop never waited on inference: commands went out while a chunk was being computed
    during = [sent for sent, _ in robot.commands[:-1] if any(s < sent < e for _, s, e in policy.calls)]
    assert len(during) >= 2 * report.chunks_received  # every 150 ms request spanned ~3 ticks
    assert report.chunks_received >= 3


def test_no_action_executes_away_from_its_timestamp_with_latency_compensation():
    policy, robot = TimedPlanPolicy(delay_s=3 * PERIOD), ClockRobot()
    with _runner(policy, robot) as runner:
        report = runner.run(max_ticks=50)
    executed = [r for r in report.records if not r.held]
    assert len(executed) >= 25
    for record in executed:
        assert record.action[0] == pytest.approx(record.action_time)  # the plan's own time stamp
        assert record.action_time >= record.tick_time - 0.5 * PERIOD  # never older than its tick
        assert record.action_time < record.tick_time + 0.5 * PERIOD  # nor meant for a later one
    assert report.actions_dropped >= report.chunks_received  # the late head of each chunk was skipped
    assert report.chunks_requested >= report.chunks_received


def test_without_compensation_actions_run_late_by_the_latency():
    policy, robot = TimedPlanPolicy(delay_s=3 * PERIOD), ClockRobot()
    with _runner(policy, robot, latency_compensation=False) as runner:
        report = runner.run(max_ticks=50)
    lags = [r.tick_time - r.action[0] for r in report.records if not r.held]
    assert len(lags) >= 25
    assert np.median(lags) >= 2.5 * PERIOD  # each chunk starts from its first action on arrival


@pytest.mark.parametrize("refill", [True, False])
def test_late_heads_are_refilled_from_the_longer_prediction(refill):
    policy = TimedPlanPolicy(delay_s=3 * PERIOD, n_action_steps=4, horizon=12)
    with _runner(policy, ClockRobot(), refill_from_prediction=refill) as runner:
        report = runner.run(max_ticks=40)
    executed = [r for r in report.records if not r.held]
    for record in executed:  # on time either way
        assert record.action[0] == pytest.approx(record.action_time)
        assert abs(record.action_time - record.tick_time) <= 0.5 * PERIOD
    steps = [r.action[1] for r in executed]
    if refill:  # plan steps after the Ta = 4 chunk (plan steps 1..4) were executed
        assert len(executed) >= 20 and max(steps) >= 5
    else:  # about 3 of the 4 actions of each chunk are late: the queue runs dry
        assert all(step <= 4 for step in steps) and report.held_ticks > report.ticks // 3


def test_a_prediction_that_does_not_start_with_the_chunk_is_never_used_to_refill():
    class Inconsistent:
        n_obs_steps = 1

        def predict_action(self, obs):
            time.sleep(2 * PERIOD)
            return {"action": np.full((1, 8, 2), 7.0), "action_pred": np.zeros((1, 16, 2))}

    with _runner(Inconsistent(), ClockRobot(hold=(7.0, 7.0))) as runner:
        report = runner.run(max_ticks=30)
    assert report.chunks_received >= 2
    assert all(np.allclose(r.action, 7.0) for r in report.records)


def test_automatic_request_threshold_keeps_the_queue_from_running_dry():
    def held_after_first_chunk(report) -> int:
        first = next(i for i, r in enumerate(report.records) if not r.held)
        return sum(r.held for r in report.records[first:])

    with _runner(TimedPlanPolicy(delay_s=3 * PERIOD), ClockRobot()) as runner:
        automatic = runner.run(max_ticks=60)
    with _runner(TimedPlanPolicy(delay_s=3 * PERIOD), ClockRobot(), request_threshold=0) as runner:
        when_empty = runner.run(max_ticks=60)
    # asking only when the queue is empty starves >= 3 ticks per chunk; asking early barely ever does
    assert held_after_first_chunk(when_empty) >= 9
    assert held_after_first_chunk(automatic) <= held_after_first_chunk(when_empty) // 2


class ConstantChunkPolicy:
    """Every action of chunk number c is (c, 0)."""

    n_obs_steps = 1

    def __init__(self):
        self.count = 0

    def predict_action(self, obs):
        self.count += 1
        return {"action": np.tile([[[float(self.count), 0.0]]], (1, 8, 1))}


def test_blending_cross_fades_the_overlap_between_chunks():
    robot = ClockRobot()
    with _runner(ConstantChunkPolicy(), robot, blend_steps=2) as runner:
        report = runner.run(max_ticks=40)
    values = np.array([r.action[0] for r in report.records if not r.held])
    assert len(values) >= 20
    thirds = values * 3
    np.testing.assert_allclose(thirds, np.round(thirds), atol=1e-9)  # weights 1/3, 2/3, then the new plan
    assert np.any(np.abs(values - np.round(values)) > 0.1)  # blended values occurred
    assert np.all(np.diff(values) >= -1e-9)  # the switch is gradual, never back and forth


class ScriptedChunks:
    """Returns the given chunks in turn (the last one forever); optional blocking on an event per call."""

    n_obs_steps = 1

    def __init__(self, chunks, block: dict[int, threading.Event] | None = None):
        self.chunks = [np.asarray(c, dtype=np.float64) for c in chunks]
        self.block = block or {}
        self.count = 0

    def predict_action(self, obs):
        call = self.count
        self.count += 1
        if call in self.block:
            self.block[call].wait(10.0)
        return {"action": self.chunks[min(call, len(self.chunks) - 1)][None]}


def test_nan_chunks_are_rejected_and_the_last_safe_command_is_held():
    good = np.tile([[10.0, 20.0]], (8, 1))
    policy = ScriptedChunks([np.full((8, 2), np.nan), good])
    robot = ClockRobot(hold=(1.0, 2.0))
    with _runner(policy, robot) as runner:
        report = runner.run(max_ticks=20)
    assert report.chunks_rejected == 1
    assert any(e.kind == "chunk_rejected" for e in report.events)
    sent = np.array([c.action for _, c in robot.commands])
    assert np.all(np.isfinite(sent))
    assert report.records[0].held and np.allclose(report.records[0].action, [1.0, 2.0])
    assert any(np.allclose(r.action, [10.0, 20.0]) for r in report.records)


def test_commands_are_clipped_to_the_workspace_and_their_steps_capped():
    policy = ScriptedChunks([np.tile([[1000.0, -1000.0]], (8, 1))])
    robot = ClockRobot(hold=(500.0, 20.0))  # near a corner of the workspace
    limits = SafetyLimits(low=[0.0, 0.0], high=[512.0, 512.0], max_step=10.0)
    with _runner(policy, robot, limits=limits) as runner:
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
    policy = ScriptedChunks([chunk, chunk * 2], block={1: release})
    robot = ClockRobot()
    events = []

    def on_event(event):
        events.append(event.kind)
        if event.kind == "watchdog":
            release.set()  # the stalled "network" comes back

    with _runner(policy, robot, watchdog_s=0.3, request_threshold=0, on_event=on_event) as runner:
        report = runner.run(max_ticks=40)
    assert report.watchdog_trips == 1
    assert events.index("watchdog") < events.index("recovered")
    tripped_at = next(e.time for e in report.events if e.kind == "watchdog")
    trip = next(i for i, r in enumerate(report.records) if r.tick_time >= tripped_at)
    held, before = report.records[trip], report.records[trip - 1]
    assert held.held and np.allclose(held.action, before.action)
    assert any(np.allclose(r.action, [10.0, 10.0]) for r in report.records[trip:])  # resumed


def test_policy_errors_are_reported_and_the_loop_keeps_running():
    class Failing:
        n_obs_steps = 1

        def predict_action(self, obs):
            raise RuntimeError("GPU fell off the bus")

    robot = ClockRobot()
    with _runner(Failing(), robot, watchdog_s=10.0) as runner:
        report = runner.run(max_ticks=10)
    assert report.ticks == 10 and report.held_ticks == 10
    assert report.chunks_failed >= 1
    assert any("GPU fell off the bus" in e.message for e in report.events)


def test_stop_from_another_thread_ends_the_run_with_a_hold_and_close_joins_the_worker():
    robot = ClockRobot(hold=(3.0, 4.0))
    runner = _runner(TimedPlanPolicy(delay_s=PERIOD), robot)
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
    with _runner(TimedPlanPolicy(), ClockRobot()) as runner:
        with pytest.raises(ValueError, match="limit"):
            runner.run()
    with pytest.raises(ValueError, match="rate_hz"):
        RealtimeRunner(TimedPlanPolicy(), ClockRobot(), rate_hz=0)
    with pytest.raises(TypeError, match="predict_action"):
        RealtimeRunner(object(), ClockRobot())


def test_slowed_policy_takes_at_least_its_delay_and_forwards_attributes():
    policy = SlowedPolicy(TimedPlanPolicy(), 0.05)
    assert policy.n_obs_steps == 2 and policy.n_action_steps == 8
    start = time.monotonic()
    policy.predict_action({"obs": np.zeros((1, 2, 1))})
    assert time.monotonic() - start >= 0.05


# ------------------------------------------------------------------ the simulated Push-T robot
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_simulated_pusht_robot_advances_with_its_clock_like_the_env():
    from envs.pusht.env import PushTEnv

    clock = FakeClock()
    robot = SimulatedPushTRobot(clock=clock, speed=2.0)  # one control step per 0.05 s of clock
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


def test_simulated_pusht_robot_needs_a_reset_and_a_known_observation_type():
    robot = SimulatedPushTRobot(clock=FakeClock())
    with pytest.raises(RuntimeError, match="reset"):
        robot.observe()
    with pytest.raises(ValueError, match="obs_type"):
        SimulatedPushTRobot(obs_type="state")


def test_realtime_pusht_with_a_diffusion_policy_at_a_higher_rate(make_tiny_diffusion_policy):
    policy = make_tiny_diffusion_policy()
    robot = SimulatedPushTRobot(speed=2.0)  # 20 Hz
    robot.reset(seed=100000)
    with RealtimeRunner(policy, robot, rate_hz=robot.control_hz) as runner:
        report = runner.run(max_ticks=60)
    steps = robot.observe().info["steps"]
    assert report.ticks == 60 and steps >= 59  # the simulator followed the clock (last tick: step 59)
    assert report.chunks_received >= 5
    sent = np.array([r.action for r in report.records])
    assert np.all(sent >= 0.0) and np.all(sent <= 512.0)
    assert np.all(np.linalg.norm(np.diff(sent, axis=0), axis=1) <= robot.max_step_px + 1e-9)
    summary = report.summary()
    assert summary["latency_p50_ms"] > 0 and summary["ticks"] == 60
