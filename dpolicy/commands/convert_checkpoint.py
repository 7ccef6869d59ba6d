"""`dpolicy convert-checkpoint OLD.pt --trust`: rewrite a pickle-format checkpoint as safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpolicy.training.checkpoint import SUFFIX, convert_legacy_checkpoint, read_checkpoint


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert a checkpoint written by older versions (a torch.save pickle, .pt) to the current\n"
        "format (safetensors weights + JSON metadata), which loads without running any code.\n"
        "Reading the old file unpickles it, and unpickling can execute arbitrary code: convert only\n"
        "files you made yourself or whose source you trust, and pass --trust to say so.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("checkpoint", type=Path, help="the old .pt checkpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the new checkpoint (default: beside it, with {SUFFIX})")
    parser.add_argument("--trust", action="store_true",
                        help="I trust this file: allow unpickling it (required)")


def run(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.with_suffix(SUFFIX)
    convert_legacy_checkpoint(args.checkpoint, out, trust=args.trust)
    checkpoint = read_checkpoint(out)  # what was written reads back in the new format
    print(f"wrote {out} (step {checkpoint.step}, policy {checkpoint.meta['config']['policy']['name']!r})")
    return 0
