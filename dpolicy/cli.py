"""The `dpolicy` command: one entry point, one module per subcommand.

Each subcommand lives in its own module, ``dpolicy/commands/<name>.py``, that defines
``configure(parser)`` (adds its arguments) and ``run(args) -> int``. Modules are imported lazily so
that ``dpolicy --help`` stays fast and a broken optional dependency only affects its own subcommand.

Expected errors (bad input, bad config, a missing file, a refused bind) print as one or two lines,
``error: ...``, with exit code 2 for usage errors and 1 otherwise; ``--debug`` (anywhere on the
command line) or ``DPOLICY_DEBUG=1`` shows the traceback. Unexpected exceptions always do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dpolicy.errors import UsageError, UserError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("dpolicy.commands.train", "train a policy (hydra config overrides: key=value ...)"),
    "eval": ("dpolicy.commands.eval", "evaluate a checkpoint with rollouts in the simulator"),
    "data": ("dpolicy.commands.data", "inspect, render and convert zarr demonstration datasets"),
    "collect": ("dpolicy.commands.collect", "collect demonstrations (scripted expert or mouse teleoperation)"),
    "bench": ("dpolicy.commands.bench", "benchmarks: env, data, train, infer"),
    "serve": ("dpolicy.commands.serve", "serve a checkpoint to robot clients over ZeroMQ"),
    "export": ("dpolicy.commands.export", "export a checkpoint's networks to TorchScript or ONNX"),
    "convert-checkpoint": ("dpolicy.commands.convert_checkpoint",
                           "rewrite an old pickle (.pt) checkpoint in the safe format"),
    "demo": ("dpolicy.commands.demo", "the newcomer's main job: train on the embedded data, evaluate, report"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpolicy",
        description="Diffusion Policy for robot learning. Run `dpolicy COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:  # top-level --help lists commands without importing them
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_module=module)
    return parser


DEBUG_FLAG = "--debug"
DEBUG_ENV = "DPOLICY_DEBUG"


def expected_error(exc: BaseException) -> tuple[str, int] | None:
    """``(message, exit code)`` when ``exc`` is an input problem rather than a bug, else None."""
    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        where = f": {exc.filename}" if exc.filename and str(exc.filename) not in str(exc) else ""
        return f"{exc.strerror or exc}{where}" if exc.strerror else f"{exc}", 1
    module = type(exc).__module__.split(".")[0]
    if module in ("hydra", "omegaconf"):  # config composition, overrides, interpolations
        inner = exc.__cause__ or exc.__context__
        while inner is not None:  # e.g. a resolver that found no dataset: report its own error
            if type(inner).__module__.split(".")[0] not in ("hydra", "omegaconf"):
                found = expected_error(inner)
                if found is not None:
                    return found
            inner = inner.__cause__ or inner.__context__
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
        key = getattr(exc, "full_key", None)
        text = " ".join(lines) or type(exc).__name__
        return (f"{text} (config key {key})" if key and str(key) not in text else text), 2
    if module == "zmq":  # e.g. an address already in use or not available
        return f"ZeroMQ: {exc}", 1
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    # Import only the module of the chosen subcommand.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(only=chosen if chosen in SUBCOMMANDS else None)
        args = parser.parse_args(argv)
        if getattr(args, "_module", None) is None:
            parser.print_help()
            return 0 if not argv or argv[0] in ("-h", "--help") else 2
        return int(args._module.run(args) or 0)
    except BrokenPipeError:  # the reader went away (`dpolicy data info X | head`): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141
    except Exception as exc:  # noqa: BLE001 (the one place that decides how errors reach the user)
        expected = expected_error(exc)
        if expected is None or debug:
            raise
        message, code = expected
        print(f"error: {message}", file=sys.stderr)
        if code == UsageError.exit_code:
            print(f"(see `dpolicy {chosen or ''} --help`; add {DEBUG_FLAG} for the traceback)".replace("  ", " "),
                  file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
