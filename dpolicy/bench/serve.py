"""`dpolicy bench serve`: round-trip latency and requests/s of `dpolicy serve` over loopback.

Starts ``dpolicy serve`` in its own process on a free loopback port (without a token) and
measures, from clients in this process:

- ``ping``: the protocol round trip without a policy call;
- ``predict`` from one client: round trip p50/p99, the server's compute time, and the difference
  (transport + encoding overhead);
- ``predict`` from N concurrent clients (threads, one socket each): requests/s, mean number of
  requests stacked per policy call, round trip p50/p99;
- ``fairness``: ping round trips (p50/p99/max) from one client while another sends the largest
  allowed predict request (``--max-windows`` windows) back to back;
- ``memory``: the server process's resident memory (``/proc/PID/status``: VmRSS idle, VmHWM
  peak) while ``--attack-clients`` clients send many-frame messages over the request limit, each
  frame at ZeroMQ's per-frame cap (the request limit):

  - against the server without a token (any local process may connect): what a peer that may
    connect can make ZeroMQ hold;
  - against a second server, started with a token, from clients without it (none, or a wrong
    one; each opens ``--attack-messages`` connections): ZeroMQ refuses their handshakes and
    holds none of their messages;
  - against that server, from plain TCP peers that send a PLAIN greeting and all but one byte
    of a handshake frame of the cap's size, then stall: what a crafted peer without the token
    can make ZeroMQ hold, per connection, until it drops the unfinished handshake.

``--modes`` picks among ``latency`` (the first three), ``memory`` and ``fairness``.

Without ``--checkpoint`` the policy is found as in ``dpolicy bench realtime`` (a default run's
latest checkpoint, else an UNTRAINED CPU-recipe policy: the latency is the same). The checkpoint
is read and checked here first, so that a bad one fails at once, not in the server process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import struct
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
            with PolicyClient(address, token="", timeout_s=120) as client:
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
    """``dpolicy serve`` in its own process; without ``--token-file`` in ``options``, without a token
    (``DPOLICY_SERVE_TOKEN`` is not passed on)."""
    from dpolicy.control.client import TOKEN_ENV

    address = f"tcp://127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "dpolicy", "serve", str(checkpoint), "--address", address,
               "--threads", str(threads), *options]
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    return process, address


def _wait_for_server(process: subprocess.Popen, address: str, token: str = "", timeout_s: float = 180.0) -> dict:
    """The server's info, once it has loaded the checkpoint; RuntimeError at once if the process exits."""
    from dpolicy.control.client import PolicyClient

    deadline = time.monotonic() + timeout_s
    with PolicyClient(address, token=token, timeout_s=1.0) as client:
        while True:
            try:
                return client.info()
            except TimeoutError:
                if process.poll() is not None:
                    output = process.stdout.read() if process.stdout else ""
                    lines = [line for line in output.splitlines() if line.strip()]
                    raise RuntimeError(f"the server exited with code {process.returncode} before answering: "
                                       f"{lines[-1] if lines else '(no output)'}") from None
                if time.monotonic() > deadline:
                    raise


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


class _Watch:
    """The resident memory of process ``pid`` from :meth:`start` to :meth:`stop`: idle, peak, after (MiB).
    The peak is VmHWM when it can be reset, else VmRSS sampled every 10 ms."""

    def __init__(self, pid: int):
        self.pid = pid
        self.idle = _status_mib(pid)["VmRSS"]
        self.reset = _reset_peak(pid)
        self.sampled = [self.idle]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:  # bounded: the caller stops it when its attack ends
        while not self._stop.wait(0.01):
            self.sampled.append(_status_mib(self.pid)["VmRSS"])

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        status = _status_mib(self.pid)
        peak = max(status["VmHWM"], max(self.sampled)) if self.reset else max(self.sampled)
        return {"idle_mib": self.idle, "peak_mib": peak, "after_mib": status["VmRSS"],
                "peak_from": "VmHWM" if self.reset else "VmRSS sampled every 10 ms"}


def _attack_message(limit: int, n_frames: int, request_id: int) -> list:
    """A predict header + ``n_frames`` frames at the per-frame cap (one buffer, sent without copies)."""
    frame = _ATTACK_FRAMES.setdefault(limit, bytes(limit))
    header = json.dumps({"v": 1, "op": "predict", "id": request_id,
                         "arrays": [{"name": "obs", "dtype": "|u1", "shape": [len(frame)]}]})
    return [header.encode(), *[frame] * n_frames]


_ATTACK_FRAMES: dict[int, bytes] = {}


