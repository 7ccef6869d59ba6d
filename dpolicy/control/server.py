"""`dpolicy serve CHECKPOINT`: serve a policy to robots in other processes or on other machines.

:class:`PolicyServer` answers the requests of any number of :class:`~dpolicy.control.client.PolicyClient`
s over ZeroMQ (a ROUTER socket; the wire format is described in :mod:`dpolicy.control.client`:
a JSON header plus raw little-endian array frames, never pickle). Requests that are waiting
together and share their observation layout are stacked into one batched policy call.

Safety: the server binds to loopback (``tcp://127.0.0.1:5555``) unless told otherwise and refuses
any other address without a shared token; requests larger than ``max_request_bytes`` get an
error reply (and a single frame over twice that limit makes ZeroMQ drop the connection before
it is buffered); malformed, unauthenticated or failing requests get an error reply while the
server keeps serving. The token travels in clear text: across untrusted networks, tunnel the
port (SSH, VPN).
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dpolicy.control.client import (
    DEFAULT_ADDRESS,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ProtocolError,
    decode_arrays,
    decode_header,
    encode_message,
)
from dpolicy.control.realtime import as_numpy

LOG = logging.getLogger("dpolicy.serve")

#: Default limit on the bytes of one request (all frames): room for a batch of 32 image windows.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Most requests stacked into one policy call.
DEFAULT_MAX_BATCH = 32
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


class PolicyServer:
    """Serve ``policy.predict_action`` over ZeroMQ.

    Args:
        policy: an object with ``predict_action`` and ``n_obs_steps`` (a package policy, usually).
        address: endpoint to bind, e.g. ``tcp://127.0.0.1:5555`` (``tcp://127.0.0.1:*`` picks a free
            port; :attr:`address` then tells which).
        token: shared secret every request must carry; required for non-loopback addresses.
        max_request_bytes: largest request accepted (all frames together).
        max_batch: most waiting requests stacked into one policy call.
        info: extra entries for the ``info`` reply (checkpoint path, ...).
    """

    def __init__(self, policy, address: str = DEFAULT_ADDRESS, token: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
                 info: Mapping | None = None):
        import zmq

        if not hasattr(policy, "predict_action"):
            raise TypeError(f"policy {type(policy).__name__} has no predict_action(obs) method")
        if not isinstance(getattr(policy, "n_obs_steps", None), (int, np.integer)):
            raise TypeError(f"policy {type(policy).__name__} needs an integer n_obs_steps (clients read it)")
        if token is not None and not token:
            raise ValueError("token must be a non-empty string or None")
        check_exposure(address, token)
        if max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, got {max_request_bytes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.policy = policy
        self.token = token
        self.max_request_bytes = int(max_request_bytes)
        self.max_batch = int(max_batch)
        self._extra_info = dict(info or {})
        self._takes_generator = "generator" in inspect.signature(policy.predict_action).parameters
        self._zmq = zmq
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Hard cap per frame: a frame over twice the limit drops the connection before it is buffered.
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_request_bytes)
        try:
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self._socket.close()
            self._context.term()
            raise OSError(f"cannot bind the policy server to {address!r}: {exc}") from None
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Counters: requests answered, of which errors, and policy calls made.
        self.n_requests = 0
        self.n_errors = 0
        self.n_policy_calls = 0

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self, poll_interval_s: float = 0.1) -> None:
        """Answer requests until :meth:`stop` (checked every ``poll_interval_s``)."""
        zmq = self._zmq
        poll_ms = max(1, int(poll_interval_s * 1000))
        while not self._stop.is_set():
            if not self._socket.poll(poll_ms, zmq.POLLIN):
                continue
            messages = []
            while len(messages) < self.max_batch:
                try:
                    messages.append(self._socket.recv_multipart(zmq.NOBLOCK, copy=True))
                except zmq.Again:
                    break
            for envelope, reply in self.handle(messages):
                self._socket.send_multipart(envelope + reply)

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
            self._socket.close(linger=0)
            self._context.term()
            self._closed = True

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
        """Answer received ROUTER messages: ``[(envelope, reply frames), ...]`` in the same order."""
        answers: list[tuple[list[bytes], list[bytes]] | None] = [None] * len(messages)
        predicts = []  # (index, header, observation arrays)
        envelopes = []
        for index, frames in enumerate(messages):
            envelope, body = _split_envelope(frames)
            envelopes.append(envelope)
            request_id = None
            try:
                if not body:
                    raise ProtocolError("empty message")
                header = decode_header(body[0])
                request_id = header.get("id")  # known from here on, so that the error reaches the client
                size = sum(len(f) for f in body)
                if size > self.max_request_bytes:
                    raise ProtocolError(f"request of {size} bytes exceeds the server's limit of "
                                        f"{self.max_request_bytes} bytes")
                self._check_header(header)
                arrays = decode_arrays(header, body[1:])
                if header["op"] == "predict":
                    predicts.append((index, header, arrays))
                    continue
                result = {"info": self.info()} if header["op"] == "info" else {}
                reply = {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, **result}
                answers[index] = (envelope, encode_message(reply))
            except ProtocolError as exc:
                answers[index] = (envelope, self._error(request_id, str(exc)))
            except Exception as exc:  # never let one request stop the server
                LOG.exception("internal error on request %s", request_id)
                message = f"internal error: {type(exc).__name__}: {exc}"
                answers[index] = (envelope, self._error(request_id, message))
        for index, reply in self._predict(predicts):
            answers[index] = (envelopes[index], reply)
        self.n_requests += len(messages)
        return answers

    def _check_header(self, header: dict) -> None:
        if header.get("v") != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported protocol version {header.get('v')!r}; this server speaks "
                                f"{PROTOCOL_VERSION}")
        if self.token is not None:
            token = header.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token.encode()):
                raise ProtocolError("unauthorized: missing or wrong token")
        if header.get("op") not in OPS:
            raise ProtocolError(f"unknown op {header.get('op')!r}; expected one of {', '.join(OPS)}")
        seed = header.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ProtocolError(f"seed must be a non-negative integer, got {seed!r}")
            if not self._takes_generator:
                raise ProtocolError(f"{type(self.policy).__name__} does not take a seed")

    def _error(self, request_id, message: str) -> list[bytes]:
        self.n_errors += 1
        LOG.info("request %s rejected: %s", request_id, message)
        return encode_message({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": message})

    # ------------------------------------------------------------------ prediction
    def _feature_ndims(self) -> dict[str, int] | None:
        meta = getattr(self.policy, "shape_meta", None)
        if not isinstance(meta, Mapping) or "obs" not in meta:
            return None
        return {key: len(item["shape"]) for key, item in meta["obs"].items()}

    def _predict(self, requests: list[tuple[int, dict, dict]]) -> list[tuple[int, list[bytes]]]:
        """Stack compatible requests (same keys, feature shapes, dtypes, no seed) into one call each."""
        ndims = self._feature_ndims()
        groups: dict[tuple, list[tuple[int, dict, dict, bool]]] = {}
        singles = []
        for index, header, arrays in requests:
            unbatched = _is_unbatched(arrays, ndims)
            if unbatched is None or header.get("seed") is not None:
                singles.append((index, header, arrays))
                continue
            batched = {k: v[None] if unbatched else v for k, v in arrays.items()}
            signature = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in batched.items()))
            groups.setdefault(signature, []).append((index, header, batched, unbatched))
        replies = [(index, self._predict_one(header, arrays)) for index, header, arrays in singles]
        for members in groups.values():
            replies.extend(self._predict_group(members))
        return replies

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
        return encode_message({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "compute_ms": compute_ms,
                               "batched_with": batch}, {"action": action, "action_pred": action_pred})

    def _predict_one(self, header: dict, arrays: dict, unbatched: bool = False) -> list[bytes]:
        """One policy call for one request; ``unbatched`` drops the batch dimension added for stacking."""
        try:
            action, action_pred, ms = self._call_policy(arrays, header.get("seed"))
        except Exception as exc:  # a bad observation must not stop the server
            return self._error(header.get("id"), f"predict failed: {type(exc).__name__}: {exc}")
        if unbatched:
            action, action_pred = action[0], action_pred[0]
        return self._reply(header.get("id"), action, action_pred, ms, 1)

    def _predict_group(self, members: list[tuple[int, dict, dict, bool]]) -> list[tuple[int, list[bytes]]]:
        if len(members) > 1:
            sizes = [next(iter(arrays.values())).shape[0] for _, _, arrays, _ in members]
            stacked = {key: np.concatenate([arrays[key] for _, _, arrays, _ in members])
                       for key in members[0][2]}
            try:
                action, action_pred, ms = self._call_policy(stacked)
            except Exception:  # answer each request on its own below, so that each gets its own error
                pass
            else:
                replies, start = [], 0
                for (index, header, _, unbatched), size in zip(members, sizes, strict=True):
                    part, part_pred = action[start:start + size], action_pred[start:start + size]
                    if unbatched:
                        part, part_pred = part[0], part_pred[0]
                    replies.append((index, self._reply(header.get("id"), part, part_pred, ms, len(members))))
                    start += size
                return replies
        return [(index, self._predict_one(header, arrays, unbatched))
                for index, header, arrays, unbatched in members]


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """ROUTER frames -> (routing envelope, body); a REQ peer's empty delimiter stays in the envelope."""
    if len(frames) >= 2 and len(frames[1]) == 0:
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def _is_unbatched(arrays: dict[str, np.ndarray], ndims: dict[str, int] | None) -> bool | None:
    """True/False when every key is (To, ...) / (B, To, ...) per the spec; None when it cannot be told."""
    if ndims is None or not arrays or set(arrays) != set(ndims):
        return None
    kinds = {arrays[k].ndim - ndims[k] for k in arrays}
    if kinds == {1}:
        return True
    if kinds == {2} and len({arrays[k].shape[0] for k in arrays}) == 1:
        return False
    return None


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
