"""`dpolicy convert-checkpoint OLD.pt`: rewrite a pickle-format checkpoint as safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpolicy.training.checkpoint import SUFFIX, convert_legacy_checkpoint, read_checkpoint


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert a checkpoint written by older versions (a torch.save pickle, .pt) to the current\n"
        "format (safetensors weights + JSON metadata). The old file is read with torch's restricted\n"
        "unpickler: tensors, plain containers and NumPy arrays only; a file naming any other class\n"
        "or function is refused before anything runs.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("checkpoint", type=Path, help="the old .pt checkpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the new checkpoint (default: beside it, with {SUFFIX})")


def run(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.with_suffix(SUFFIX)
    convert_legacy_checkpoint(args.checkpoint, out)
    checkpoint = read_checkpoint(out)  # what was written reads back in the new format
    print(f"wrote {out} (step {checkpoint.step}, policy {checkpoint.meta['config']['policy']['name']!r})")
    return 0