def _memory_attack(address: str, pid: int, limit: int, n_clients: int, n_frames: int, n_messages: int,
                   seconds: float) -> dict:
    """``n_clients`` DEALERs each send ``n_messages`` messages (a predict header + ``n_frames`` frames at
    the per-frame cap) without waiting, then collect the replies; the server's RSS meanwhile."""
    import zmq

    deadline = time.monotonic() + seconds
    replies: list[dict] = []
    lock = threading.Lock()

    def attack(index: int) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        got = []
        try:
            for i in range(n_messages):
                sock.send_multipart(_attack_message(limit, n_frames, index * 1000 + i), copy=False)
            while len(got) < n_messages:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sock.poll(int(remaining * 1000), zmq.POLLIN):
                    break
                got.append(json.loads(sock.recv_multipart()[0]))
        finally:
            sock.close()
            with lock:
                replies.extend(got)

    watch = _Watch(pid)
    wall = _run_threads(attack, n_clients)
    errors = sorted({r.get("error", "ok") for r in replies})
    return {**watch.stop(), "sent": n_clients * n_messages, "replies": len(replies),
            "refused": sum(not r.get("ok", False) for r in replies), "errors": errors,
            "message_mib": n_frames * limit / 2**20, "frame_mib": limit / 2**20, "wall_s": wall}


def _run_threads(target, n: int) -> float:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def _unauthenticated_attack(address: str, pid: int, limit: int, n_clients: int, n_frames: int, n_connections: int,
                            seconds: float, token: str | None) -> dict:
    """``n_clients`` threads each open ``n_connections`` DEALERs in turn with ``token`` (None: no token),
    each sending one many-frame message; counts the handshakes refused and the replies (expected: none)."""
    import zmq

    deadline = time.monotonic() + seconds
    counts = {"refused": 0, "replies": 0, "connections": 0}
    lock = threading.Lock()

    def attack(index: int) -> None:
        from dpolicy.control.client import PLAIN_USERNAME

        for i in range(n_connections):
            if time.monotonic() > deadline:
                return
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if token is not None:
                sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USERNAME.encode())
                sock.setsockopt(zmq.PLAIN_PASSWORD, token.encode())
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            try:
                sock.connect(address)
                try:
                    sock.send_multipart(_attack_message(limit, n_frames, index * 1000 + i), zmq.NOBLOCK, copy=False)
                except zmq.Again:  # no connection to queue it on (yet): the handshake decides
                    pass
                wait_ms = int(max(0.0, min(2.0, deadline - time.monotonic())) * 1000)
                refused = bool(monitor.poll(wait_ms, zmq.POLLIN))
                replied = bool(sock.poll(100, zmq.POLLIN))
            finally:
                sock.disable_monitor()
                monitor.close(linger=0)
                sock.close()
            with lock:
                counts["connections"] += 1
                counts["refused"] += refused
                counts["replies"] += replied

    watch = _Watch(pid)
    wall = _run_threads(attack, n_clients)
    return {**watch.stop(), **counts, "message_mib": n_frames * limit / 2**20, "wall_s": wall}


