"""`dpolicy serve CHECKPOINT`: serve a checkpoint's policy to robot clients over ZeroMQ."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from dpolicy.control.server import (
    DEFAULT_ADDRESS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_WINDOWS,
    TOKEN_ENV,
    PolicyServer,
    check_exposure,
    read_token,
)
from dpolicy.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint file written by `dpolicy train`")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"ZeroMQ endpoint to bind (default {DEFAULT_ADDRESS}: this machine only). Any "
                             "non-loopback address, e.g. tcp://0.0.0.0:5555, needs a token")
    parser.add_argument("--token-file", type=Path, default=None,
                        help=f"file holding the shared token (default: the {TOKEN_ENV} environment variable)")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_BYTES / 2**20,
                        help="largest request accepted, MiB (default %(default)g)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most waiting requests stacked into one policy call (default %(default)d)")
    parser.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS,
                        help="most observation windows (batch B) per request and per policy call: bounds how "
                             "long one large request holds the other clients (default %(default)d)")
    parser.add_argument("--device", default=None, help="torch device (default: auto)")
    parser.add_argument("--no-ema", action="store_true",
                        help="serve the plain weights instead of the EMA weights")
    parser.add_argument("--scheduler", default=None,
                        help="diffusion sampler, e.g. ddim (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    max_request_bytes = int(args.max_request_mb * 2**20)
    if max_request_bytes < 1024:
        raise UsageError(f"--max-request-mb must be at least 1 KiB (0.001), got {args.max_request_mb:g}")
    for option, value in (("--max-batch", args.max_batch), ("--max-windows", args.max_windows),
                          ("--threads", 1 if args.threads is None else args.threads)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    try:  # before the (slow) checkpoint load
        token = read_token(args.token_file)
        check_exposure(args.address, token)
    except ValueError as exc:  # an empty token file, a public address without a token, a bad address
        raise UsageError(str(exc)) from None

    import torch

    from dpolicy.training.checkpoint import load_policy

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    policy, _ = load_policy(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    if args.scheduler is not None or args.steps is not None:
        if not hasattr(policy, "set_inference"):
            raise SystemExit(f"--scheduler/--steps: {type(policy).__name__} has no diffusion sampler")
        policy.set_inference(args.scheduler, args.steps)
    server = PolicyServer(policy, args.address, token=token, max_request_bytes=max_request_bytes,
                          max_batch=args.max_batch, max_windows=args.max_windows,
                          info={"checkpoint": str(args.checkpoint)})
    # Ctrl-C and SIGTERM only set the stop flag: the poll loop notices within 0.1 s and the socket is closed
    # cleanly, whatever zmq call the signal lands in.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    info = server.info()
    print(f"serving {args.checkpoint} ({info['policy']}, To={info['n_obs_steps']}, "
          f"Ta={info.get('n_action_steps', '?')}) on {server.address}, "
          f"token {'required (ZeroMQ PLAIN handshake)' if token else 'not required (loopback only)'}; "
          f"limits per request: {server.max_request_bytes / 2**20:g} MiB, {server.max_frames} frames, "
          f"{server.max_windows} windows; Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
        refused = f", {server.n_refused} connections refused for a wrong token" if token else ""
        print(f"stopped after {server.n_requests} requests ({server.n_errors} rejected){refused}", flush=True)
    return 0
