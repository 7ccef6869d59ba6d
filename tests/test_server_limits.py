"""The policy server's limits: non-finite observations, window and frame caps, per-client queue,
fairness between a large request and a ping, and the client's checks on the replies it gets."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import zmq
from test_server import TOKEN, AffinePolicy, authenticate, expected_chunk

from dpolicy.control.client import (
    PolicyClient,
    PolicyServerError,
    ProtocolError,
    decode_message,
    encode_message,
)
from dpolicy.control.server import MAX_QUEUED_PER_CLIENT, PolicyServer
from dpolicy.errors import UsageError

LIMIT = 64 * 1024


@pytest.fixture
def server():
    srv = PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token=TOKEN, max_request_bytes=LIMIT, max_windows=8)
    with srv.start():
        yield srv


def _raw_request(address: str, frames: list[bytes], socket_type: int = zmq.DEALER) -> dict:
    """Send raw frames from an authenticated socket, return the decoded reply header (fails the test
    when none comes)."""
    sock = authenticate(zmq.Context.instance().socket(socket_type))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(frames)
        assert sock.poll(10_000, zmq.POLLIN), "no reply from the server"
        return decode_message(sock.recv_multipart())[0]
    finally:
        sock.close()


def _predict_frames(obs: np.ndarray, request_id: int = 1, **fields) -> list[bytes]:
    return encode_message({"v": 1, "op": "predict", "id": request_id, **fields}, {"obs": obs})


def _assert_still_serving(srv: PolicyServer) -> None:
    with PolicyClient(srv.address, token=TOKEN, timeout_s=10) as client:
        obs = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(client.predict_action({"obs": obs})["action"], expected_chunk(obs))


# ---------------------------------------------------------------------- observations and windows
@pytest.mark.parametrize("bad, counts", [(np.nan, "1 NaN and 0 inf"), (np.inf, "0 NaN and 1 inf"),
                                         (-np.inf, "0 NaN and 1 inf")])
def test_non_finite_observations_are_refused_naming_the_key(server, bad, counts):
    obs = np.ones((3, 2, 3), np.float32)
    obs[1, 0, 2] = bad
    header = _raw_request(server.address, _predict_frames(obs, request_id=41))
    assert header["ok"] is False and header["id"] == 41
    assert header["error"] == f"observation 'obs' is not finite: {counts} of 18 values"
    assert server.policy.batches == []  # the policy never saw it
    with PolicyClient(server.address, token=TOKEN, timeout_s=10) as client:
        with pytest.raises(PolicyServerError, match="'obs' is not finite"):
            client.predict_action({"obs": obs[1].astype(np.float64)})  # float64 and unbatched too
    _assert_still_serving(server)


def test_requests_over_the_window_cap_are_refused(server):
    with PolicyClient(server.address, token=TOKEN, timeout_s=10) as client:
        assert client.info()["max_windows"] == 8
        with pytest.raises(PolicyServerError, match="request of 9 observation windows exceeds the server's "
                                                    "limit of 8 per request"):
            client.predict_action({"obs": np.zeros((9, 2, 3), np.float32)})
        obs = np.random.default_rng(0).uniform(0, 9, (8, 2, 3)).astype(np.float32)
        np.testing.assert_array_equal(client.predict_action({"obs": obs})["action"], expected_chunk(obs))
    assert server.policy.batches == [8]


def test_one_policy_call_stacks_at_most_max_windows():
    policy = AffinePolicy()
    with PolicyServer(policy, "inproc://stack-cap", max_windows=8) as srv:
        obs = [np.full((n, 2, 3), float(i), np.float32) for i, n in enumerate((3, 3, 3, 8, 1))]
        messages = [[f"peer-{i}".encode(), *encode_message({"v": 1, "op": "predict", "id": i}, {"obs": x})]
                    for i, x in enumerate(obs)]
        answers = srv.handle(messages)
    assert policy.batches == [7, 3, 8]  # 3+3(+1 from behind), then 3, then 8: never more than 8 windows
    for (envelope, frames), i, x in zip(answers, range(5), obs, strict=True):
        header, arrays = decode_message(frames)
        assert envelope == [f"peer-{i}".encode()] and header["ok"] and header["id"] == i
        np.testing.assert_array_equal(arrays["action"], expected_chunk(x))


def test_non_finite_actions_from_the_policy_become_an_error_reply():
    class NanPolicy(AffinePolicy):
        def predict_action(self, obs):
            out = super().predict_action(obs)
            out["action"][-1, 0, 0] = np.nan  # the last window of the call only
            return out

    with PolicyServer(NanPolicy(), "inproc://nan-actions") as srv:
        messages = [[b"a", *encode_message({"v": 1, "op": "predict", "id": 1}, {"obs": np.ones((2, 3), np.float32)})],
                    [b"b", *encode_message({"v": 1, "op": "predict", "id": 2}, {"obs": np.ones((2, 3), np.float32)})]]
        (_, first), (_, second) = srv.handle(messages)
    assert decode_message(first)[0]["ok"] is True  # stacked with the bad one, but its own rows are finite
    header = decode_message(second)[0]
    assert header["ok"] is False and header["error"] == ("predict failed: the policy returned non-finite actions "
                                                         "(NaN or inf)")


# ---------------------------------------------------------------------- frames and queue
@pytest.mark.parametrize("socket_type", [zmq.DEALER, zmq.REQ])
def test_a_message_with_too_many_frames_is_refused_and_the_server_keeps_serving(server, socket_type):
    assert server.max_frames == 2  # the header + one frame for AffinePolicy's only key
    frames = [*_predict_frames(np.zeros((2, 3), np.float32), request_id=5), *[b"\0" * 4096] * 40]
    header = _raw_request(server.address, frames, socket_type)
    assert header["ok"] is False and header["id"] == 5
    assert header["error"] == ("message of 42 frames exceeds the server's limit of 2 (the header plus one frame "
                               "per observation key)")
    # many frames each under the per-frame limit, together far over the request limit
    frames = [*_predict_frames(np.zeros((2, 3), np.float32), request_id=6), *[b"\0" * (LIMIT - 1)] * 8]
    header = _raw_request(server.address, frames, socket_type)
    assert header["ok"] is False and "frames exceeds" in header["error"]
    assert _raw_request(server.address, encode_message({"v": 1, "op": "ping", "id": 7}),
                        socket_type)["ok"] is True
    _assert_still_serving(server)


def test_a_message_over_the_byte_limit_is_refused_even_without_a_readable_header(server):
    # two frames, each under the limit (a single frame over it drops the connection, with no reply)
    frames = [b"\xff" * (LIMIT // 2 + 10), b"\xff" * (LIMIT // 2)]  # the first is not JSON
    header = _raw_request(server.address, frames)
    assert header["ok"] is False and header["id"] is None
    assert header["error"] == f"request of {LIMIT + 10} bytes exceeds the server's limit of {LIMIT} bytes"
    _assert_still_serving(server)


class GatedPolicy(AffinePolicy):
    """Each call announces itself on ``entered`` and then waits for one ``gate`` release."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)

    def predict_action(self, obs):
        self.entered.release()
        if not self.gate.acquire(timeout=60):
            raise RuntimeError("the test never opened the gate")
        return super().predict_action(obs)