def _handshake_attack(address: str, pid: int, limit: int, n_clients: int, seconds: float) -> dict:
    """``n_clients`` plain TCP peers each send a ZMTP greeting for PLAIN and all but the last byte of a
    handshake frame of ``limit`` bytes, then wait (at most ``seconds``) for the server to drop them."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"PLAIN".ljust(20, b"\0") + b"\0" * 32
    stalled = greeting + bytes([0x06]) + struct.pack(">Q", limit) + bytes(limit - 1)  # a long command frame
    deadline = time.monotonic() + seconds
    watch = _Watch(pid)
    peers: list[socket.socket] = []
    dropped: list[float] = []
    start = time.monotonic()
    try:
        for _ in range(n_clients):
            peer = socket.create_connection((host, int(port)), timeout=seconds)
            peers.append(peer)
            peer.sendall(stalled)
        sent = time.monotonic()
        for peer in peers:
            peer.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                while peer.recv(65536):  # the server's greeting, then the end when it drops the connection
                    pass
                dropped.append(time.monotonic() - sent)
            except ConnectionResetError:
                dropped.append(time.monotonic() - sent)
            except TimeoutError:
                pass
    finally:
        for peer in peers:
            peer.close()
    return {**watch.stop(), "dropped": len(dropped), "connections": n_clients,
            "dropped_after_s": max(dropped) if dropped else None, "frame_mib": limit / 2**20,
            "wall_s": time.monotonic() - start}


def _first_error(errors: list[str]) -> str:
    if not errors:
        return "no replies"
    return errors[0] + (f"; {len(errors) - 1} more alike" if len(errors) > 1 else "")


def _growth(f: dict, limit: int) -> str:
    growth = f["peak_mib"] - f["idle_mib"]
    return (f"server RSS idle {f['idle_mib']:.0f} MiB, peak {f['peak_mib']:.0f} MiB ({f['peak_from']}), growth "
            f"{growth:.0f} MiB = {growth * 2**20 / limit:.1f}x the request limit; RSS after {f['after_mib']:.0f} MiB")


def _memory_lines(address: str, pid: int, info: dict, args: argparse.Namespace) -> list[str]:
    """The attacks on the server without a token (what any peer that may connect can do)."""
    from dpolicy.control.client import PolicyClient
    from dpolicy.control.server import RECEIVE_HWM

    limit = int(info["max_request_bytes"])
    lines = []
    for n_frames in [int(f) for f in args.attack_frames.split(",") if f.strip()]:
        f = _memory_attack(address, pid, limit, args.attack_clients, n_frames, args.attack_messages,
                           args.attack_seconds)
        held = args.attack_clients * (RECEIVE_HWM + 1) * f["message_mib"]
        with PolicyClient(address, token="", timeout_s=60) as client:
            client.ping()  # still serving
        lines.append(
            f"memory    no token (loopback; any local process may connect): {args.attack_clients} clients x "
            f"{args.attack_messages} messages of 1 header + {n_frames} frame(s) of {f['frame_mib']:.2f} MiB "
            f"({f['message_mib']:.1f} MiB each; request limit {limit / 2**20:g} MiB): {_growth(f, limit)} (ZeroMQ "
            f"may hold {args.attack_clients} x {RECEIVE_HWM + 1} whole messages = {held:.0f} MiB); "
            f"{f['refused']}/{f['sent']} refused ({_first_error(f['errors'])}), {f['sent'] - f['replies']} "
            f"unanswered, {f['wall_s']:.1f} s; still serving")
    return lines


def _token_memory_lines(checkpoint: Path, options: tuple[str, ...], args: argparse.Namespace,
                        scratch: Path) -> None:
    """The attacks on a second server, started with a token, by peers without it (printed as they end)."""
    from dpolicy.control.client import PolicyClient
    from dpolicy.control.server import HANDSHAKE_TIMEOUT_S

    token = secrets.token_hex(16)
    token_file = scratch / "token.txt"
    token_file.write_text(token)
    process, address = _start_server(checkpoint, args.threads, (*options, "--token-file", str(token_file)))
    try:
        info = _wait_for_server(process, address, token)
        limit = int(info["max_request_bytes"])
        n_frames = max(int(f) for f in args.attack_frames.split(",") if f.strip())
        for label, attacker_token in (("no token", None), ("a wrong token", "wrong-" + token)):
            f = _unauthenticated_attack(address, process.pid, limit, args.attack_clients, n_frames,
                                        args.attack_messages, min(args.attack_seconds, 30.0), attacker_token)
            with PolicyClient(address, token=token, timeout_s=60) as client:
                client.ping()
            print(
                f"memory    token set, clients with {label}: {args.attack_clients} clients x "
                f"{f['connections'] // args.attack_clients} connections, each sending 1 header + {n_frames} frames "
                f"of {limit / 2**20:.2f} MiB "
                f"({f['message_mib']:.1f} MiB): {_growth(f, limit)}; {f['refused']}/{f['connections']} handshakes "
                f"refused, {f['replies']} replies, {f['wall_s']:.1f} s; still serving", flush=True)
        f = _handshake_attack(address, process.pid, limit, args.attack_clients, HANDSHAKE_TIMEOUT_S + 10.0)
        dropped = (f"the server dropped {f['dropped']}/{f['connections']} after {f['dropped_after_s']:.1f} s "
                   f"(HANDSHAKE_IVL {HANDSHAKE_TIMEOUT_S:g} s)" if f["dropped"] else
                   f"the server dropped none within {f['wall_s']:.0f} s")
        with PolicyClient(address, token=token, timeout_s=60) as client:
            client.ping()
        print(
            f"memory    token set, raw TCP peers stalling in the handshake: {f['connections']} connections, each a "
            f"PLAIN greeting and {f['frame_mib']:.2f} MiB - 1 byte of a handshake frame: {_growth(f, limit)}; "
            f"{dropped}; still serving", flush=True)
    finally:
        print("token " + _stop_server(process), flush=True)


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
            with PolicyClient(address, token="", timeout_s=300) as client:
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
        with PolicyClient(address, token="", timeout_s=300) as client:
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
    from dpolicy.training.checkpoint import load_policy

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
        load_policy(checkpoint, device="cpu")  # a bad file fails here, with its CheckpointError, not in the server
        process, address = _start_server(checkpoint, args.threads, tuple(options))
        try:
            info = _wait_for_server(process, address)  # waits for the server to load the checkpoint
            with PolicyClient(address, token="", timeout_s=180) as client:
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
        if "memory" in modes:
            _token_memory_lines(checkpoint, tuple(options), args, Path(scratch))
    return 0
