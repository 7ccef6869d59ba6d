"""Client of ``dpolicy serve``, and the wire format both sides speak.

Wire format (ZeroMQ multipart messages, no pickle anywhere):

- frame 0: a UTF-8 JSON object, the header;
- frames 1..n: raw array bytes, C order, one frame per entry of ``header["arrays"]``; each entry is
  ``{"name": str, "dtype": str, "shape": [int, ...]}`` with a little-endian numpy dtype string from
  :data:`WIRE_DTYPES` (``"<f4"`` float32, ``"<f8"`` float64, ``"|u1"`` uint8, ``"<i4"``, ``"<i8"``).

Requests carry ``{"v": 1, "op": "ping" | "info" | "predict", "id": int}``, optionally ``"seed"``
(reproducible sampling). A ``predict`` request's arrays are the observation keys,
``(B, To, *shape)`` or ``(To, *shape)``, in env units (images HWC uint8). Replies echo ``id`` and
carry ``"ok": true`` with the result (``predict``: arrays ``action`` (B, Ta, D) and ``action_pred``
(B, Tp, D), float32, plus ``"compute_ms"``), or ``"ok": false`` with ``"error"``. A client in
another language needs a ZeroMQ DEALER socket (or REQ, which adds an empty delimiter frame) and a
JSON library.

Authentication: a server started with a token authenticates each connection in the ZeroMQ
handshake, with the PLAIN mechanism: the client sets ``ZMQ_PLAIN_USERNAME`` to
:data:`PLAIN_USERNAME` (``"dpolicy"``) and ``ZMQ_PLAIN_PASSWORD`` to the token before connecting.
A connection with a wrong token, or none, never completes the handshake: the server receives
nothing from it and sends no reply (:class:`PolicyClient` reads the handshake's outcome from a
socket monitor and raises :class:`PolicyServerError` saying authentication failed). A server
without a token speaks ZeroMQ's NULL mechanism, and refuses clients that bring one. The token
is no longer part of the header (a ``"token"`` field there is ignored). PLAIN sends it in clear
text, once per connection: tunnel the port (SSH, VPN) on networks you do not trust.

Limits (the server's ``info`` reply lists them): a request has at most ``max_frames`` frames (the
header plus one per observation key), ``max_request_bytes`` bytes in all and ``max_windows``
observation windows (B); float observations must be finite. Anything else gets an error reply,
except a single frame over ``max_request_bytes``: ZeroMQ then drops the connection and no reply
comes (:class:`PolicyClient` refuses to send such a request once it knows the server's ``info``).
:class:`PolicyClient` checks every ``predict`` reply in turn (shape ``(B, Ta, D)`` for the
request's B, float dtype, finite values) and raises :class:`ProtocolError` on a malformed one.

:class:`PolicyClient` is a policy (``predict_action`` + ``n_obs_steps``), so it plugs into
:class:`~dpolicy.control.controller.ChunkController`, the real-time runner or ``evaluate``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Mapping

import numpy as np

PROTOCOL_VERSION = 1
#: dtypes allowed on the wire (numpy dtype strings, explicit byte order).
WIRE_DTYPES = ("<f4", "<f8", "|u1", "<i4", "<i8")
#: Most arrays in one message and most dimensions per array.
MAX_ARRAYS = 64
MAX_NDIM = 8
#: Largest JSON header accepted.
MAX_HEADER_BYTES = 64 * 1024
#: Environment variable holding the shared token, read by the client and by ``dpolicy serve``.
TOKEN_ENV = "DPOLICY_SERVE_TOKEN"
#: The ZeroMQ PLAIN user name of every client; the password is the token.
PLAIN_USERNAME = "dpolicy"
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


class ProtocolError(ValueError):
    """A message does not follow the wire format."""


class PolicyServerError(RuntimeError):
    """The server answered a request with an error."""


def _wire_dtype(array: np.ndarray) -> np.dtype:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype.str not in WIRE_DTYPES:
        raise ProtocolError(f"array dtype {array.dtype} cannot be sent; allowed: {', '.join(WIRE_DTYPES)} "
                            "(convert bool/float16/... first)")
    return dtype


def encode_message(header: Mapping, arrays: Mapping[str, np.ndarray] | None = None) -> list[bytes]:
    """Header dict + named arrays -> multipart frames (the header gets an ``arrays`` list)."""
    header = dict(header)
    frames, specs = [], []
    for name, value in (arrays or {}).items():
        array = np.asarray(value)
        array = np.ascontiguousarray(array, dtype=_wire_dtype(array))
        specs.append({"name": str(name), "dtype": array.dtype.str, "shape": list(array.shape)})
        frames.append(array.tobytes())
    header["arrays"] = specs
    return [json.dumps(header, separators=(",", ":")).encode("utf-8"), *frames]


def decode_header(frame: bytes) -> dict:
    """Frame 0 -> the header dict; raises :class:`ProtocolError` with the reason."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(frame)} bytes exceeds {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(bytes(frame).decode("utf-8"))
    # ValueError covers bad UTF-8, bad JSON and integers too long to convert; RecursionError deep nesting
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame 0 must be a UTF-8 JSON object (the header): {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the header must be a JSON object, got {type(header).__name__}")
    return header


def decode_arrays(header: Mapping, frames: list[bytes]) -> dict[str, np.ndarray]:
    """The data frames described by ``header["arrays"]`` -> {name: array}; raises :class:`ProtocolError`."""
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError(f"header 'arrays' must be a list of at most {MAX_ARRAYS} entries")
    if len(specs) != len(frames):
        raise ProtocolError(f"header lists {len(specs)} arrays but the message has {len(frames)} data frames")
    arrays: dict[str, np.ndarray] = {}
    for i, (spec, frame) in enumerate(zip(specs, frames, strict=True)):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"array entry {i} must be an object with a string 'name'")
        name = spec["name"]
        if name in arrays:
            raise ProtocolError(f"array {name!r} appears twice")
        dtype, shape = spec.get("dtype"), spec.get("shape")
        if dtype not in WIRE_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {dtype!r} not allowed; use one of "
                                f"{', '.join(WIRE_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ProtocolError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} non-negative "
                                f"integers, got {shape!r}")
        expected = math.prod(shape) * np.dtype(dtype).itemsize  # exact: huge shapes cannot wrap around
        if len(frame) != expected:
            raise ProtocolError(f"array {name!r}: {len(frame)} bytes for dtype {dtype} and shape {shape}, "
                                f"expected {expected}")
        arrays[name] = np.frombuffer(frame, dtype=dtype).reshape(shape).copy()
    return arrays


