"""Fuzzing the wire format and the server with hypothesis: whatever bytes arrive, the decoders
either decode them or raise ProtocolError (never another exception, never a large allocation),
the server answers every message with a reply that is not an internal error, and no byte stream
from a peer without the token gets a message through to the server."""

from __future__ import annotations

import json
import math
import socket
import tracemalloc

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import (
    HELLO_WRONG,
    TOKEN,
    AffinePolicy,
    _message_bytes,
    _zmtp_command,
    _zmtp_frame,
    _zmtp_greeting,
)

from dpolicy.control.client import (
    PLAIN_USERNAME,
    WIRE_DTYPES,
    PolicyClient,
    ProtocolError,
    check_prediction,
    decode_arrays,
    decode_header,
    decode_message,
    encode_message,
)
from dpolicy.control.server import PolicyServer

LIMIT = 64 * 1024
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------- strategies
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
dims = st.one_of(st.integers(0, 4), st.integers(-3, -1), st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**64, 10**30]),
                 st.booleans(), st.floats(0, 4), st.text(max_size=2), st.none())
shapes = st.one_of(st.lists(dims, max_size=10), json_scalars)
dtypes = st.one_of(st.sampled_from(WIRE_DTYPES), st.sampled_from(["<c16", "|b1", "<f2", ">f4", "O", "<U4", ""]),
                   json_scalars)


@st.composite
def crafted_messages(draw) -> list[bytes]:
    """A header of random fields and array specs (extreme shapes, odd dtypes), with data frames of
    the size the spec implies (when small) or of random bytes."""
    specs, frames = [], []
    for _ in range(draw(st.integers(0, 3))):
        spec = {"name": draw(st.one_of(st.sampled_from(["obs", "obs", "image"]), json_scalars)),
                "dtype": draw(dtypes), "shape": draw(shapes)}
        specs.append(draw(st.one_of(st.just(spec), json_scalars)))
        nbytes = None
        if spec["dtype"] in WIRE_DTYPES and isinstance(spec["shape"], list) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec["shape"]):
            nbytes = math.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize
        if nbytes is not None and nbytes <= 4096 and draw(st.booleans()):
            frames.append(draw(st.binary(min_size=nbytes, max_size=nbytes)))  # any values: NaN, inf, ...
        else:
            frames.append(draw(st.binary(max_size=64)))
    header = {"v": draw(st.sampled_from([1, 1, 1, 2, None, "1"])),
              "op": draw(st.one_of(st.sampled_from(["predict", "predict", "info", "ping"]), json_scalars)),
              "id": draw(json_scalars), "arrays": draw(st.one_of(st.just(specs), json_scalars))}
    if draw(st.booleans()):
        header["seed"] = draw(json_scalars)
    extra = draw(st.integers(-1, 1))  # a data frame missing, or one too many
    frames = frames[:-1] if extra < 0 else frames + [b"\0" * 8] * extra
    return [json.dumps(header).encode(), *frames]


@st.composite
def valid_messages(draw) -> list[bytes]:
    """A well-formed predict request for AffinePolicy: (To, 3) or (B, To, 3), float32 or float64."""
    shape = draw(st.sampled_from([(2, 3), (1, 2, 3), (4, 2, 3), (0, 2, 3), (3, 5, 3)]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=math.prod(shape), max_size=math.prod(shape)))
    obs = np.array(values, dtype).reshape(shape)
    return encode_message({"v": 1, "op": "predict", "id": draw(st.integers(0, 2**31))}, {"obs": obs})


