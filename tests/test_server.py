"""The policy server over loopback: concurrent clients, batching, rejections, authentication in the
ZeroMQ handshake, `dpolicy serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from test_export import one_torch_thread  # noqa: F401 (autouse fixture: 1 torch thread)

from dpolicy.control import server as server_module
from dpolicy.control.client import PLAIN_USERNAME, PolicyClient, PolicyServerError, decode_message, encode_message
from dpolicy.control.server import PolicyServer, is_local_address
from dpolicy.paths import REPO_ROOT

TOKEN = "correct horse battery staple"
LIMIT = 64 * 1024


class AffinePolicy:
    """Deterministic: action k of a chunk is (last obs[0] + k, last obs[1] * 2); logs its batch sizes."""

    n_obs_steps = 2
    n_action_steps = 4
    shape_meta = {"obs": {"obs": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [2]}}

    def __init__(self):
        self.batches: list[int] = []

    def predict_action(self, obs):
        x = np.asarray(obs["obs"], dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (2, 3):
            raise ValueError(f"obs must be (B, 2, 3), got {x.shape}")
        self.batches.append(x.shape[0])
        k = np.arange(self.n_action_steps, dtype=np.float32)
        last = x[:, -1]
        doubled = np.repeat(last[:, 1:2] * 2, self.n_action_steps, axis=1)
        action = np.stack([last[:, :1] + k, doubled], axis=-1)
        return {"action": action, "action_pred": action}


def expected_chunk(obs: np.ndarray) -> np.ndarray:
    last = obs[..., -1, :]
    k = np.arange(4, dtype=np.float32)
    return np.stack([last[..., :1] + k, np.repeat(last[..., 1:2] * 2, 4, axis=-1)], axis=-1)


@pytest.fixture
def server():
    srv = PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token=TOKEN, max_request_bytes=LIMIT)
    with srv.start():
        yield srv


def authenticate(sock: zmq.Socket, token: str | None = TOKEN) -> zmq.Socket:
    """Set a socket's PLAIN credentials, as PolicyClient does (before connecting)."""
    if token is not None:
        sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USERNAME.encode())
        sock.setsockopt(zmq.PLAIN_PASSWORD, token.encode())
    return sock


def _raw_request(address: str, frames: list[bytes], timeout_ms: int = 5000) -> tuple[dict, dict] | None:
    """Send raw frames from an authenticated DEALER socket; the decoded reply, or None when none came."""
    sock = authenticate(zmq.Context.instance().socket(zmq.DEALER))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return decode_message(sock.recv_multipart())
    finally:
        sock.close()


def _assert_still_serving(server):
    with PolicyClient(server.address, token=TOKEN, timeout_s=5) as client:
        obs = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(client.predict_action({"obs": obs})["action"], expected_chunk(obs))


def test_two_concurrent_clients_get_their_own_chunks(server):
    results, errors = {}, []

    def client_loop(cid: int):
        try:
            with PolicyClient(server.address, token=TOKEN, timeout_s=10) as client:
                for i in range(25):
                    obs = np.full((1, 2, 3), 100.0 * cid + i, dtype=np.float32)
                    results[(cid, i)] = (obs, client.predict_action({"obs": obs})["action"])
        except Exception as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client_loop, args=(cid,)) for cid in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 50
    for obs, action in results.values():
        np.testing.assert_array_equal(action, expected_chunk(obs))


def test_waiting_requests_are_stacked_into_one_policy_call():
    policy = AffinePolicy()
    with PolicyServer(policy, "inproc://batching") as srv:
        obs = [np.full((n, 2, 3), float(n), dtype=np.float32) for n in (1, 3)]
        messages = [[b"peer-a", *encode_message({"v": 1, "op": "predict", "id": 7}, {"obs": obs[0]})],
                    [b"peer-b", *encode_message({"v": 1, "op": "predict", "id": 8}, {"obs": obs[1]})],
                    [b"peer-c", *encode_message({"v": 1, "op": "predict", "id": 9}, {"obs": obs[1][0]})]]
        answers = srv.handle(messages)
    assert policy.batches == [5]  # one call for 1 + 3 + 1 (unbatched) observations
    peers, inputs = (b"peer-a", b"peer-b", b"peer-c"), (obs[0], obs[1], obs[1][0])
    for (envelope, frames), peer, x in zip(answers, peers, inputs, strict=True):
        assert envelope == [peer]
        header, arrays = decode_message(frames)
        assert header["ok"] and header["batched_with"] == 3
        np.testing.assert_array_equal(arrays["action"], expected_chunk(x))


