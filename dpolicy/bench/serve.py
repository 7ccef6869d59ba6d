"""`dpolicy bench serve`: round-trip latency and requests/s of `dpolicy serve` over loopback.

Starts ``dpolicy serve`` in its own process on a free loopback port and measures, from clients
in this process:

- ``ping``: the protocol round trip without a policy call;
- ``predict`` from one client: round trip p50/p99, the server's compute time, and the difference
  (transport + encoding overhead);
- ``predict`` from N concurrent clients (threads, one socket each): requests/s, mean number of
  requests stacked per policy call, round trip p50/p99.

Without ``--checkpoint`` the policy is found as in ``dpolicy bench realtime`` (a default run's
latest checkpoint, else an UNTRAINED CPU-recipe policy: the latency is the same).
"""

from __future__ import annotations

import argparse
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


def _start_server(checkpoint: Path, threads: int) -> tuple[subprocess.Popen, str]:
    address = f"tcp://127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "dpolicy", "serve", str(checkpoint), "--address", address,
               "--threads", str(threads)]
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


def run(args: argparse.Namespace) -> int:
    from dpolicy.bench.realtime import resolve_checkpoint
    from dpolicy.control.client import PolicyClient

    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        raise SystemExit(f"--clients must list positive integers, got {args.clients!r}")
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, trained = resolve_checkpoint(args.checkpoint, Path(scratch))
        process, address = _start_server(checkpoint, args.threads)
        try:
            with PolicyClient(address, timeout_s=180) as client:
                info = client.info()  # waits for the server to load the checkpoint
                sampler = f"{info.get('scheduler', '?')} x{info.get('num_inference_steps', '?')}"
                name = checkpoint if trained else "UNTRAINED CPU-recipe policy"
                print(f"server: {name} ({info['policy']}, {sampler}, {args.threads} torch thread(s)) "
                      f"at {address}")
                print("\n".join(_one_client(client, info, args.pings, args.requests)))
            for n in clients:
                f = _throughput(address, info, n, args.seconds)
                print(f"clients {n}: {f['requests_per_s']:.1f} requests/s, mean {f['mean_batch']:.2f} "
                      f"requests per policy call, round trip p50 {f['p50_ms']:.1f} ms, "
                      f"p99 {f['p99_ms']:.1f} ms ({f['requests']} requests in {args.seconds:g} s)")
        finally:
            print(_stop_server(process))
    return 0
