"""`dpolicy serve CHECKPOINT`: serve a policy to robots in other processes or on other machines.

:class:`PolicyServer` answers the requests of any number of :class:`~dpolicy.control.client.PolicyClient`
s over ZeroMQ (a ROUTER socket; the wire format is described in :mod:`dpolicy.control.client`:
a JSON header plus raw little-endian array frames, never pickle). Requests that are waiting
together and share their observation layout are stacked into one batched policy call.

Safety: the server binds to loopback (``tcp://127.0.0.1:5555``) unless told otherwise and refuses
any other address without a shared token. With a token, every connection authenticates in the
ZeroMQ handshake (the PLAIN mechanism, user :data:`~dpolicy.control.client.PLAIN_USERNAME`,
password the token), checked by a ZAP handler the server runs in its ZeroMQ context: a peer with
a wrong token or none never completes the handshake, so ZeroMQ passes none of its messages on
(it gets no reply; :class:`~dpolicy.control.client.PolicyClient` tells its user that
authentication failed). Each message read is checked once more for the user id the ZAP handler
gave its connection. PLAIN carries the token in clear text, once per connection: on a network you
do not trust, put the port behind a tunnel (SSH, VPN). Malformed or failing requests get an
error reply while the server keeps serving; so do requests over a limit:

- ``max_request_bytes`` (all frames together) and ``max_frames`` (the header plus one frame per
  observation key of the policy): the server reads a message frame by frame and stops keeping it
  at the first frame over a limit, discarding the rest unread by Python. A single frame over
  ``max_request_bytes`` gets no reply: ZeroMQ drops the connection when it reads that frame's size
  (``MAXMSGSIZE``), before buffering it;
- ``max_windows``: observation windows (the batch B) per request, and per policy call;
- non-finite (NaN, inf) float observations are refused, naming the key; so are non-finite actions.

Fairness: each round the server reads at most ``max_batch`` waiting messages (ZeroMQ queues them
fairly, client by client), answers ``ping``/``info`` and errors at once, queues ``predict``
requests (at most :data:`MAX_QUEUED_PER_CLIENT` per client) and then makes ONE policy call of at
most ``max_windows`` windows. A ping therefore waits for at most the policy call in progress.

Memory, what a peer can make the server hold (L = ``max_request_bytes``):

- a peer without the token (when one is set): none of its messages. Before its handshake ends a
  connection can hold one handshake frame of at most L (``MAXMSGSIZE`` bounds those too), for at
  most :data:`HANDSHAKE_TIMEOUT_S`, when ZeroMQ drops an unfinished handshake. A ZeroMQ client
  never sends such a frame (its handshake takes a few hundred bytes); a crafted one can, once per
  connection it opens.
- an authenticated peer (or, without a token, any process on this machine): per connection,
  ZeroMQ holds at most :data:`RECEIVE_HWM` + 1 = 2 messages (the queued one, and one being
  received; past the high-water mark it stops reading that connection), each frame at most L. It
  hands a multipart message over only whole and bounds no number of frames, so one message of
  many frames is held whole before the server sees its first: a peer holding the token can still
  make ZeroMQ hold a message of any size. A client that sends one frame per observation key, as
  :class:`~dpolicy.control.client.PolicyClient` does, has at most 2 x L there. Python keeps at
  most L of a message, and at most :data:`MAX_QUEUED_PER_CLIENT` queued requests per client.
- in total: the sum over the connections, whose number ZeroMQ does not bound. Give the token
  only to clients you trust, and keep the port behind a firewall or tunnel off loopback.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dpolicy.control.client import (
    DEFAULT_ADDRESS,
    MAX_ARRAYS,
    MAX_HEADER_BYTES,
    PLAIN_USERNAME,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ProtocolError,
    decode_arrays,
    decode_header,
    encode_message,
    observation_layout,
)
from dpolicy.control.realtime import as_numpy

LOG = logging.getLogger("dpolicy.serve")

#: Default limit on the bytes of one request (all frames): room for a batch of 32 image windows.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Most requests stacked into one policy call, and most messages read per round.
DEFAULT_MAX_BATCH = 32
#: Default limit on the observation windows of one request and of one policy call: the largest
#: request takes one policy call, which bounds how long any other client's ping waits.
DEFAULT_MAX_WINDOWS = 64
#: Most ``predict`` requests one client may have waiting in the server; more get an error reply.
MAX_QUEUED_PER_CLIENT = 4
#: ZeroMQ's receive high-water mark, in messages per connection: past it ZeroMQ stops reading
#: that connection (the client's sends wait), so each client has at most this many unread
#: messages, plus the one being received, in the server's memory. (With a token the socket's
#: ``RCVHWM`` is one more, which holds the same number of messages under PLAIN: see ``__init__``.)
RECEIVE_HWM = 1
#: ZeroMQ drops a connection whose handshake has not ended after this long (``HANDSHAKE_IVL``).
HANDSHAKE_TIMEOUT_S = 5.0
#: The ZAP domain of the server's socket, and ZeroMQ's fixed endpoint for the ZAP handler.
ZAP_DOMAIN = "dpolicy"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
OPS = ("ping", "info", "predict")


def is_local_address(address: str) -> bool:
    """True for endpoints only this machine can reach: loopback tcp, ipc and inproc."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"address {address!r} must look like tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        raise ValueError(f"address {address!r}: unsupported transport {scheme!r} (use tcp, ipc or inproc)")
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from outside
        return False


