"""Real-time control: a fixed-rate loop that never waits for the policy.

:class:`RealtimeRunner` drives a :class:`~dpolicy.control.robot.Robot` at ``rate_hz`` (10 Hz by
default). Every tick it reads an observation, sends exactly one command and returns to sleep;
the policy runs in a background thread (:class:`InferenceWorker`), so a slow chunk (a big
network, a remote server) never delays a command. The observation history and the action queue
are those of :class:`~dpolicy.control.controller.ChunkController`; this module adds time:

- every chunk is stamped with the capture time of the observation it was planned from; action
  ``j`` of a chunk belongs to time ``stamp + j * period``. With latency compensation (default)
  actions whose time has passed when the chunk arrives, or later, are dropped, so the robot
  executes the part of the plan meant for "now", topped up to Ta actions from the policy's longer
  predicted sequence (``action_pred``); without it a chunk is executed from its start when it
  arrives (the naive behaviour, actions run late by the inference latency);
- the next chunk is requested while enough actions remain queued to cover the measured latency
  (``request_threshold``), so the queue does not run dry; ``blend_steps`` cross-fades the first
  actions of a new chunk with the old plan's actions for the same ticks;
- safety: every command is clipped to the workspace and its change per tick capped
  (:class:`SafetyLimits`); chunks with NaN/inf are rejected; while no action is available the
  last safe command is held; a watchdog reports when a requested chunk has not arrived within
  ``watchdog_s`` and holds until one does; :meth:`RealtimeRunner.stop` and ``close`` shut down
  cleanly and leave the robot holding;
- garbage collection stays out of the ticks: the heap is frozen before a run's first tick and
  the loop collects the young generations itself after a tick's command has gone out; a full
  collection (hundreds of ms with torch loaded, whichever thread starts it) never runs during a
  run (:class:`LoopGarbageCollector`).

Everything the loop did is in the :class:`RealtimeReport` that :meth:`RealtimeRunner.run` returns.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dpolicy.control.controller import ChunkController
from dpolicy.control.robot import Command, Observation, Robot

LOG = logging.getLogger("dpolicy.realtime")

#: Latencies of the last chunks used by the automatic request threshold.
LATENCY_WINDOW = 5
#: Log level of each event kind (all of them are kept in the report and passed to ``on_event``).
EVENT_LOG_LEVELS = {"watchdog": logging.WARNING, "recovered": logging.WARNING,
                    "chunk_failed": logging.WARNING, "chunk_rejected": logging.WARNING,
                    "chunk_stale": logging.INFO, "skipped_ticks": logging.INFO}


def as_numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (torch is not imported here)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------- safety
@dataclass
class SafetyLimits:
    """Limits every command goes through.

    Args:
        low, high: workspace box (D,); commands are clipped into it (None: no box).
        max_step: largest Euclidean change of the command from one tick to the next, in action
            units (None: no cap). Larger jumps are shortened along their direction.
    """

    low: np.ndarray | None = None
    high: np.ndarray | None = None
    max_step: float | None = None

    def __post_init__(self):
        self.low = None if self.low is None else np.asarray(self.low, dtype=np.float64)
        self.high = None if self.high is None else np.asarray(self.high, dtype=np.float64)
        if self.low is not None and self.high is not None and np.any(self.low > self.high):
            raise ValueError(f"SafetyLimits: low {self.low} must not exceed high {self.high}")
        if self.max_step is not None and not self.max_step > 0:
            raise ValueError(f"SafetyLimits: max_step must be > 0 or None, got {self.max_step}")

    @classmethod
    def for_robot(cls, robot: Robot, max_step: float | None = None) -> SafetyLimits:
        """The robot's workspace box, and ``max_step`` (default: the robot's ``max_step`` if any)."""
        step = max_step if max_step is not None else getattr(robot, "max_step", None)
        return cls(low=getattr(robot, "action_low", None), high=getattr(robot, "action_high", None),
                   max_step=step)

    def apply(self, action: np.ndarray, previous: np.ndarray | None) -> tuple[np.ndarray, bool, bool]:
        """``(safe action, was clipped, was capped)``; raises ValueError for NaN/inf."""
        action = np.asarray(action, dtype=np.float64)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"refusing a non-finite command {action.tolist()}")
        capped = clipped = False
        if self.max_step is not None and previous is not None:
            delta = action - previous
            norm = float(np.linalg.norm(delta))
            if norm > self.max_step:
                action = previous + delta * (self.max_step / norm)
                capped = True
        if self.low is not None or self.high is not None:
            bounded = np.clip(action, self.low, self.high)
            clipped = bool(np.any(bounded != action))
            action = bounded
        return action, clipped, capped


# ---------------------------------------------------------------------------------------- inference
@dataclass
class ChunkResult:
    """A finished inference request."""

    request_id: int
    stamp: float  # capture time of the observation the chunk was planned from
    requested_at: float
    finished_at: float
    chunk: np.ndarray | None  # (Ta, D), None when the policy raised
    error: str | None = None
    plan: np.ndarray | None = None  # action_pred[To-1:] (Tp - To + 1, D) when the policy returns it

    @property
    def latency_s(self) -> float:
        """From the observation's capture to the chunk being ready."""
        return self.finished_at - self.stamp


