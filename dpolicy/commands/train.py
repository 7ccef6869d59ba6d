"""`dpolicy train [--config NAME] [key=value ...]`: train a policy from a hydra config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from dpolicy.config import DEFAULT_CONFIG, available_configs, compose_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Train a policy. The experiment config (configs/<NAME>.yaml) is composed with hydra;\n"
        "append overrides as key=value, e.g.\n"
        "  dpolicy train --config pusht_lowdim training.max_steps=2000 run_dir=runs/try1\n"
        "  dpolicy train --config pusht_lowdim run_dir=runs/try1 resume=true   # continue a killed run\n"
        "  torchrun --nproc_per_node 2 -m dpolicy train --config pusht_lowdim device=cpu   # DDP\n"
        "  dpolicy train --config-dir my_configs --config my_robot   # your own task (see `dpolicy data info`)\n"
        "Outputs in run_dir: checkpoints/latest.safetensors, top-k checkpoints (by rollout score, or by\n"
        "offline action error for a task without a simulator), log.jsonl, curves.png.")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"experiment config name (default {DEFAULT_CONFIG}); one of: "
                             + ", ".join(available_configs()))
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="folder of your own configs (NAME.yaml, task/*.yaml, policy/*.yaml, ...), searched "
                             "besides the package's; `dpolicy data info PATH --write-config DIR` starts one")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="hydra overrides key=value")


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.config, args.overrides, config_dir=args.config_dir)
    if args.print_config:
        try:
            print(OmegaConf.to_yaml(cfg, resolve=True))
        except InterpolationResolutionError as exc:  # e.g. a dataset that is not on this machine
            reason = str(exc.__cause__ or exc).splitlines()[0]
            print(f"# not resolved: {reason}\n" + OmegaConf.to_yaml(cfg, resolve=False))
        return 0
    from dpolicy.training.trainer import Trainer

    summary = Trainer(cfg).train()
    if summary is not None:
        print(json.dumps({k: v for k, v in summary.items() if k != "top_k"}, default=str))
    return 0