def _replies(sock: zmq.Socket) -> list[dict]:
    """Reply headers already waiting on ``sock``."""
    out = []
    while sock.poll(0, zmq.POLLIN):
        out.append(decode_message(sock.recv_multipart())[0])
    return out


@pytest.fixture
def gated_server():
    """A GatedPolicy server on inproc, with a context its test clients share (inproc sends are
    in the server's queue when send returns: no timing involved)."""
    context = zmq.Context()
    policy = GatedPolicy()
    srv = PolicyServer(policy, "inproc://gated", max_windows=8, context=context)
    sockets = []

    def connect() -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.address)
        sockets.append(sock)
        return sock

    srv.start()
    try:
        yield srv, policy, connect
    finally:
        for _ in range(20):  # let every pending call finish, whatever the test did
            policy.gate.release()
        srv.close()
        for sock in sockets:
            sock.close()
        context.term()


def test_a_ping_waits_for_at_most_the_largest_predict_in_progress(gated_server):
    srv, policy, connect = gated_server
    heavy, pinger = connect(), connect()
    big = np.arange(48, dtype=np.float32).reshape(8, 2, 3)  # the largest request allowed: 8 windows
    heavy.send_multipart(encode_message({"v": 1, "op": "predict", "id": 0}, {"obs": big}))
    assert policy.entered.acquire(timeout=30)  # call 1 (request 0) is in progress
    for request_id in (1, 2):  # two more of the largest requests queue up behind it ...
        heavy.send_multipart(encode_message({"v": 1, "op": "predict", "id": request_id}, {"obs": big + request_id}))
    pinger.send_multipart(encode_message({"v": 1, "op": "ping", "id": 100}))  # ... and a ping
    policy.gate.release()  # call 1 ends
    assert pinger.poll(30_000, zmq.POLLIN), "the ping was not answered while the next predict call ran"
    assert decode_message(pinger.recv_multipart())[0] == {"v": 1, "id": 100, "ok": True, "arrays": []}
    assert policy.entered.acquire(timeout=30)  # call 2 started, and is still held at the gate:
    assert [h["id"] for h in _replies(heavy)] == [0]  # the ping's reply came before request 1's
    policy.gate.release()
    policy.gate.release()
    got = []
    while len(got) < 2 and heavy.poll(30_000, zmq.POLLIN):
        got.append(decode_message(heavy.recv_multipart()))
    assert [h["id"] for h, _ in got] == [1, 2]
    np.testing.assert_array_equal(got[1][1]["action"], expected_chunk(big + 2))
    assert policy.batches == [8, 8, 8]  # one capped call each, never stacked past max_windows


