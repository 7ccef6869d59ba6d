"""The policy server over loopback: concurrent clients, batching, rejections, auth, `dpolicy serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import zmq
from test_export import one_torch_thread  # noqa: F401 (autouse fixture: 1 torch thread)

from dpolicy.control.client import PolicyClient, PolicyServerError, decode_message, encode_message
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


def _raw_request(address: str, frames: list[bytes], timeout_ms: int = 5000) -> tuple[dict, dict] | None:
    """Send raw frames from a DEALER socket; the decoded reply, or None when none came."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
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
    ([json.dumps({"v": 1, "op": "predict", "id": 1, "token": TOKEN,
                  "arrays": [{"name": "obs", "dtype": "<f4", "shape": [2, 3]}]}).encode()], "data frames"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1, "token": TOKEN,
                  "arrays": [{"name": "obs", "dtype": "<c16", "shape": [1]}]}).encode(), b"x" * 16], "dtype"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1, "token": TOKEN,
                  "arrays": [{"name": "obs", "dtype": "<f4", "shape": [2, 3]}]}).encode(), b"x" * 5],
     "bytes"),
    ([json.dumps({"v": 1, "op": "predict", "id": 1, "token": TOKEN,
                  "arrays": [{"name": "obs", "dtype": "<f4", "shape": [-1]}]}).encode(), b""], "shape"),
    (encode_message({"v": 1, "op": "launch", "id": 1, "token": TOKEN}), "unknown op"),
    (encode_message({"v": 2, "op": "ping", "id": 1, "token": TOKEN}), "version"),
    (encode_message({"v": 1, "op": "predict", "id": 1, "token": TOKEN},
                    {"obs": np.zeros((2, 7), np.float32)}), "predict failed"),
    (encode_message({"v": 1, "op": "predict", "id": 1, "token": TOKEN, "seed": 3},
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
        with pytest.raises(PolicyServerError, match="exceeds"):
            client.predict_action({"obs": np.zeros((3000, 2, 3), np.float32)})  # 72 kB > 64 KiB
    _assert_still_serving(server)
    # a frame over twice the limit is cut off by ZeroMQ: no reply, connection dropped
    with PolicyClient(server.address, token=TOKEN, timeout_s=1) as client:
        with pytest.raises(TimeoutError, match="no reply"):
            client.predict_action({"obs": np.zeros((8000, 2, 3), np.float32)})
    _assert_still_serving(server)


@pytest.mark.parametrize("token", [None, "wrong"])
def test_unauthenticated_requests_are_rejected(server, token, monkeypatch):
    monkeypatch.delenv("DPOLICY_SERVE_TOKEN", raising=False)
    with PolicyClient(server.address, token=token, timeout_s=5) as client:
        with pytest.raises(PolicyServerError, match="unauthorized"):
            client.info()
    _assert_still_serving(server)


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
    with PolicyServer(policy, "tcp://127.0.0.1:*").start() as srv, PolicyClient(srv.address) as client:
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
        with PolicyClient(address, timeout_s=60) as client:
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