@st.composite
def mutated_messages(draw) -> list[bytes]:
    """A valid message after bit flips, truncations, dropped or duplicated frames."""
    frames = list(draw(valid_messages()))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frames) - 1))
        frame = bytearray(frames[i])
        kind = draw(st.sampled_from(["flip", "truncate", "drop", "duplicate", "grow"]))
        if kind == "flip" and frame:
            bit = draw(st.integers(0, 8 * len(frame) - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
            frames[i] = bytes(frame)
        elif kind == "truncate":
            frames[i] = bytes(frame[:draw(st.integers(0, len(frame)))])
        elif kind == "drop" and len(frames) > 1:
            del frames[i]
        elif kind == "duplicate":
            frames.insert(i, frames[i])
        elif kind == "grow":
            frames[i] = bytes(frame) + draw(st.binary(min_size=1, max_size=16))
    return frames


random_messages = st.lists(st.binary(max_size=200), min_size=1, max_size=6)
any_message = st.one_of(random_messages, crafted_messages(), crafted_messages(), mutated_messages(),
                        valid_messages())


def _peak_bytes(function, *args):
    """(result or the exception raised, peak bytes allocated meanwhile)."""
    tracemalloc.start()
    try:
        try:
            result = function(*args)
        except Exception as exc:  # examined by the caller
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------- decoders
@FUZZ
@given(frame=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                       st.integers(1, 100_000).map(lambda n: b"[" * n),
                       st.integers(4000, 20_000).map(lambda n: b'{"id": ' + b"7" * n + b"}"),
                       st.integers(0, 70_000).map(lambda n: b'{"pad": "' + b"x" * n + b'"}')))
def test_decode_header_decodes_or_raises_protocol_error(frame):
    try:
        header = decode_header(frame)
    except ProtocolError:
        return
    assert isinstance(header, dict)


@FUZZ
@given(frames=any_message)
def test_decode_message_decodes_or_raises_protocol_error_without_large_allocations(frames):
    result, peak = _peak_bytes(decode_message, frames)
    if isinstance(result, Exception):
        assert isinstance(result, ProtocolError), repr(result)
    else:
        header, arrays = result
        specs = header["arrays"]
        assert [spec["name"] for spec in specs] == list(arrays)
        for spec, frame in zip(specs, frames[1:], strict=True):
            array = arrays[spec["name"]]
            assert array.dtype.str == spec["dtype"] and list(array.shape) == spec["shape"]
            assert array.tobytes() == frame
    assert peak <= sum(len(f) for f in frames) + 64 * 1024  # huge shapes never allocate anything


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["arrays", "v", "op"]), st.one_of(json_scalars, st.lists(
    st.fixed_dictionaries({"name": st.text(max_size=3), "dtype": dtypes, "shape": shapes}), max_size=3))),
    frames=st.lists(st.binary(max_size=64), max_size=3))
def test_decode_arrays_decodes_or_raises_protocol_error(header, frames):
    result, peak = _peak_bytes(decode_arrays, header, frames)
    assert not isinstance(result, Exception) or isinstance(result, ProtocolError), repr(result)
    assert peak <= 64 * 1024


def _filled(shape: tuple, dtype, fill: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN and inf cast to integers: any value will do
        return np.full(shape, fill).astype(dtype)


out_arrays = st.builds(
    _filled,
    st.lists(st.integers(0, 5), max_size=4).map(tuple),
    st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.int64]),
    st.sampled_from([0.0, 1.5, np.nan, np.inf, -np.inf, 255.0]))


@FUZZ
@given(out=st.dictionaries(st.sampled_from(["action", "action_pred", "other"]), out_arrays, max_size=3),
       request=st.dictionaries(st.sampled_from(["obs", "image"]), out_arrays, max_size=2),
       info=st.sampled_from([None, {}, {"n_obs_steps": 2, "n_action_steps": 4, "horizon": 4,
                                        "shape_meta": AffinePolicy.shape_meta},
                             {"shape_meta": {"obs": "junk", "action": 3}, "action_dim": "2", "horizon": None}]))
def test_the_client_check_of_replies_accepts_or_raises_protocol_error(out, request, info):
    try:
        check_prediction(out, request, info)
    except ProtocolError:
        return
    for name in ("action", "action_pred"):  # what passes is what the client promises
        assert out[name].dtype in (np.float32, np.float64) and np.isfinite(out[name]).all()
        assert out[name].ndim in (2, 3)


# ---------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def inproc_server():
    """A serving AffinePolicy server on inproc and a DEALER on the same context."""
    context = zmq.Context()
    policy = AffinePolicy()
    srv = PolicyServer(policy, "inproc://fuzz", max_request_bytes=LIMIT, max_windows=8, context=context)
    srv.start()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(srv.address)
    try:
        yield srv, sock
    finally:
        srv.close()
        sock.close()
        context.term()


def _check_reply(frames: list[bytes]) -> dict:
    header, arrays = decode_message(frames)
    assert header["v"] == 1 and isinstance(header["ok"], bool)
    if not header["ok"]:
        assert isinstance(header["error"], str) and not header["error"].startswith("internal error"), header
    elif "action" in arrays:
        assert np.isfinite(arrays["action"]).all() and arrays["action"].dtype == np.float32
    return header