@pytest.mark.parametrize("frames, reason", [
    ([b"\xff not json"], "JSON"),
    ([b"[1, 2]"], "object"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1,
                  "arrays": [{"name": "obs", "dtype": "<f4", "shape": [2, 3]}]}).encode()], "data frames"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1,
                  "arrays": [{"name": "obs", "dtype": "<c16", "shape": [1]}]}).encode(), b"x" * 16], "dtype"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1,
                  "arrays": [{"name": "obs", "dtype": "<f4", "shape": [2, 3]}]}).encode(), b"x" * 5],
     "bytes"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1,
                  "arrays": [{"name": "obs", "dtype": "<f4", "shape": [-1]}]}).encode(), b""], "shape"),
    (encode_message({"v": 1, "op": "launch", "id": 1}), "unknown op"),
    (encode_message({"v": 2, "op": "ping", "id": 1}), "version"),
    (encode_message({"v": 1, "op": "predict", "id": 1},
                    {"obs": np.zeros((2, 7), np.float32)}), "predict failed"),
    (encode_message({"v": 1, "op": "predict", "id": 1, "seed": 3},
                    {"obs": np.zeros((2, 3), np.float32)}), "seed"),
])
def test_malformed_requests_get_an_error_reply_and_the_server_keeps_serving(server, frames, reason):
    reply = _raw_request(server.address, frames)
    assert reply is not None
    header, _ = reply
    assert header["ok"] is False and reason in header["error"]
    _assert_still_serving(server)


