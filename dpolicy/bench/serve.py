"""`dpolicy bench serve`: round-trip latency and requests/s of `dpolicy serve` over loopback.

Starts ``dpolicy serve`` in its own process on a free loopback port and measures, from clients
in this process:

- ``ping``: the protocol round trip without a policy call;
- ``predict`` from one client: round trip p50/p99, the server's compute time, and the difference
  (transport + encoding overhead);
- ``predict`` from N concurrent clients (threads, one socket each): requests/s, mean number of
  requests stacked per policy call, round trip p50/p99;
- ``memory``: the server process's resident memory (``/proc/PID/status``: VmRSS idle, VmHWM
  peak) while ``--attack-clients`` clients send many-frame messages over the request limit, each
  frame just under ZeroMQ's per-frame cap (twice the request limit), against that limit;
- ``fairness``: ping round trips (p50/p99/max) from one client while another sends the largest
  allowed predict request (``--max-windows`` windows) back to back.

``--modes`` picks among ``latency`` (the first three), ``memory`` and ``fairness``.

Without ``--checkpoint`` the policy is found as in ``dpolicy bench realtime`` (a default run's
latest checkpoint, else an UNTRAINED CPU-recipe policy: the latency is the same).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dpolicy.paths import REPO_ROOT


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="policy checkpoint (default: see above)")
    parser.add_argument("--pings", type=int, default=1000, help="ping round trips timed")
    parser.add_argument("--requests", type=int, default=200, help="predict round trips timed from one client")
    parser.add_argument("--clients", default="1,2,4", help="concurrent client counts for the throughput runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the server (default 1)")
    parser.add_argument("--modes", default=",".join(MODES), help="what to measure, comma-separated, of "
                        f"{', '.join(MODES)} (default all)")
    parser.add_argument("--max-request-mb", type=float, default=None,
                        help="the server's --max-request-mb (default: the server's default)")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="the server's --max-windows (default: the server's default)")
    parser.add_argument("--attack-clients", type=int, default=4, help="memory: concurrent attacking clients")
    parser.add_argument("--attack-frames", default="1,8",
                        help="memory: data frames per attack message, one run per entry (default 1,8)")
    parser.add_argument("--attack-messages", type=int, default=4, help="memory: messages sent per client")
    parser.add_argument("--attack-seconds", type=float, default=60.0, help="memory: time limit of each run")
    parser.add_argument("--fairness-pings", type=int, default=200, help="fairness: pings timed")


MODES = ("latency", "memory", "fairness")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _random_observation(info: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One (To, ...) observation window in env units for the served policy's spec."""
    obs = {}
    for key, item in info["shape_meta"]["obs"].items():
        shape = (info["n_obs_steps"], *item["shape"])
        if item.get("type") == "rgb":
            obs[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            obs[key] = rng.uniform(0.0, 512.0, shape).astype(np.float32)
    return obs


def _ms(values, q) -> float:
    return float(np.percentile(values, q) * 1000.0)


def _throughput(address: str, info: dict, n_clients: int, seconds: float) -> dict:
    from dpolicy.control.client import PolicyClient

    stop = time.monotonic() + seconds
    round_trips: list[float] = []
    batched: list[int] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        rng = np.random.default_rng(index)
        mine, sizes = [], []
        try:
            with PolicyClient(address, timeout_s=120) as client:
                while time.monotonic() < stop:
                    obs = _random_observation(info, rng)
                    start = time.perf_counter()
                    header, _ = client.request("predict", obs)
                    mine.append(time.perf_counter() - start)
                    sizes.append(int(header["batched_with"]))
        except Exception as exc:  # reported by the caller
            errors.append(exc)
        with lock:
            round_trips.extend(mine)
            batched.extend(sizes)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(n_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return {"clients": n_clients, "requests": len(round_trips), "requests_per_s": len(round_trips) / wall,
            "mean_batch": float(np.mean(batched)), "p50_ms": _ms(round_trips, 50),
            "p99_ms": _ms(round_trips, 99)}


def _start_server(checkpoint: Path, threads: int, options: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    address = f"tcp://127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "dpolicy", "serve", str(checkpoint), "--address", address,
               "--threads", str(threads), *options]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    return process, address


def _stop_server(process: subprocess.Popen) -> str:
    """SIGINT (a clean shutdown), then the server's last output line."""
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    lines = [line for line in output.splitlines() if line.strip()]
    return f"server exit {process.returncode}: {lines[-1] if lines else '(no output)'}"


def _one_client(client, info: dict, n_pings: int, n_requests: int) -> list[str]:
    pings = [client.ping() for _ in range(n_pings)]
    lines = [f"ping      round trip p50 {_ms(pings, 50):.3f} ms, p99 {_ms(pings, 99):.3f} ms "
             f"({n_pings} requests)"]
    rng = np.random.default_rng(0)
    for _ in range(3):  # warm-up
        client.request("predict", _random_observation(info, rng))
    trips, compute = [], []
    for _ in range(n_requests):
        obs = _random_observation(info, rng)
        start = time.perf_counter()
        header, _ = client.request("predict", obs)
        trips.append(time.perf_counter() - start)
        compute.append(header["compute_ms"] / 1000.0)
    extra = np.array(trips) - np.array(compute)
    lines.append(f"predict   round trip p50 {_ms(trips, 50):.2f} ms, p99 {_ms(trips, 99):.2f} ms; "
                 f"server compute p50 {_ms(compute, 50):.2f} ms; overhead p50 {_ms(extra, 50):.3f} ms, "
                 f"p99 {_ms(extra, 99):.3f} ms ({n_requests} requests, 1 client)")
    return lines


def _status_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak resident memory) of process ``pid``, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024.0  # kB
    return out


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: ``5`` into clear_refs); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memory_attack(address: str, pid: int, limit: int, n_clients: int, n_frames: int, n_messages: int,
                   seconds: float) -> dict:
    """``n_clients`` DEALERs each send ``n_messages`` messages (a predict header + ``n_frames`` frames just
    under the per-frame cap) without waiting, then collect the replies; the server's RSS meanwhile."""
    import zmq

    frame = bytes(2 * limit - 1024)  # one buffer, sent without copies by every client
    idle = _status_mib(pid)["VmRSS"]
    reset = _reset_peak(pid)
    sampled = [idle]
    stop = threading.Event()

    def sample() -> None:  # the fallback when VmHWM cannot be reset; bounded by the attack's deadline
        while not stop.wait(0.01):
            sampled.append(_status_mib(pid)["VmRSS"])

    deadline = time.monotonic() + seconds
    replies: list[dict] = []
    lock = threading.Lock()

    def attack(index: int) -> None:
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        got = []
        try:
            for i in range(n_messages):
                header = json.dumps({"v": 1, "op": "predict", "id": index * 1000 + i,
                                     "arrays": [{"name": "obs", "dtype": "|u1", "shape": [len(frame)]}]})
                sock.send_multipart([header.encode(), *[frame] * n_frames], copy=False)
            while len(got) < n_messages:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sock.poll(int(remaining * 1000), zmq.POLLIN):
                    break
                got.append(json.loads(sock.recv_multipart()[0]))
        finally:
            sock.close()
            with lock:
                replies.extend(got)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=attack, args=(i,)) for i in range(n_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    status = _status_mib(pid)
    peak = max(status["VmHWM"], max(sampled)) if reset else max(sampled)
    errors = sorted({r.get("error", "ok") for r in replies})
    return {"idle_mib": idle, "peak_mib": peak, "after_mib": status["VmRSS"], "peak_from": "VmHWM" if reset
            else "VmRSS sampled every 10 ms", "sent": n_clients * n_messages, "replies": len(replies),
            "refused": sum(not r.get("ok", False) for r in replies), "errors": errors,
            "message_mib": (n_frames * len(frame)) / 2**20, "frame_mib": len(frame) / 2**20, "wall_s": wall}


def _first_error(errors: list[str]) -> str:
    if not errors:
        return "no replies"
    return errors[0] + (f"; {len(errors) - 1} more alike" if len(errors) > 1 else "")


def _memory_lines(address: str, pid: int, info: dict, args: argparse.Namespace) -> list[str]:
    from dpolicy.control.client import PolicyClient
    from dpolicy.control.server import RECEIVE_HWM

    limit = int(info["max_request_bytes"])
    lines = []
    for n_frames in [int(f) for f in args.attack_frames.split(",") if f.strip()]:
        f = _memory_attack(address, pid, limit, args.attack_clients, n_frames, args.attack_messages,
                           args.attack_seconds)
        growth = f["peak_mib"] - f["idle_mib"]
        held = args.attack_clients * (RECEIVE_HWM + 1) * f["message_mib"]
        with PolicyClient(address, timeout_s=60) as client:
            client.ping()  # still serving
        lines.append(
            f"memory    {args.attack_clients} clients x {args.attack_messages} messages of 1 header + {n_frames} "
            f"frame(s) of {f['frame_mib']:.2f} MiB ({f['message_mib']:.1f} MiB each; request limit "
            f"{limit / 2**20:g} MiB): server RSS idle {f['idle_mib']:.0f} MiB, peak {f['peak_mib']:.0f} MiB "
            f"({f['peak_from']}), growth {growth:.0f} MiB = {growth * 2**20 / limit:.1f}x the request limit "
            f"(ZeroMQ may hold {args.attack_clients} x {RECEIVE_HWM + 1} whole messages = {held:.0f} MiB); "
            f"RSS after {f['after_mib']:.0f} MiB; {f['refused']}/{f['sent']} refused "
            f"({_first_error(f['errors'])}), {f['sent'] - f['replies']} unanswered, {f['wall_s']:.1f} s; "
            "still serving")
    return lines


def _fairness_lines(address: str, info: dict, n_pings: int) -> list[str]:
    from dpolicy.control.client import PolicyClient

    windows = int(info["max_windows"])
    rng = np.random.default_rng(0)
    windows_obs = [_random_observation(info, rng) for _ in range(windows)]
    obs = {key: np.stack([w[key] for w in windows_obs]) for key in windows_obs[0]}
    stop, started = threading.Event(), threading.Event()
    trips, compute, errors = [], [], []

    def heavy() -> None:
        try:
            with PolicyClient(address, timeout_s=300) as client:
                for _ in range(100_000):  # bounded; stops when the pings are done
                    if stop.is_set():
                        break
                    begin = time.perf_counter()
                    header, _ = client.request("predict", obs)
                    trips.append(time.perf_counter() - begin)
                    compute.append(header["compute_ms"] / 1000.0)
                    started.set()
        except Exception as exc:  # reported below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=heavy)
    thread.start()
    try:
        started.wait(300)
        with PolicyClient(address, timeout_s=300) as client:
            pings = [client.ping() for _ in range(n_pings)]
    finally:
        stop.set()
        thread.join()
    if errors:
        raise RuntimeError(f"the predicting client failed: {errors[0]}")
    return [f"fairness  ping round trip p50 {_ms(pings, 50):.1f} ms, p99 {_ms(pings, 99):.1f} ms, max "
            f"{_ms(pings, 100):.1f} ms ({n_pings} pings) while another client sent {len(trips)} predicts of "
            f"{windows} windows (the largest allowed) back to back: their round trip p50 {_ms(trips, 50):.1f} ms, "
            f"server compute p50 {_ms(compute, 50):.1f} ms, max {_ms(compute, 100):.1f} ms"]


def run(args: argparse.Namespace) -> int:
    from dpolicy.bench.realtime import resolve_checkpoint
    from dpolicy.control.client import PolicyClient
    from dpolicy.errors import UsageError

    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        raise UsageError(f"--clients must list positive integers, got {args.clients!r}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        raise UsageError(f"--modes must list some of {', '.join(MODES)}, got {args.modes!r}")
    try:
        frames = [int(f) for f in args.attack_frames.split(",") if f.strip()]
    except ValueError:
        frames = []
    if "memory" in modes and (not frames or min(frames) < 1 or args.attack_clients < 1 or args.attack_messages < 1):
        raise UsageError("--attack-frames must list positive integers and --attack-clients, --attack-messages "
                         "be >= 1")
    options: list[str] = []
    if args.max_request_mb is not None:
        options += ["--max-request-mb", str(args.max_request_mb)]
    if args.max_windows is not None:
        options += ["--max-windows", str(args.max_windows)]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, trained = resolve_checkpoint(args.checkpoint, Path(scratch))
        process, address = _start_server(checkpoint, args.threads, tuple(options))
        try:
            with PolicyClient(address, timeout_s=180) as client:
                info = client.info()  # waits for the server to load the checkpoint
                sampler = f"{info.get('scheduler', '?')} x{info.get('num_inference_steps', '?')}"
                name = checkpoint if trained else "UNTRAINED CPU-recipe policy"
                print(f"server: {name} ({info['policy']}, {sampler}, {args.threads} torch thread(s)) "
                      f"at {address}; limits per request {info['max_request_bytes'] / 2**20:g} MiB, "
                      f"{info['max_frames']} frames, {info['max_windows']} windows", flush=True)
                if "latency" in modes:
                    print("\n".join(_one_client(client, info, args.pings, args.requests)), flush=True)
                else:
                    client.request("predict", _random_observation(info, np.random.default_rng(0)))  # warm-up
            if "latency" in modes:
                for n in clients:
                    f = _throughput(address, info, n, args.seconds)
                    print(f"clients {n}: {f['requests_per_s']:.1f} requests/s, mean {f['mean_batch']:.2f} "
                          f"requests per policy call, round trip p50 {f['p50_ms']:.1f} ms, "
                          f"p99 {f['p99_ms']:.1f} ms ({f['requests']} requests in {args.seconds:g} s)", flush=True)
            if "fairness" in modes:
                print("\n".join(_fairness_lines(address, info, args.fairness_pings)), flush=True)
            if "memory" in modes:
                print("\n".join(_memory_lines(address, process.pid, info, args)), flush=True)
        finally:
            print(_stop_server(process))
    return 0