class InferenceWorker:
    """Runs ``policy.predict_action`` in a background thread, one request at a time.

    :meth:`submit` and :meth:`poll` never block: the control loop hands over an observation
    window and later picks up the result. Exceptions of the policy come back as a result with
    ``error`` set; the worker keeps running.
    """

    def __init__(self, policy, clock: Callable[[], float] = time.monotonic, name: str = "dpolicy-inference"):
        self.policy = policy
        self.clock = clock
        self._cond = threading.Condition()
        self._request: tuple[int, dict, float, float] | None = None
        self._result: ChunkResult | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True from :meth:`submit` until the result is ready."""
        with self._cond:
            return self._busy

    @property
    def thread_id(self) -> int | None:
        return self._thread.ident

    def submit(self, request_id: int, window: Mapping[str, np.ndarray], stamp: float) -> None:
        """Start planning from ``window`` ({key: (1, To, ...)}), an observation captured at ``stamp``."""
        with self._cond:
            if self._closed:
                raise RuntimeError("InferenceWorker is closed")
            if self._busy:
                raise RuntimeError("InferenceWorker is busy: poll() its result before submitting again")
            self._busy = True
            self._result = None
            self._request = (request_id, dict(window), stamp, self.clock())
            self._cond.notify_all()

    def poll(self) -> ChunkResult | None:
        """The finished result, once (None while running or when nothing was submitted)."""
        with self._cond:
            result, self._result = self._result, None
            return result

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request is running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the thread after the running request (if any); True when it has ended."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._request is not None or self._closed)
                if self._request is None:
                    return
                request_id, window, stamp, requested_at = self._request
                self._request = None
            chunk, plan, error = None, None, None
            try:
                out = self.policy.predict_action(window)
                chunk = as_numpy(out["action"])[0].astype(np.float64)
                if "action_pred" in out:  # the plan from the observed step on; starts with the chunk
                    plan = as_numpy(out["action_pred"])[0, self.policy.n_obs_steps - 1:].astype(np.float64)
            except Exception as exc:  # reported to the control loop, which keeps running
                error = f"{type(exc).__name__}: {exc}"
            result = ChunkResult(request_id, stamp, requested_at, self.clock(), chunk, error, plan)
            with self._cond:
                self._result = result
                self._busy = False
                self._cond.notify_all()


# ---------------------------------------------------------------------------------------- garbage collection
class LoopGarbageCollector:
    """Keeps Python's cyclic garbage collector out of the control loop's ticks.

    A collection holds the GIL from start to end whichever thread triggers it, so the loop
    waits for it even when the inference thread's allocations started it. The young
    generations are quick (well under a millisecond, a few ms at most), but a full (generation-2)
    collection walks every tracked object: with torch and a policy loaded that is ~400k objects
    and 100-500 ms on a 2-core machine, longer than a tick. Hence, while the loop runs:

    - :meth:`freeze` (at the start of a run, before the first tick): a full collection, then
      ``gc.freeze()``: every object alive now (modules, torch, the policy, the caller's data)
      moves to the permanent generation, which later collections skip, and automatic collection
      is switched off (``gc.disable()``) for the run. A later freeze (the next run) collects only
      what was allocated since the previous one, so it is cheap.
    - :meth:`collect_young` (after each tick's command has gone out, in the slack before the next
      tick): the young generations when CPython itself would have collected them (generation 0
      after ``threshold0`` net allocations, generation 1 every ``threshold1``-th time); never
      generation 2.
    - :meth:`release` (when the run ends): automatic collection is switched back on (if it was on).
      The freeze stays: frozen objects are still freed by reference counting, only reference
      cycles among them are never collected.

    When automatic collection was already off (the caller disabled it) the young collections
    are left out too.
    """

    def __init__(self):
        self._resume = False  # whether to re-enable automatic collection at release()

    def freeze(self) -> None:
        """A full collection and ``gc.freeze()``; automatic collection off until :meth:`release`."""
        enabled = gc.isenabled()
        gc.disable()  # no automatic collection in between (e.g. from the inference thread)
        gc.collect()
        gc.freeze()
        self._resume = self._resume or enabled

    def collect_young(self) -> int | None:
        """Collect generation 0 (or 1) if CPython would have by now; the generation collected, or None."""
        if not self._resume:
            return None
        threshold0, threshold1, _ = gc.get_threshold()
        count0, count1, _ = gc.get_count()
        if threshold0 <= 0 or count0 <= threshold0:
            return None
        generation = 1 if count1 > threshold1 else 0  # as CPython's own choice between 0 and 1
        gc.collect(generation)
        return generation

    def release(self) -> None:
        """Switch automatic collection back on if it was on before :meth:`freeze`."""
        if self._resume:
            self._resume = False
            gc.enable()


# ---------------------------------------------------------------------------------------- report
@dataclass
class TickRecord:
    """What one tick sent."""

    tick: int
    tick_time: float  # when the tick was due
    sent_time: float  # when the command went out
    action: np.ndarray  # the command sent (after the safety limits)
    action_time: float | None  # the time the executed plan action belonged to; None when holding
    chunk_id: int  # request id of the chunk it came from, -1 when holding
    held: bool


@dataclass
class RealtimeEvent:
    time: float
    kind: str  # watchdog, recovered, chunk_rejected, chunk_failed, chunk_stale, skipped_ticks
    message: str


@dataclass
class RealtimeReport:
    """Counters and timings of one :meth:`RealtimeRunner.run`."""

    period_s: float
    deadline_s: float
    ticks: int = 0
    deadline_misses: int = 0  # ticks whose command went out later than deadline_s, plus skipped ticks
    skipped_ticks: int = 0  # ticks dropped because the loop fell a whole period behind
    held_ticks: int = 0  # ticks without a fresh policy action (the last safe command was repeated)
    watchdog_trips: int = 0
    chunks_requested: int = 0
    chunks_received: int = 0
    chunks_rejected: int = 0  # NaN/inf or wrong shape
    chunks_failed: int = 0  # the policy raised
    chunks_stale: int = 0  # every action's time had passed on arrival
    actions_dropped: int = 0  # actions skipped because their time had passed
    clipped_commands: int = 0
    capped_commands: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # per chunk: observation capture -> ready
    lateness_s: list[float] = field(default_factory=list)  # per tick: command sent - tick due
    busy_s: list[float] = field(default_factory=list)  # per tick: the loop's work, wake-up -> command sent
    gc_s: list[float] = field(default_factory=list)  # per young collection the loop ran after a command
    records: list[TickRecord] = field(default_factory=list)
    events: list[RealtimeEvent] = field(default_factory=list)

    def summary(self) -> dict:
        """Counters plus p50/p99 of latency, lateness and tick work, in milliseconds."""
        def pct(values, q):
            return float(np.percentile(values, q) * 1000.0) if values else float("nan")

        counters = {name: getattr(self, name) for name in (
            "ticks", "deadline_misses", "skipped_ticks", "held_ticks", "watchdog_trips", "chunks_requested",
            "chunks_received", "chunks_rejected", "chunks_failed", "chunks_stale", "actions_dropped",
            "clipped_commands", "capped_commands")}
        return {"rate_hz": 1.0 / self.period_s, "deadline_ms": self.deadline_s * 1000.0, **counters,
                "latency_p50_ms": pct(self.latencies_s, 50), "latency_p99_ms": pct(self.latencies_s, 99),
                "lateness_p50_ms": pct(self.lateness_s, 50), "lateness_p99_ms": pct(self.lateness_s, 99),
                "max_lateness_ms": max(self.lateness_s, default=float("nan")) * 1000.0,
                "tick_work_p99_ms": pct(self.busy_s, 99),
                "max_tick_work_ms": max(self.busy_s, default=float("nan")) * 1000.0,
                "gc_collections": len(self.gc_s), "max_gc_ms": max(self.gc_s, default=0.0) * 1000.0,
                "wall_s": self.wall_s}


# ---------------------------------------------------------------------------------------- runner
class RealtimeRunner:
    """Fixed-rate control of a robot by a chunking policy, inference in a background thread.

    Args:
        policy: ``predict_action(obs) -> {"action": (B, Ta, D), ...}`` and ``n_obs_steps``: a package
            policy, a :class:`~dpolicy.control.client.PolicyClient`, or a scripted one.
        robot: the :class:`~dpolicy.control.robot.Robot` driven; its clock times everything.
        rate_hz: command rate; one chunk action per tick.
        latency_compensation: drop actions whose time has passed (True) or run each chunk from its
            first action when it arrives (False).
        request_threshold: request the next chunk when at most this many actions are queued; None
            (default) derives it from the measured latency: ``ceil(latency / period) + 1``, using
            the largest of the last 5 chunk latencies.
        blend_steps: cross-fade this many actions of a new chunk with the old plan (0: switch).
        refill_from_prediction: when latency compensation drops the late head of a chunk, take
            the actions after the chunk from the policy's longer predicted sequence
            (``action_pred``), so that every chunk still offers Ta on-time actions.
        limits: safety limits (default: :meth:`SafetyLimits.for_robot`).
        watchdog_s: when a requested chunk has not arrived after this long, report it (event
            ``watchdog``) and hold the last safe command until one arrives.
        deadline_s: a tick whose command goes out later than this after it was due counts as a
            deadline miss (default: half a period).
        on_event: called with every :class:`RealtimeEvent` (also logged and kept in the report).
        sleep: ``sleep(seconds)`` the loop calls to wait for the next tick; None (default) waits on
            :meth:`stop`'s event, so a stop cuts the wait short. Pass one together with a fake
            ``robot.clock`` (a sleep that advances it) to run the loop in simulated time; the
            loop then checks :meth:`stop` after every sleep.
        gc_control: keep Python's garbage collector out of the ticks (default): a full collection
            and ``gc.freeze()`` before the first tick of every run, automatic collection off during
            the run, the young generations collected by the loop after a tick's command has gone
            out (see :class:`LoopGarbageCollector`). False leaves the collector alone.
    """

    def __init__(self, policy, robot: Robot, rate_hz: float = 10.0, *, latency_compensation: bool = True,
                 request_threshold: int | None = None, blend_steps: int = 0,
                 refill_from_prediction: bool = True, limits: SafetyLimits | None = None,
                 watchdog_s: float = 1.0, deadline_s: float | None = None,
                 on_event: Callable[[RealtimeEvent], None] | None = None,
                 sleep: Callable[[float], None] | None = None, gc_control: bool = True):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if request_threshold is not None and request_threshold < 0:
            raise ValueError(f"request_threshold must be >= 0 or None (automatic), got {request_threshold}")
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0, got {blend_steps}")
        if not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0, got {watchdog_s}")
        self.controller = ChunkController(policy, n_envs=1)
        self.robot = robot
        self.clock = robot.clock
        self.period_s = 1.0 / float(rate_hz)
        self.latency_compensation = bool(latency_compensation)
        self.request_threshold = request_threshold
        self.blend_steps = int(blend_steps)
        self.limits = limits if limits is not None else SafetyLimits.for_robot(robot)
        self.watchdog_s = float(watchdog_s)
        self.deadline_s = 0.5 * self.period_s if deadline_s is None else float(deadline_s)
        self.on_event = on_event
        self._sleep = sleep
        self.refill_from_prediction = bool(refill_from_prediction)
        self.worker = InferenceWorker(policy, self.clock)
        self.gc = LoopGarbageCollector() if gc_control else None
        self._stop = threading.Event()
        self._next_request_id = 0
        self._run_first_request = 0
        self._recent_latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)  # kept across runs
        self._closed = False

    # ------------------------------------------------------------------ public
    def stop(self) -> None:
        """Ask :meth:`run` to return at its next tick (thread-safe)."""
        self._stop.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the inference thread (after its running request); True when it has ended."""
        self._closed = True
        self._stop.set()
        return self.worker.close(timeout)

    def collect_garbage(self) -> None:
        """A full garbage collection and ``gc.freeze()`` now (with ``gc_control``; else nothing).

        :meth:`run` does the same before its first tick; calling this before resetting the
        robot keeps the first collection, the long one (the whole heap), from delaying the
        episode's start. Later ones only walk what was allocated since.
        """
        if self.gc is not None:
            self.gc.freeze()
            self.gc.release()

    def __enter__(self) -> RealtimeRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, max_ticks: int | None = None, duration_s: float | None = None,
            until: Callable[[Observation], bool] | None = None, progress: bool = False) -> RealtimeReport:
        """Control the robot until ``max_ticks`` ticks, ``duration_s`` seconds, ``until(observation)``
        is true or :meth:`stop` is called; then command a hold and return the report.

        The observation history and the plan start empty; a request still running from an earlier
        run is waited out in the background and its result discarded.
        """
        if self._closed:
            raise RuntimeError("RealtimeRunner is closed")
        if max_ticks is None and duration_s is None and until is None:
            raise ValueError("run() needs a limit: max_ticks, duration_s or until")
        self._stop.clear()
        self._begin_run()
        report = self._report
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_ticks, desc="realtime", unit="tick", dynamic_ncols=True, mininterval=1.0)
        if self.gc is not None:
            self.gc.freeze()  # before the run's clock starts: no tick pays for it
        start = self.clock()
        n = 0
        try:
            while not self._stop.is_set():
                if max_ticks is not None and report.ticks >= max_ticks:
                    break
                tick_time = start + n * self.period_s
                if duration_s is not None and tick_time - start >= duration_s:
                    break
                delay = tick_time - self.clock()
                if delay > 0 and self._wait(delay):
                    break
                woke = self.clock()
                behind = int((woke - tick_time) // self.period_s)
                if behind > 0:  # a whole period late: skip the missed ticks instead of bursting
                    n += behind
                    tick_time = start + n * self.period_s
                    report.skipped_ticks += behind
                    report.deadline_misses += behind
                    self._event(tick_time, "skipped_ticks", f"loop fell behind: skipped {behind} tick(s)")
                observation = self.robot.observe()
                if until is not None and until(observation):
                    break
                self._tick(n, tick_time, observation, woke)
                n += 1
                if self.gc is not None:  # the command is out: the slack before the next tick is ours
                    collect_start = self.clock()
                    if self.gc.collect_young() is not None:
                        report.gc_s.append(self.clock() - collect_start)
                if bar is not None:
                    bar.update(1)
                    if n % 50 == 0:
                        bar.set_postfix(misses=report.deadline_misses, held=report.held_ticks)
        finally:
            if bar is not None:
                bar.close()
            report.wall_s = self.clock() - start
            self._hold_at_exit()
            if self.gc is not None:
                self.gc.release()
        return report

    # ------------------------------------------------------------------ one run
    def _wait(self, delay: float) -> bool:
        """Wait ``delay`` seconds for the next tick; True when :meth:`stop` was called."""
        if self._sleep is None:
            return self._stop.wait(delay)
        self._sleep(delay)
        return self._stop.is_set()

    def _begin_run(self) -> None:
        self.controller.reset()
        self._queue_times = np.zeros(0)
        self._chunk_id = -1
        self._run_first_request = self._next_request_id  # results of older requests are discarded
        self._waiting_since: float | None = None
        self._watchdog_tripped = False
        self._last_command = np.asarray(self.robot.hold_action(), dtype=np.float64)
        self._report = RealtimeReport(period_s=self.period_s, deadline_s=self.deadline_s)

    def _hold_at_exit(self) -> None:
        try:
            hold = np.asarray(self.robot.hold_action(), dtype=np.float64)
            self.robot.command(Command(hold, self.clock(), hold=True))
        except Exception as exc:  # the robot may be gone; nothing else to do
            LOG.warning("could not command a hold at shutdown: %s", exc)

    def _event(self, when: float, kind: str, message: str) -> None:
        event = RealtimeEvent(when, kind, message)
        self._report.events.append(event)
        LOG.log(EVENT_LOG_LEVELS.get(kind, logging.WARNING), "%s: %s", kind, message)
        if self.on_event is not None:
            self.on_event(event)

    def _tick(self, n: int, tick_time: float, observation: Observation, work_start: float) -> None:
        """One tick's work on ``observation``; ``work_start``: when the loop woke up for it."""
        report = self._report
        self.controller.observe({key: np.asarray(value)[None] for key, value in observation.data.items()})
        self._drop_stale(tick_time)
        self._receive(tick_time)
        request = self._plan_request(observation.timestamp)
        self._check_watchdog(tick_time)

        action, action_time, chunk_id = self._pop_action()
        held = action is None
        if held:
            action = self._last_command
            report.held_ticks += 1
        try:
            safe, clipped, capped = self.limits.apply(action, self._last_command)
        except ValueError as exc:  # a non-finite action slipped through: hold instead
            self._event(tick_time, "chunk_rejected", str(exc))
            safe, clipped, capped, held = self._last_command, False, False, True
            action_time, chunk_id = None, -1
        self.robot.command(Command(safe, tick_time, hold=held))
        sent = self.clock()
        self._last_command = safe
        report.ticks += 1
        report.clipped_commands += int(clipped)
        report.capped_commands += int(capped)
        report.lateness_s.append(sent - tick_time)
        report.busy_s.append(sent - work_start)
        if sent - tick_time > self.deadline_s:
            report.deadline_misses += 1
        report.records.append(TickRecord(n, tick_time, sent, safe, action_time, chunk_id, held))
        if request is not None:
            # Only now, with the command out: the woken inference thread competes for the GIL (and a
            # CPU) from its first instruction on, and would otherwise delay the rest of the tick.
            self.worker.submit(*request)

    # ------------------------------------------------------------------ the plan
    def _queued(self) -> int:
        return int(self.controller.queued([0])[0])

    def _pop_action(self) -> tuple[np.ndarray | None, float | None, int]:
        queued = self._queued()
        if queued == 0 or self._watchdog_tripped:
            return None, None, -1
        action_time = float(self._queue_times[len(self._queue_times) - queued])
        return self.controller.act([0])[0].astype(np.float64), action_time, self._chunk_id

    def _drop_stale(self, tick_time: float, everything: bool = False) -> int:
        """Skip queued actions whose time has passed (all of them with ``everything``)."""
        dropped = 0
        queued = self._queued()
        while queued > 0:
            action_time = self._queue_times[len(self._queue_times) - queued]
            if not everything and action_time >= tick_time - 0.5 * self.period_s:
                break
            self.controller.act([0])  # the queue is not empty, so this pops without planning
            queued -= 1
            dropped += 1
        self._report.actions_dropped += dropped
        return dropped

    def _receive(self, tick_time: float) -> None:
        result = self.worker.poll()
        if result is None or result.request_id < self._run_first_request:
            return
        report = self._report
        if result.error is not None:
            report.chunks_failed += 1
            self._event(tick_time, "chunk_failed",
                        f"chunk {result.request_id}: the policy raised {result.error}")
            return
        report.latencies_s.append(result.latency_s)
        self._recent_latencies.append(result.latency_s)
        chunk = result.chunk
        action_dim = self._last_command.shape[0]
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != action_dim:
            report.chunks_rejected += 1
            self._event(tick_time, "chunk_rejected", f"chunk {result.request_id} has shape {chunk.shape}, "
                        f"expected (Ta, {action_dim})")
            return
        if not np.all(np.isfinite(chunk)):
            report.chunks_rejected += 1
            self._event(tick_time, "chunk_rejected", f"chunk {result.request_id} contains NaN/inf: rejected, "
                        "holding the last safe command")
            return
        report.chunks_received += 1
        n_actions = len(chunk)
        start = result.stamp if self.latency_compensation else tick_time
        plan = result.plan
        if (self.latency_compensation and self.refill_from_prediction and plan is not None
                and plan.ndim == 2 and len(plan) > n_actions and np.all(np.isfinite(plan))
                and np.allclose(plan[:n_actions], chunk)):  # the package's convention: the chunk starts the plan
            chunk = plan  # the chunk, then what the policy planned after it
        times = start + np.arange(len(chunk)) * self.period_s
        fresh = times >= tick_time - 0.5 * self.period_s
        report.actions_dropped += int((~fresh).sum())  # the late head (times increase along the plan)
        if not fresh.any():
            report.chunks_stale += 1
            self._event(tick_time, "chunk_stale", f"chunk {result.request_id} arrived after all its actions' "
                        f"times had passed (latency {result.latency_s * 1000:.0f} ms)")
            return
        chunk, times = chunk[fresh][:n_actions], times[fresh][:n_actions]  # at most Ta on-time actions
        chunk = self._blend(chunk, times)
        self.controller.set_chunks([0], chunk[None])
        self._queue_times = times
        self._chunk_id = result.request_id
        self._waiting_since = None
        if self._watchdog_tripped:
            self._watchdog_tripped = False
            self._event(tick_time, "recovered", f"fresh chunk {result.request_id} arrived: resuming")

    def _blend(self, chunk: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Cross-fade the first ``blend_steps`` actions with the old plan's actions for the same ticks."""
        queued = self._queued()
        if self.blend_steps == 0 or queued == 0 or self._watchdog_tripped:
            return chunk
        old_times = self._queue_times[len(self._queue_times) - queued:]
        # set_chunks without predictions records the installed chunk as the plan: its tail is the queue
        old_actions = self.controller.last_prediction[0][-queued:]
        out = chunk.copy()
        for i in range(min(self.blend_steps, len(chunk))):
            match = np.flatnonzero(np.abs(old_times - times[i]) < 0.5 * self.period_s)
            if match.size == 0:
                break
            weight = (i + 1) / (self.blend_steps + 1)  # share of the new plan
            out[i] = (1.0 - weight) * old_actions[match[0]] + weight * chunk[i]
        return out

    def _threshold(self) -> int:
        if self.request_threshold is not None:
            return self.request_threshold
        latency = max(self._recent_latencies, default=0.0)
        return int(math.ceil(latency / self.period_s)) + 1

    def _plan_request(self, stamp: float) -> tuple[int, dict, float] | None:
        """``(request id, observation window, stamp)`` when the next chunk is due, else None.

        The request is counted (and the watchdog's wait starts) now; :meth:`_tick` submits it to
        the worker after the tick's command has gone out.
        """
        if self.worker.busy or self._queued() > self._threshold():
            return None
        request_id = self._next_request_id
        self._next_request_id += 1
        self._report.chunks_requested += 1
        if self._waiting_since is None:
            self._waiting_since = stamp
        return request_id, self.controller.observation_window(), stamp

    def _check_watchdog(self, tick_time: float) -> None:
        if self._watchdog_tripped or self._waiting_since is None:
            return
        waited = tick_time - self._waiting_since
        if waited > self.watchdog_s:
            self._watchdog_tripped = True
            self._report.watchdog_trips += 1
            self._drop_stale(tick_time, everything=True)
            self._event(tick_time, "watchdog", f"no fresh chunk for {waited:.2f} s (watchdog "
                        f"{self.watchdog_s:.2f} s): holding the last safe command")
