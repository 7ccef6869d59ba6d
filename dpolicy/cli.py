"""The `dpolicy` command: one entry point, one module per subcommand.

Each subcommand lives in its own module that defines ``configure(parser)`` (adds its
arguments) and ``run(args) -> int``. Modules are imported lazily so that ``dpolicy --help``
stays fast and a broken optional dependency only affects its own subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("dpolicy.commands.train", "train a policy (hydra config overrides: key=value ...)"),
    "eval": ("dpolicy.commands.eval", "evaluate a checkpoint with rollouts in the simulator"),
    "data": ("dpolicy.commands.data", "inspect, render and convert zarr demonstration datasets"),
    "collect": ("dpolicy.commands.collect", "collect demonstrations (scripted expert or mouse teleoperation)"),
    "bench": ("dpolicy.commands.bench", "benchmarks: env, data, train, infer"),
    "serve": ("dpolicy.commands.serve", "serve a checkpoint to robot clients over ZeroMQ"),
    "export": ("dpolicy.commands.export", "export a checkpoint's networks to TorchScript for non-Python stacks"),
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the module of the chosen subcommand.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