def observation_layout(arrays: Mapping[str, np.ndarray], ndims: Mapping[str, int] | None) -> tuple[str, int]:
    """How a ``predict`` request's observations are laid out, and how many windows they hold.

    ``ndims`` maps each observation key to its number of feature dimensions (from the policy's
    ``shape_meta``). Returns ``("batched", B)`` for ``{key: (B, To, *shape)}``, ``("unbatched", 1)``
    for ``{key: (To, *shape)}`` and ``("unknown", n)`` when it cannot be told (no spec, other keys,
    mixed layouts), with ``n`` the largest leading dimension: an upper bound on the windows.
    """
    if ndims is not None and arrays and set(arrays) == set(ndims):
        extra = {arrays[k].ndim - ndims[k] for k in arrays}
        if extra == {1}:
            return "unbatched", 1
        leading = {arrays[k].shape[0] for k in arrays} if extra == {2} else set()
        if len(leading) == 1:
            return "batched", int(leading.pop())
    return "unknown", max((int(a.shape[0]) for a in arrays.values() if a.ndim), default=0)


def _action_dim(info: Mapping) -> int | None:
    if isinstance(info.get("action_dim"), int):
        return info["action_dim"]
    meta = info.get("shape_meta")
    action = meta.get("action") if isinstance(meta, Mapping) else None
    shape = action.get("shape") if isinstance(action, Mapping) else None
    return shape[0] if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) else None