def test_a_client_may_have_only_a_few_requests_waiting(gated_server):
    srv, policy, connect = gated_server
    sock = connect()
    obs = np.ones((1, 2, 3), np.float32)
    sock.send_multipart(encode_message({"v": 1, "op": "predict", "id": 0}, {"obs": obs}))
    assert policy.entered.acquire(timeout=30)
    extra = MAX_QUEUED_PER_CLIENT + 2
    for request_id in range(1, extra + 1):
        sock.send_multipart(encode_message({"v": 1, "op": "predict", "id": request_id}, {"obs": obs}))
    for _ in range(extra + 1):
        policy.gate.release()
    headers = []
    while len(headers) < extra + 1 and sock.poll(30_000, zmq.POLLIN):
        headers.append(decode_message(sock.recv_multipart())[0])
    busy = [h["id"] for h in headers if not h["ok"]]
    assert busy == [extra - 1, extra]  # the two past the limit, answered before the queued ones
    assert all("server busy: this client already has" in h["error"] for h in headers if not h["ok"])
    assert sorted(h["id"] for h in headers if h["ok"]) == list(range(MAX_QUEUED_PER_CLIENT + 1))


# ---------------------------------------------------------------------- the client's checks
INFO = {"n_obs_steps": 2, "n_action_steps": 4, "action_dim": 2, "shape_meta": AffinePolicy.shape_meta}