def check_exposure(address: str, token: str | None) -> None:
    """Raise ValueError when ``address`` is reachable from other machines and no token is set."""
    if token is None and not is_local_address(address):
        raise ValueError(f"refusing to serve on {address!r} without a token: that address is reachable "
                         f"from other machines. Set a shared token ({TOKEN_ENV} or --token-file) or "
                         "bind to tcp://127.0.0.1:PORT")


class _Request:
    """A decoded ``predict`` request waiting for its policy call."""

    __slots__ = ("envelope", "header", "arrays", "unbatched", "windows", "signature", "tag")

    def __init__(self, header: dict, arrays: dict, unbatched: bool, windows: int, signature: tuple | None):
        self.envelope: list[bytes] = []
        self.header = header
        self.arrays = arrays
        self.unbatched = unbatched  # a batch dimension was added for stacking: drop it from the reply
        self.windows = windows
        self.signature = signature  # requests with equal signatures stack; None: called alone
        self.tag = 0


class _ZapHandler:
    """ZeroMQ's authentication hook (ZAP, RFC 27) for one context, answered in a thread.

    PLAIN in the server's domain passes with user :data:`PLAIN_USERNAME` and the token (compared
    in constant time); NULL passes (other sockets of a shared context: a context without a handler
    lets them through too); anything else is refused, status 400.
    """

    def __init__(self, context, token: str):
        import zmq

        self._zmq = zmq
        self._password = token.encode("utf-8")
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise ValueError(f"cannot check tokens: this ZeroMQ context already has a ZAP handler ({exc}); a "
                             "server with a token needs a context of its own (the default)") from None
        #: Handshakes accepted and refused (a wrong token; a client with no token at all fails earlier,
        #: on the mechanism, and never reaches the handler).
        self.n_accepted = 0
        self.n_refused = 0
        self._logged: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dpolicy-serve-zap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        zmq = self._zmq
        try:
            while not self._stop.is_set():
                if self._socket.poll(50, zmq.POLLIN):
                    frames = self._socket.recv_multipart()
                    try:
                        reply = self._answer(frames)
                    except Exception:  # every request needs a reply: refuse (fail closed), keep answering
                        LOG.exception("ZAP handler error")
                        reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"internal error", b"", b""]
                    self._socket.send_multipart(reply)
        finally:
            self._socket.close(linger=0)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request: version, request id, status, status text, user id, metadata."""
        if len(frames) < 6 or frames[0] != b"1.0":
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        request_id, domain, address, mechanism, credentials = frames[1], frames[2], frames[3], frames[5], frames[6:]
        if (mechanism == b"PLAIN" and domain == ZAP_DOMAIN.encode() and len(credentials) == 2
                and credentials[0] == PLAIN_USERNAME.encode()
                and hmac.compare_digest(credentials[1], self._password)):
            self.n_accepted += 1
            return [b"1.0", request_id, b"200", b"OK", PLAIN_USERNAME.encode(), b""]
        if mechanism == b"NULL" and domain != ZAP_DOMAIN.encode():
            return [b"1.0", request_id, b"200", b"OK", b"", b""]
        self.n_refused += 1
        if address not in self._logged and len(self._logged) < 256:  # once per address: no log flood
            self._logged.add(address)
            LOG.warning("refused a connection from %s: authentication failed (wrong token)",
                        address.decode("utf-8", "replace"))
        return [b"1.0", request_id, b"400", b"authentication failed", b"", b""]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class PolicyServer:
    """Serve ``policy.predict_action`` over ZeroMQ.

    Args:
        policy: an object with ``predict_action`` and ``n_obs_steps`` (a package policy, usually).
        address: endpoint to bind, e.g. ``tcp://127.0.0.1:5555`` (``tcp://127.0.0.1:*`` picks a free
            port; :attr:`address` then tells which).
        token: shared secret every client must present in the ZeroMQ handshake (PLAIN, see the
            module docstring); required for non-loopback addresses; not on ``inproc://`` (ZeroMQ
            does not authenticate in-process peers).
        max_request_bytes: largest request accepted (all frames together).
        max_batch: most waiting requests stacked into one policy call (and messages read per round).
        max_windows: most observation windows (B) in one request, and in one policy call.
        info: extra entries for the ``info`` reply (checkpoint path, ...).
        context: the ZeroMQ context to use (``inproc://`` clients must share it); default: its own.
            A server with a token binds the context's ZAP endpoint: one such server per context.
    """

    def __init__(self, policy, address: str = DEFAULT_ADDRESS, token: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
                 info: Mapping | None = None, max_windows: int = DEFAULT_MAX_WINDOWS, context=None):
        import zmq

        if not hasattr(policy, "predict_action"):
            raise TypeError(f"policy {type(policy).__name__} has no predict_action(obs) method")
        if not isinstance(getattr(policy, "n_obs_steps", None), (int, np.integer)):
            raise TypeError(f"policy {type(policy).__name__} needs an integer n_obs_steps (clients read it)")
        if token is not None and not token:
            raise ValueError("token must be a non-empty string or None")
        check_exposure(address, token)
        if token is not None and address.startswith("inproc://"):
            raise ValueError(f"a token cannot protect {address!r}: ZeroMQ authenticates tcp:// and ipc:// "
                             "connections only (in-process clients share the process); drop the token")
        if max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, got {max_request_bytes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.policy = policy
        self.token = token
        self.max_request_bytes = int(max_request_bytes)
        self.max_batch = int(max_batch)
        self.max_windows = int(max_windows)
        self._ndims = self._feature_ndims()
        #: Most frames in one message after the routing envelope: the header plus one per observation key.
        self.max_frames = (len(self._ndims) if self._ndims else MAX_ARRAYS) + 1
        self._extra_info = dict(info or {})
        self._takes_generator = "generator" in inspect.signature(policy.predict_action).parameters
        self._zmq = zmq
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = None
        self._zap: _ZapHandler | None = None
        try:
            if token is not None:  # bound before the socket, so that no handshake finds it missing
                self._zap = _ZapHandler(self._context, token)
            self._socket = self._context.socket(zmq.ROUTER)
            self._socket.setsockopt(zmq.LINGER, 0)
            if token is not None:
                self._socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
                self._socket.setsockopt(zmq.PLAIN_SERVER, 1)
            # Per frame, handshake frames included: a larger one drops the connection before it is buffered.
            self._socket.setsockopt(zmq.MAXMSGSIZE, self.max_request_bytes)
            # Per connection: ZeroMQ stops reading a client that has this many messages unread. With PLAIN,
            # libzmq (4.3.5) counts one more entry in each connection's queue: at RCVHWM 1 it delivers
            # nothing at all, at 2 it holds as many messages as NULL at 1 (measured with 8 MiB messages: 2).
            self._socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM + (token is not None))
            self._socket.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_TIMEOUT_S * 1000))
            try:
                self._socket.bind(address)
            except zmq.ZMQError as exc:
                raise OSError(f"cannot bind the policy server to {address!r}: {exc}") from None
        except BaseException:
            self._release()
            raise
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._queue: deque[_Request] = deque()  # predict requests waiting, oldest first
        self._queued: dict[bytes, int] = {}  # waiting requests per client (routing id)
        #: Counters: requests answered, of which errors, and policy calls made.
        self.n_requests = 0
        self.n_errors = 0
        self.n_policy_calls = 0

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self, poll_interval_s: float = 0.1) -> None:
        """Answer requests until :meth:`stop` (checked every ``poll_interval_s``).

        Each round reads at most ``max_batch`` waiting messages, answers all but ``predict`` at
        once, then makes one policy call (at most ``max_windows`` windows) for the oldest waiting
        requests, so that no client waits behind more than the call in progress for a ping.
        """
        zmq = self._zmq
        poll_ms = max(1, int(poll_interval_s * 1000))
        while not self._stop.is_set():
            if not self._queue and not self._socket.poll(poll_ms, zmq.POLLIN):
                continue
            for _ in range(self.max_batch):
                message = self._receive()
                if message is None:
                    break
                envelope, body, problem = message
                result = self._take(envelope, body, problem, self._queue, self._queued)
                if result is not None:
                    self._socket.send_multipart(envelope + result)
            if self._queue:
                for request, reply in self._serve_batch(self._queue, self._queued):
                    self._socket.send_multipart(request.envelope + reply)

    def start(self) -> PolicyServer:
        """Serve in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        self._thread = threading.Thread(target=self.serve_forever, name="dpolicy-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self._closed:
            self._release()
            self._closed = True

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        if self._zap is not None:
            self._zap.close()
        if self._own_context:
            self._context.term()

    @property
    def n_refused(self) -> int:
        """Handshakes refused for a wrong token (clients with no token fail before the check)."""
        return self._zap.n_refused if self._zap is not None else 0

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def info(self) -> dict:
        """What ``info`` requests return."""
        import dpolicy

        policy = self.policy
        out = {"policy": type(policy).__name__, "package_version": dpolicy.__version__,
               "n_obs_steps": int(policy.n_obs_steps), "max_request_bytes": self.max_request_bytes,
               "max_frames": self.max_frames, "max_windows": self.max_windows, "max_batch": self.max_batch,
               "auth": self.token is not None}
        for name in ("n_action_steps", "horizon", "action_dim"):
            if hasattr(policy, name):
                out[name] = int(getattr(policy, name))
        if hasattr(policy, "shape_meta"):
            out["shape_meta"] = policy.shape_meta
        if hasattr(policy, "inference_scheduler_name"):
            out["scheduler"] = policy.inference_scheduler_name
            out["num_inference_steps"] = int(policy.num_inference_steps)
        out.update(self._extra_info)
        return out

    def handle(self, messages: list[list[bytes]]) -> list[tuple[list[bytes], list[bytes]]]:
        """Answer received ROUTER messages: ``[(envelope, reply frames), ...]`` in the same order.

        The same checks and limits as :meth:`serve_forever`; the ``predict`` requests are answered
        in as many policy calls (each of at most ``max_windows`` windows) as they need.
        """
        answers: list[tuple[list[bytes], list[bytes]] | None] = [None] * len(messages)
        queue: deque[_Request] = deque()
        queued: dict[bytes, int] = {}
        for index, frames in enumerate(messages):
            envelope, body = _split_envelope(list(frames))
            reply = self._take(envelope, body, None, queue, queued, tag=index)
            if reply is not None:
                answers[index] = (envelope, reply)
        while queue:
            for request, reply in self._serve_batch(queue, queued):
                answers[request.tag] = (request.envelope, reply)
        return answers

    def _receive(self) -> tuple[list[bytes], list, str | None] | None:
        """The next waiting message, read frame by frame: ``(envelope, body, problem)``; None if none.

        Frames past ``max_frames`` or ``max_request_bytes`` are read and dropped at once (only the
        header is kept, for the request id of the error reply); ``problem`` then says which limit.
        With a token, a message whose connection lacks the ZAP handler's user id is kept not at all
        and refused (ZeroMQ should never pass one on: this is the second check).
        """
        zmq = self._zmq
        try:
            frame = self._socket.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        envelope, body = [frame.bytes], []
        n_frames = size = 0
        check_user = self.token is not None
        over = unauthorized = False
        more = frame.more
        while more:
            frame = self._socket.recv(copy=False)  # ZeroMQ delivers whole messages: the rest is here
            more = frame.more
            if check_user:  # the first frame from the wire carries the connection's metadata
                check_user = False
                over = unauthorized = not self._authenticated(frame)
            if len(envelope) == 1 and n_frames == 0 and len(frame) == 0:
                envelope.append(b"")  # a REQ peer's empty delimiter
                continue
            n_frames += 1
            size += len(frame)
            if not over:
                over = n_frames > self.max_frames or size > self.max_request_bytes
                if over:  # keep the header alone, for the request id, unless it is too long to be one
                    del body[1 if body and len(body[0]) <= MAX_HEADER_BYTES else 0:]
                else:
                    body.append(frame.buffer)
            del frame  # an over-limit frame is freed here, not kept to the end of the message
        if unauthorized:
            return envelope, [], "unauthorized: this connection did not authenticate"
        problem = self._limit_problem(n_frames, size) if over else None
        return envelope, body, problem

    def _authenticated(self, frame) -> bool:
        try:
            return frame.get("User-Id") == PLAIN_USERNAME
        except self._zmq.ZMQError:  # no such property: not a PLAIN connection
            return False

    def _limit_problem(self, n_frames: int, size: int) -> str | None:
        if n_frames > self.max_frames:
            return (f"message of {n_frames} frames exceeds the server's limit of {self.max_frames} "
                    "(the header plus one frame per observation key)")
        if size > self.max_request_bytes:
            return f"request of {size} bytes exceeds the server's limit of {self.max_request_bytes} bytes"
        return None

    def _take(self, envelope: list[bytes], body: list, problem: str | None, queue: deque[_Request],
              queued: dict[bytes, int], tag: int = 0) -> list[bytes] | None:
        """Check one message: its reply frames, or None when it was queued for a policy call."""
        self.n_requests += 1
        request_id = None
        try:
            if problem is not None:  # over a limit while received: body holds the header at most
                request_id = _peek_id(body)
                raise ProtocolError(problem)
            if not body:
                raise ProtocolError("empty message")
            header = decode_header(body[0])
            request_id = header.get("id")  # known from here on, so that the error reaches the client
            problem = self._limit_problem(len(body), sum(len(f) for f in body))
            if problem is not None:
                raise ProtocolError(problem)
            self._check_header(header)
            arrays = decode_arrays(header, body[1:])
            if header["op"] != "predict":
                result = {"info": self.info()} if header["op"] == "info" else {}
                return encode_message({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, **result})
            request = self._prepare(header, arrays)
            peer = envelope[0] if envelope else b""
            if queued.get(peer, 0) >= MAX_QUEUED_PER_CLIENT:
                raise ProtocolError(f"server busy: this client already has {MAX_QUEUED_PER_CLIENT} requests "
                                    "waiting; wait for their replies")
            request.envelope, request.tag = envelope, tag
            queue.append(request)
            queued[peer] = queued.get(peer, 0) + 1
            return None
        except ProtocolError as exc:
            return self._error(request_id, str(exc))
        except Exception as exc:  # never let one request stop the server
            LOG.exception("internal error on request %s", request_id)
            return self._error(request_id, f"internal error: {type(exc).__name__}: {exc}")

    def _check_header(self, header: dict) -> None:
        if header.get("v") != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {header.get('v')!r}; this server speaks "
                                f"{PROTOCOL_VERSION}")
        if header.get("op") not in OPS:
            raise ProtocolError(f"unknown op {header.get('op')!r}; expected one of {', '.join(OPS)}")
        seed = header.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
                raise ProtocolError(f"seed must be an integer in [0, 2**63), got {seed!r}")
            if not self._takes_generator:
                raise ProtocolError(f"{type(self.policy).__name__} does not take a seed")

    def _prepare(self, header: dict, arrays: dict[str, np.ndarray]) -> _Request:
        """Refuse non-finite observations and too many windows; work out what the request stacks with."""
        for name, array in arrays.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                n_nan = int(np.count_nonzero(np.isnan(array)))
                raise ProtocolError(f"observation {name!r} is not finite: {n_nan} NaN and "
                                    f"{int(np.count_nonzero(np.isinf(array)))} inf of {array.size} values")
        layout, windows = observation_layout(arrays, self._ndims)
        if windows > self.max_windows:
            raise ProtocolError(f"request of {windows} observation windows exceeds the server's limit of "
                                f"{self.max_windows} per request; split it into smaller requests")
        if layout == "unknown" or header.get("seed") is not None:
            return _Request(header, arrays, False, windows, None)
        unbatched = layout == "unbatched"
        batched = {k: v[None] if unbatched else v for k, v in arrays.items()}
        signature = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in batched.items()))
        return _Request(header, batched, unbatched, windows, signature)

    def _error(self, request_id, message: str) -> list[bytes]:
        self.n_errors += 1
        LOG.info("request %s rejected: %s", request_id, message)
        return encode_message({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": message})

    # ------------------------------------------------------------------ prediction
    def _feature_ndims(self) -> dict[str, int] | None:
        meta = getattr(self.policy, "shape_meta", None)
        if not isinstance(meta, Mapping) or not isinstance(meta.get("obs"), Mapping):
            return None
        return {key: len(item["shape"]) for key, item in meta["obs"].items()}

    def _serve_batch(self, queue: deque[_Request], queued: dict[bytes, int]) -> list[tuple[_Request, list[bytes]]]:
        """One policy call for the oldest waiting request and the compatible ones behind it that fit
        (at most ``max_batch`` requests and ``max_windows`` windows); they leave ``queue``."""
        head = queue[0]
        group, windows = [head], head.windows
        if head.signature is not None:
            for request in list(queue)[1:]:
                if len(group) >= self.max_batch:
                    break
                if request.signature == head.signature and windows + request.windows <= self.max_windows:
                    group.append(request)
                    windows += request.windows
        chosen = {id(r) for r in group}
        remaining = [r for r in queue if id(r) not in chosen]
        queue.clear()
        queue.extend(remaining)
        for request in group:
            peer = request.envelope[0] if request.envelope else b""
            queued[peer] -= 1
            if not queued[peer]:
                del queued[peer]
        if len(group) == 1:
            return [(head, self._predict_one(head))]
        return self._predict_group(group)

    def _call_policy(self, arrays: dict, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        start = time.perf_counter()
        if seed is not None:
            import torch

            out = self.policy.predict_action(arrays, generator=torch.Generator().manual_seed(seed))
        else:
            out = self.policy.predict_action(arrays)
        self.n_policy_calls += 1
        action = as_numpy(out["action"]).astype(np.float32)
        action_pred = as_numpy(out.get("action_pred", out["action"])).astype(np.float32)
        return action, action_pred, (time.perf_counter() - start) * 1000.0

    def _reply(self, request_id, action: np.ndarray, action_pred: np.ndarray, compute_ms: float,
               batch: int) -> list[bytes]:
        if not (np.isfinite(action).all() and np.isfinite(action_pred).all()):
            return self._error(request_id, "predict failed: the policy returned non-finite actions (NaN or inf)")
        return encode_message({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "compute_ms": compute_ms,
                               "batched_with": batch}, {"action": action, "action_pred": action_pred})

    def _predict_one(self, request: _Request) -> list[bytes]:
        """One policy call for one request."""
        header = request.header
        try:
            action, action_pred, ms = self._call_policy(request.arrays, header.get("seed"))
        except Exception as exc:  # a bad observation must not stop the server
            return self._error(header.get("id"), f"predict failed: {type(exc).__name__}: {exc}")
        if request.unbatched:
            action, action_pred = action[0], action_pred[0]
        return self._reply(header.get("id"), action, action_pred, ms, 1)

    def _predict_group(self, group: list[_Request]) -> list[tuple[_Request, list[bytes]]]:
        sizes = [next(iter(r.arrays.values())).shape[0] for r in group]
        stacked = {key: np.concatenate([r.arrays[key] for r in group]) for key in group[0].arrays}
        try:
            action, action_pred, ms = self._call_policy(stacked)
            if action.shape[:1] != (sum(sizes),) or action_pred.shape[:1] != (sum(sizes),):
                raise ValueError(f"the policy returned {action.shape[:1]} chunks for {sum(sizes)} windows")
        except Exception:  # answer each request on its own, so that each gets its own error
            return [(r, self._predict_one(r)) for r in group]
        replies, start = [], 0
        for request, size in zip(group, sizes, strict=True):
            part, part_pred = action[start:start + size], action_pred[start:start + size]
            if request.unbatched:
                part, part_pred = part[0], part_pred[0]
            replies.append((request, self._reply(request.header.get("id"), part, part_pred, ms, len(group))))
            start += size
        return replies


def _peek_id(body: list):
    """The request id in a message's header, or None when there is no readable header."""
    try:
        return decode_header(body[0]).get("id") if body else None
    except ProtocolError:
        return None


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """ROUTER frames -> (routing envelope, body); a REQ peer's empty delimiter stays in the envelope."""
    if len(frames) >= 2 and len(frames[1]) == 0:
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def read_token(token_file: Path | None) -> str | None:
    """The token from ``token_file`` (stripped) or from the environment; None when neither is set."""
    if token_file is not None:
        if not token_file.is_file():
            raise FileNotFoundError(f"token file not found: {token_file}")
        token = token_file.read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None