def check_prediction(out: Mapping[str, np.ndarray], request: Mapping[str, np.ndarray],
                     info: Mapping | None = None) -> None:
    """Raise :class:`ProtocolError` unless ``out`` is a well-formed ``predict`` reply to ``request``.

    Well-formed: arrays ``action`` (B, Ta, D) and ``action_pred`` (B, Tp, D), float32 or float64,
    all finite, with B the request's batch (no B for an unbatched request). With ``info`` (the
    server's ``info`` reply) the layout follows its ``shape_meta`` and Ta, Tp, D must match its
    ``n_action_steps``, ``horizon`` and action dimension.
    """
    info = info or {}
    meta = info.get("shape_meta")
    obs_meta = meta.get("obs") if isinstance(meta, Mapping) else None
    ndims = ({k: len(v["shape"]) for k, v in obs_meta.items()}
             if isinstance(obs_meta, Mapping) and all(isinstance(v, Mapping) and isinstance(v.get("shape"), list)
                                                      for v in obs_meta.values()) else None)
    layout, batch = observation_layout(request, ndims)
    if layout == "unknown":  # no spec: a 3-d reply must still carry the requests' common leading dimension
        leading = {a.shape[0] for a in request.values() if a.ndim}
        batch = leading.pop() if len(leading) == 1 else None
    expected_time = {"action": info.get("n_action_steps"), "action_pred": info.get("horizon")}
    dim = _action_dim(info)
    for name in ("action", "action_pred"):
        if name not in out:
            raise ProtocolError(f"malformed predict reply: no {name!r} array (got {sorted(out)})")
        array = out[name]
        if array.dtype not in (np.float32, np.float64):
            raise ProtocolError(f"malformed predict reply: {name!r} has dtype {array.dtype}, expected float32")
        ndim = {"batched": 3, "unbatched": 2}.get(layout)
        if (ndim is not None and array.ndim != ndim) or array.ndim not in (2, 3):
            want = {"batched": f"(B={batch}, T, D)", "unbatched": "(T, D) (the request had no batch dimension)"
                    }.get(layout, "(B, T, D) or (T, D)")
            raise ProtocolError(f"malformed predict reply: {name!r} has shape {array.shape}, expected {want}")
        if array.ndim == 3 and batch is not None and array.shape[0] != batch:
            raise ProtocolError(f"malformed predict reply: {name!r} has shape {array.shape}, expected batch "
                                f"{batch} (the request's B), got {array.shape[0]}")
        steps = expected_time[name]
        if isinstance(steps, int) and array.shape[-2] != steps:
            raise ProtocolError(f"malformed predict reply: {name!r} has shape {array.shape}, expected {steps} "
                                "time steps (the server's info)")
        if dim is not None and array.shape[-1] != dim:
            raise ProtocolError(f"malformed predict reply: {name!r} has shape {array.shape}, expected action "
                                f"dimension {dim}")
        if not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise ProtocolError(f"malformed predict reply: {name!r} has {bad} non-finite values (NaN or inf)")
    if out["action"].shape[:-2] != out["action_pred"].shape[:-2]:
        raise ProtocolError(f"malformed predict reply: 'action' {out['action'].shape} and 'action_pred' "
                            f"{out['action_pred'].shape} disagree on the batch")


def decode_message(frames: list[bytes]) -> tuple[dict, dict[str, np.ndarray]]:
    """Multipart frames -> (header, {name: array}); raises :class:`ProtocolError` with the reason."""
    if not frames:
        raise ProtocolError("empty message")
    header = decode_header(frames[0])
    return header, decode_arrays(header, frames[1:])