@pytest.fixture
def fake_server():
    """A ROUTER socket on loopback that answers ``info`` with INFO and ``predict`` with ``reply[0]``
    (a dict of arrays), as a broken or hostile server might."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    reply: list[dict] = [{}]
    stop = threading.Event()

    def serve():
        for _ in range(600):  # at most 60 s
            if stop.is_set():
                return
            if not sock.poll(100, zmq.POLLIN):
                continue
            peer, *frames = sock.recv_multipart()
            header, _ = decode_message(frames)
            body = {"v": 1, "id": header["id"], "ok": True}
            if header["op"] == "info":
                sock.send_multipart([peer, *encode_message({**body, "info": INFO})])
            else:
                sock.send_multipart([peer, *encode_message({**body, "compute_ms": 1.0}, reply[0])])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockopt_string(zmq.LAST_ENDPOINT), reply
    finally:
        stop.set()
        thread.join(10)
        sock.close()


def _chunk(shape=(2, 4, 2), dtype=np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


def _chunk_with(value: float) -> np.ndarray:
    chunk = _chunk()
    chunk[1, 3, 1] = value
    return chunk


@pytest.mark.parametrize("arrays, batch, match", [
    ({"action": _chunk((3, 4, 2)), "action_pred": _chunk((3, 4, 2))}, 2, r"'action' has shape \(3, 4, 2\), "
                                                                           r"expected batch 2"),
    ({"action": _chunk((2, 4, 2)), "action_pred": _chunk((2, 4, 2)) * np.nan}, 2, "'action_pred' has 16 non-finite"),
    ({"action": _chunk_with(-np.inf), "action_pred": _chunk()}, 2, "'action' has 1 non-finite"),
    ({"action": _chunk(dtype=np.int32), "action_pred": _chunk()}, 2, "'action' has dtype int32, expected float32"),
    ({"action": _chunk()}, 2, "no 'action_pred' array"),
    ({"action": _chunk((1, 4, 2)), "action_pred": _chunk((1, 4, 2))}, None, r"expected \(T, D\) \(the request "
                                                                            "had no batch dimension"),
    ({"action": _chunk((2, 5, 2)), "action_pred": _chunk((2, 5, 2))}, 2, "expected 4 time steps"),
    ({"action": _chunk((2, 4, 3)), "action_pred": _chunk((2, 4, 3))}, 2, "expected action dimension 2"),
    ({"action": _chunk((2, 4, 2)), "action_pred": _chunk((1, 4, 2))}, 2, "'action_pred' has shape"),
])
def test_the_client_rejects_malformed_predict_replies(fake_server, arrays, batch, match):
    address, reply = fake_server
    reply[0] = arrays
    obs = np.zeros((2, 3), np.float32) if batch is None else np.zeros((batch, 2, 3), np.float32)
    with PolicyClient(address, token="", timeout_s=10) as client:
        with pytest.raises(ProtocolError, match=match) as caught:
            client.predict_action({"obs": obs})
    assert str(caught.value).startswith(f"policy server at {address}: malformed predict reply: ")


def test_the_client_accepts_a_well_formed_reply(fake_server):
    address, reply = fake_server
    reply[0] = {"action": _chunk((4, 2)), "action_pred": _chunk((4, 2), np.float64)}
    with PolicyClient(address, token="", timeout_s=10) as client:
        out = client.predict_action({"obs": np.zeros((2, 3), np.float32)})  # unbatched: (Ta, D)
    assert out["action"].shape == (4, 2) and out["action_pred"].dtype == np.float64


# ---------------------------------------------------------------------- the command's options
@pytest.mark.parametrize("option, value, match", [("--max-windows", "0", "--max-windows must be >= 1, got 0"),
                                                  ("--max-batch", "-1", "--max-batch must be >= 1"),
                                                  ("--max-request-mb", "0", "--max-request-mb must be at least")])
def test_serve_command_refuses_bad_limits_before_loading(tmp_path, option, value, match):
    from dpolicy.commands import serve as serve_cmd

    parser = argparse.ArgumentParser()
    serve_cmd.configure(parser)
    args = parser.parse_args([str(tmp_path / "missing.pt"), option, value])
    with pytest.raises(UsageError, match=match):
        serve_cmd.run(args)