@FUZZ
@given(frames=any_message)
def test_handle_answers_every_message_with_a_reply_or_a_protocol_error(frames):
    policy = AffinePolicy()
    with PolicyServer(policy, "inproc://fuzz-handle", max_request_bytes=LIMIT, max_windows=8) as srv:
        result, peak = _peak_bytes(srv.handle, [[b"peer", *frames]])
    assert not isinstance(result, Exception), repr(result)
    ((envelope, reply),) = result
    if frames[0] == b"":  # taken for a REQ peer's delimiter: it stays in the envelope
        assert envelope == [b"peer", b""]
    else:
        assert envelope == [b"peer"]
    _check_reply(reply)
    assert sum(policy.batches) <= 8
    assert peak <= 3 * LIMIT


@FUZZ
@given(frames=any_message, padding=st.sampled_from([0, 0, 0, LIMIT // 2, LIMIT - 1]),
       n_padding=st.sampled_from([0, 1, 3]))
def test_the_serving_loop_answers_every_message_and_keeps_serving(inproc_server, frames, padding, n_padding):
    srv, sock = inproc_server
    frames = [*frames, *[b"\x7f" * padding] * n_padding]  # many frames, together over the limit
    sock.send_multipart(frames)
    assert sock.poll(10_000, zmq.POLLIN), f"no reply to {frames!r:.300}"
    reply = sock.recv_multipart()
    if frames[0] == b"":
        assert reply[0] == b""
        reply = reply[1:]
    header = _check_reply(reply)
    if sum(len(f) for f in frames) - (0 if frames[0] else len(frames[0])) > LIMIT:
        assert header["ok"] is False and "exceeds" in header["error"]
    sock.send_multipart(encode_message({"v": 1, "op": "ping", "id": -1}))
    assert sock.poll(10_000, zmq.POLLIN)
    assert decode_message(sock.recv_multipart())[0]["ok"] is True


# ---------------------------------------------------------------------- unauthenticated peers
@pytest.fixture(scope="module")
def token_server():
    srv = PolicyServer(AffinePolicy(), "tcp://127.0.0.1:*", token=TOKEN, max_request_bytes=LIMIT)
    with srv.start():
        yield srv


def _hello(username: bytes, password: bytes) -> bytes:
    return _zmtp_command(b"HELLO", bytes([len(username)]) + username + bytes([len(password)]) + password)


handshakes = st.one_of(
    st.just(b""), st.just(HELLO_WRONG), st.just(_hello(b"", b"")), st.just(_hello(b"admin", TOKEN.encode())),
    st.just(_hello(PLAIN_USERNAME.encode(), TOKEN.encode()[:-1])),  # one byte short of the token
    st.just(_zmtp_command(b"READY", b"")), st.just(_zmtp_command(b"INITIATE", b"\0" * 40)),
    st.binary(max_size=64).map(lambda b: _zmtp_command(b"HELLO", b)),
    st.builds(_zmtp_frame, st.binary(max_size=64), st.sampled_from([0, 1, 4, 5, 0xFF])))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mechanism=st.sampled_from([b"PLAIN", b"PLAIN", b"NULL", b"CURVE", b"GSSAPI", b"plain", b"\xff" * 20]),
       version=st.sampled_from([(3, 0), (3, 1), (2, 0), (4, 0)]), handshake=handshakes,
       messages=st.lists(any_message, max_size=3), cut=st.one_of(st.none(), st.integers(0, 200)),
       junk=st.binary(max_size=64))
def test_no_byte_stream_without_the_token_gets_a_message_through(token_server, mechanism, version, handshake,
                                                                 messages, cut, junk):
    greeting = bytearray(_zmtp_greeting(mechanism))
    greeting[10:12] = bytes(version)
    payload = bytes(greeting) + handshake + b"".join(_message_bytes(m) for m in messages) + junk
    if cut is not None:
        payload = payload[:cut]
    host, port = token_server.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=0.2) as sock:
        try:
            sock.sendall(payload)
            while sock.recv(65536):  # until the server closes; a stalled handshake: 0.2 s at most here
                pass
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
    assert token_server.n_requests == 0 and token_server.n_errors == 0


def test_the_token_server_still_serves_after_the_fuzzing(token_server):
    with PolicyClient(token_server.address, token=TOKEN, timeout_s=10) as client:
        assert client.ping() > 0
    assert token_server.n_requests == 1