class PolicyClient:
    """Talks to a ``dpolicy serve`` server; behaves as a policy (``predict_action``, ``n_obs_steps``).

    Args:
        address: the server's ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555``.
        token: shared token (default: the ``DPOLICY_SERVE_TOKEN`` environment variable, if set;
            ``""``: no token, whatever the environment says). With a token the connection
            authenticates in the ZeroMQ handshake (PLAIN, see the module docstring).
        timeout_s: how long a request may take before :class:`TimeoutError`.

    A refused handshake (wrong token, a token the server does not take, or none where it needs
    one) raises :class:`PolicyServerError` at the next request, saying authentication failed;
    ZeroMQ does not retry such a connection, so make a new client with the right token.
    Thread-safe (one request at a time). Needs only numpy and pyzmq, no torch.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, timeout_s: float = 10.0):
        import zmq

        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.address = address
        self.token = (token if token is not None else os.environ.get(TOKEN_ENV)) or None
        self.timeout_s = float(timeout_s)
        self._zmq = zmq
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if self.token is not None:
            self._socket.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USERNAME.encode())
            self._socket.setsockopt(zmq.PLAIN_PASSWORD, self.token.encode("utf-8"))
        # The handshake's failures only: ZeroMQ does not retry a refused connection, so at most a few
        # events ever arrive (a monitor that nobody reads must not fill up).
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self._refused: str | None = None  # why the server refused the handshake, once it has
        self._socket.connect(address)
        self._can_send = zmq.Poller()
        self._can_send.register(self._socket, zmq.POLLOUT)
        self._can_send.register(self._monitor, zmq.POLLIN)
        self._can_recv = zmq.Poller()
        self._can_recv.register(self._socket, zmq.POLLIN)
        self._can_recv.register(self._monitor, zmq.POLLIN)
        self._lock = threading.Lock()
        self._next_id = 0
        self._info: dict | None = None

    # ------------------------------------------------------------------ transport
    def request(self, op: str, arrays: Mapping[str, np.ndarray] | None = None, **fields
                ) -> tuple[dict, dict[str, np.ndarray]]:
        """Send one request, wait for its reply: (header, arrays). Raises PolicyServerError, TimeoutError."""
        with self._lock:
            if self._socket is None:
                raise RuntimeError("PolicyClient is closed")
            request_id = self._next_id
            self._next_id += 1
            frames = encode_message({"v": PROTOCOL_VERSION, "op": op, "id": request_id, **fields}, arrays)
            self._check_size(frames)
            deadline = time.monotonic() + self.timeout_s
            self._check_handshake()
            while True:  # a DEALER with no usable connection does not take messages: wait, bounded
                try:
                    self._socket.send_multipart(frames, self._zmq.NOBLOCK)
                    break
                except self._zmq.Again:
                    if not self._wait(self._can_send, deadline):
                        raise self._timeout() from None
            while True:
                if not self._wait(self._can_recv, deadline):
                    raise self._timeout()
                reply, out = decode_message(self._socket.recv_multipart())
                if reply.get("id") == request_id:  # replies to requests that timed out are skipped
                    break
        if not reply.get("ok", False):
            raise PolicyServerError(f"policy server at {self.address}: {reply.get('error', 'unknown error')}")
        return reply, out

    def _wait(self, poller, deadline: float) -> bool:
        """Wait until the socket is ready in ``poller``'s sense; False at the deadline. Raises
        :class:`PolicyServerError` as soon as the monitor reports a refused handshake."""
        while True:
            remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if remaining_ms == 0:
                return False
            ready = dict(poller.poll(remaining_ms))
            if self._monitor in ready:
                self._check_handshake()
            if self._socket in ready:
                return True

    def _check_handshake(self) -> None:
        """Read the monitor's events; raise :class:`PolicyServerError` if the handshake was refused."""
        from zmq.utils.monitor import recv_monitor_message

        zmq = self._zmq
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            self._refused = self._refusal(event["event"], event["value"])
        if self._refused is not None:
            raise PolicyServerError(f"policy server at {self.address}: {self._refused}")

    def _refusal(self, event: int, value: int) -> str:
        zmq = self._zmq
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (f"authentication failed: the server refused this client's token (ZeroMQ PLAIN handshake, "
                    f"status {value}); use the server's token ({TOKEN_ENV} or token=...)")
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH and self.token is None:
            return (f"authentication failed: the server requires a token and this client has none; set "
                    f"{TOKEN_ENV} or pass token=...")
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return ("authentication failed: this client has a token but the server takes none (it was "
                    f"started without one); connect without a token (token='' or unset {TOKEN_ENV}) or "
                    "start the server with this token")
        return (f"the ZeroMQ handshake failed (protocol error {value:#x}): is a `dpolicy serve` of this "
                "version listening there?")

    def _timeout(self) -> TimeoutError:
        return TimeoutError(f"no reply from the policy server at {self.address} within {self.timeout_s:g} s "
                            "(is `dpolicy serve` running there?)")

    def _check_size(self, frames: list[bytes]) -> None:
        """Refuse, without sending, a request over the server's byte limit (known once ``info`` was read):
        the server would refuse it too, or, for a single frame over the limit, drop the connection."""
        limit = (self._info or {}).get("max_request_bytes")
        size = sum(len(frame) for frame in frames)
        if isinstance(limit, int) and size > limit:
            raise PolicyServerError(f"policy server at {self.address}: request of {size} bytes exceeds the "
                                    f"server's limit of {limit} bytes (its info; not sent)")

    def ping(self) -> float:
        """Round-trip time of an empty request, in seconds."""
        start = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - start

    def info(self) -> dict:
        """The served policy's description: n_obs_steps, n_action_steps, horizon, shape_meta, ..."""
        if self._info is None:
            info = self.request("info")[0].get("info")
            if not isinstance(info, dict) or not isinstance(info.get("n_obs_steps"), int):
                raise ProtocolError(f"policy server at {self.address}: malformed info reply (no integer "
                                    "'n_obs_steps')")
            self._info = info
        return self._info

    # ------------------------------------------------------------------ policy interface
    @property
    def n_obs_steps(self) -> int:
        return int(self.info()["n_obs_steps"])

    @property
    def n_action_steps(self) -> int:
        return int(self.info()["n_action_steps"])

    def predict_action(self, obs: Mapping[str, np.ndarray], seed: int | None = None) -> dict[str, np.ndarray]:
        """``{"action": (B, Ta, D), "action_pred": (B, Tp, D)}`` float32 for ``obs`` ``{key: (B, To, ...)}``.

        Torch tensors are accepted too. ``seed`` makes the server's sampling noise reproducible.
        The reply is checked against the request and the server's ``info`` (fetched once, on first
        use): a malformed one (wrong shape or dtype, NaN or inf) raises :class:`ProtocolError`.
        """
        arrays = {key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
                  for key, value in obs.items()}
        fields = {} if seed is None else {"seed": int(seed)}
        info = self.info()
        _, out = self.request("predict", arrays, **fields)
        try:
            check_prediction(out, arrays, info)
        except ProtocolError as exc:
            raise ProtocolError(f"policy server at {self.address}: {exc}") from None
        return {"action": out["action"], "action_pred": out["action_pred"]}

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.disable_monitor()
                self._monitor.close(linger=0)
                self._socket.close(linger=0)
                self._socket = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