def test_oversized_requests_are_rejected_and_the_server_keeps_serving(server):
    with PolicyClient(server.address, token=TOKEN, timeout_s=5) as client:
        with pytest.raises(PolicyServerError, match="request of 72.* bytes exceeds the server's limit of 65536 bytes"):
            client.predict_action({"obs": np.zeros((3000, 2, 3), np.float32)})  # 72 kB > 64 KiB: not even sent
        _assert_still_serving(server)
        # the server's own check: frames each under the limit, together over it, get an error reply
        header, _ = _raw_request(server.address, [*encode_message({"v": 1, "op": "predict", "id": 3}),
                                                  b"\0" * (LIMIT // 2), b"\0" * (LIMIT // 2)])
        assert header["ok"] is False and header["id"] == 3 and "exceeds the server's limit" in header["error"]
        # one frame over the limit (MAXMSGSIZE) is cut off by ZeroMQ: no reply, connection dropped
        assert _raw_request(server.address, [b"\0" * (LIMIT + 1)], timeout_ms=1000) is None
        _assert_still_serving(server)
        assert client.ping() > 0  # the client that saw its request refused still works
    with PolicyClient(server.address, token=TOKEN, timeout_s=1) as fresh:  # no info yet: it sends, gets no reply
        with pytest.raises(TimeoutError, match="no reply"):
            fresh.request("predict", {"obs": np.zeros((8000, 2, 3), np.float32)})
    _assert_still_serving(server)


@pytest.mark.parametrize("token, reason", [
    (None, "authentication failed: the server requires a token and this client has none"),
    ("wrong", "authentication failed: the server refused this client's token"),
])
def test_a_client_without_the_right_token_is_refused_in_the_handshake(server, token, reason, monkeypatch):
    monkeypatch.delenv("DPOLICY_SERVE_TOKEN", raising=False)
    with PolicyClient(server.address, token=token, timeout_s=20) as client:  # refused long before the timeout
        for _ in range(2):  # and again on the next request: ZeroMQ does not retry a refused handshake
            with pytest.raises(PolicyServerError, match=reason):
                client.info()
    assert server.n_requests == 0 and server.n_errors == 0  # nothing reached the server's Python code
    assert server.n_refused == (token is not None)  # a client with no token fails on the mechanism, earlier
    _assert_still_serving(server)
    assert server.n_requests == 2  # the good client's info and predict


def test_a_client_with_a_token_is_refused_by_a_server_without_one(monkeypatch):
    monkeypatch.delenv("DPOLICY_SERVE_TOKEN", raising=False)
    with PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*").start() as srv:
        with PolicyClient(srv.address, token=TOKEN, timeout_s=20) as client:
            with pytest.raises(PolicyServerError, match="this client has a token but the server takes none"):
                client.ping()
        monkeypatch.setenv("DPOLICY_SERVE_TOKEN", TOKEN)
        with PolicyClient(srv.address, token="", timeout_s=5) as client:  # "": no token, whatever the env says
            assert client.ping() > 0


def _zmtp_greeting(mechanism: bytes) -> bytes:
    """A ZMTP 3.0 greeting: signature, version, mechanism, as-server flag, filler (64 bytes)."""
    return b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + mechanism.ljust(20, b"\0") + b"\0" * 32


def _zmtp_frame(body: bytes, flags: int = 0) -> bytes:
    """A ZMTP long frame; flags 0x01: more frames follow, 0x04: a command."""
    return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body


def _zmtp_command(name: bytes, data: bytes) -> bytes:
    return _zmtp_frame(bytes([len(name)]) + name + data, flags=0x04)


def _many_frames() -> list[bytes]:
    """A predict header and 8 data frames, each under the request limit, together far over it."""
    return [*encode_message({"v": 1, "op": "predict", "id": 1}), *[b"\0" * (LIMIT - 1)] * 8]


def _raw_tcp_peer(address: str, payload: bytes, timeout_s: float = 10.0) -> float:
    """Send ``payload`` from a plain TCP socket; seconds until the server closed the connection."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
            while sock.recv(65536):  # the server's greeting (and an ERROR command), then the end
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {timeout_s} s")
    return time.monotonic() - start


def _message_bytes(frames: list[bytes]) -> bytes:
    return b"".join(_zmtp_frame(f, flags=0x01 if i < len(frames) - 1 else 0) for i, f in enumerate(frames))


HELLO_WRONG = _zmtp_command(b"HELLO", bytes([len(PLAIN_USERNAME)]) + PLAIN_USERNAME.encode() + b"\x05wrong")


@pytest.mark.parametrize("attack", ["no token", "wrong token", "raw: frames instead of HELLO",
                                    "raw: frames right after a wrong HELLO", "raw: NULL mechanism"])
def test_a_many_frame_message_from_an_unauthenticated_peer_never_reaches_the_server(server, attack):
    if attack in ("no token", "wrong token"):
        sock = authenticate(zmq.Context.instance().socket(zmq.DEALER), None if attack == "no token" else "wrong")
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        try:
            sock.connect(server.address)
            sock.send_multipart(_many_frames(), zmq.NOBLOCK, copy=False)
            assert monitor.poll(10_000, zmq.POLLIN), "the handshake was not refused"
            assert not sock.poll(500, zmq.POLLIN)  # and no reply comes
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close()
    else:
        payload = {"raw: frames instead of HELLO": _zmtp_greeting(b"PLAIN") + _message_bytes(_many_frames()),
                   "raw: frames right after a wrong HELLO": _zmtp_greeting(b"PLAIN") + HELLO_WRONG
                   + _message_bytes(_many_frames()),
                   "raw: NULL mechanism": _zmtp_greeting(b"NULL") + _zmtp_command(b"READY", b"")
                   + _message_bytes(_many_frames())}[attack]
        _raw_tcp_peer(server.address, payload)
    assert server.n_requests == 0 and server.n_errors == 0  # no message, no error reply: Python saw nothing
    if attack == "wrong token":  # the ZAP handler counts the refusal (its thread may lag the client's event)
        deadline = time.monotonic() + 5
        while server.n_refused == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.n_refused == 1
    else:  # a raw peer may be dropped by ZeroMQ before or after asking the handler
        assert server.n_refused <= 1
    _assert_still_serving(server)


@pytest.mark.parametrize("claimed", [LIMIT, LIMIT + 1])
def test_an_unfinished_handshake_is_dropped(monkeypatch, claimed):
    """A crafted peer may start a handshake frame of up to the limit and stall: ZeroMQ drops it after
    HANDSHAKE_TIMEOUT_S (at once when the frame claims more than the limit)."""
    monkeypatch.setattr(server_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    with PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token=TOKEN, max_request_bytes=LIMIT).start() as srv:
        stalled = bytes([0x06]) + struct.pack(">Q", claimed) + b"\0" * 1000  # a long command, 1000 bytes of it
        seconds = _raw_tcp_peer(srv.address, _zmtp_greeting(b"PLAIN") + stalled)
        assert seconds < 0.3 if claimed > LIMIT else 0.3 < seconds < 5
        assert srv.n_requests == 0
        _assert_still_serving(srv)


def test_a_token_needs_a_transport_zeromq_authenticates_and_a_context_of_its_own():
    with pytest.raises(ValueError, match="ZeroMQ authenticates tcp:// and ipc://"):
        PolicyServer(AffinePolicy(), "inproc://with-token", token=TOKEN)
    context = zmq.Context()
    try:
        with PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token=TOKEN, context=context) as srv:
            assert not srv._authenticated(zmq.Frame(b"{}"))  # the second check: no ZAP user id, refused
            with pytest.raises(ValueError, match="already has a ZAP handler"):
                PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token="other", context=context)
        # the first one released ZeroMQ's ZAP endpoint when it closed
        PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token="other", context=context).close()
    finally:
        context.term()


def test_the_server_refuses_to_listen_beyond_loopback_without_a_token():
    with pytest.raises(ValueError, match="token"):
        PolicyServer(AffinePolicy(), "tcp://0.0.0.0:5999")
    assert is_local_address("tcp://127.0.0.1:5555") and is_local_address("tcp://localhost:1")
    assert is_local_address("tcp://[::1]:5555") and is_local_address("ipc:///tmp/x")
    assert not is_local_address("tcp://*:5555") and not is_local_address("tcp://192.168.1.5:5555")
    with pytest.raises(ValueError, match="transport"):
        is_local_address("udp://127.0.0.1:5")


def test_info_describes_the_policy_and_the_client_plugs_into_the_controller(server):
    from dpolicy.control import ChunkController

    with PolicyClient(server.address, token=TOKEN, timeout_s=5) as client:
        info = client.info()
        assert info["n_obs_steps"] == 2 and info["n_action_steps"] == 4 and info["auth"] is True
        assert info["shape_meta"]["obs"]["obs"]["shape"] == [3]
        assert client.ping() > 0
        controller = ChunkController(client)
        controller.observe(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
        np.testing.assert_array_equal(controller.act(), [[1.0, 4.0]])


def test_client_times_out_when_no_server_answers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=0.3) as client:
        with pytest.raises(TimeoutError, match="dpolicy serve"):
            client.ping()


def test_a_diffusion_policy_over_the_wire_equals_the_local_call_with_the_same_seed(make_tiny_diffusion_policy):
    import torch

    policy = make_tiny_diffusion_policy(horizon=8, n_action_steps=4, scheduler="ddpm", steps=5)
    obs = {"obs": np.random.default_rng(1).uniform(0, 512, (3, 2, 20)).astype(np.float32)}
    with PolicyServer(policy, "tcp://127.0.0.1:*").start() as srv, PolicyClient(srv.address, token="") as client:
        remote = client.predict_action(obs, seed=11)
        info = client.info()
    local = policy.predict_action(obs, generator=torch.Generator().manual_seed(11))
    # The serving thread may use another intra-op thread count than this one (torch's setting is
    # per thread), which reorders float sums: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(remote["action"], local["action"].numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(remote["action_pred"], local["action_pred"].numpy(), rtol=0, atol=1e-3)
    assert info["scheduler"] == "ddpm" and info["num_inference_steps"] == 5


def test_serve_command_answers_and_stops_cleanly_on_sigint(tmp_path):
    from dpolicy.bench.realtime import untrained_checkpoint

    checkpoint = untrained_checkpoint(tmp_path / "tiny.safetensors", overrides=(
        "policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.num_inference_steps=2"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DPOLICY_SERVE_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "dpolicy", "serve", str(checkpoint), "--address", address,
                             "--threads", "1"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with PolicyClient(address, token="", timeout_s=60) as client:
            info = client.info()
            out = client.predict_action({"obs": np.full((2, 20), 256.0, np.float32)})
        assert info["n_obs_steps"] == 2 and info["checkpoint"] == str(checkpoint)
        assert out["action"].shape == (10, 2) and np.all(np.isfinite(out["action"]))  # the default Ta 10
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "serving" in output and "stopped after 2 requests" in output


def test_serve_command_checks_token_and_address_before_loading(tmp_path, monkeypatch):
    import argparse

    from dpolicy.commands import serve as serve_cmd

    monkeypatch.delenv("DPOLICY_SERVE_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    serve_cmd.configure(parser)
    public = parser.parse_args([str(tmp_path / "missing.safetensors"), "--address", "tcp://0.0.0.0:5999"])
    with pytest.raises(ValueError, match="without a token"):
        serve_cmd.run(public)
    no_file = parser.parse_args([str(tmp_path / "missing.safetensors"), "--token-file", str(tmp_path / "none.txt")])
    with pytest.raises(FileNotFoundError, match="token file"):
        serve_cmd.run(no_file)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        serve_cmd.read_token(tmp_path / "empty.txt")
    monkeypatch.setenv("DPOLICY_SERVE_TOKEN", "from-env")
    assert serve_cmd.read_token(None) == "from-env"
