"""One module per `dpolicy` subcommand: ``configure(parser)`` adds its arguments, ``run(args) -> int`` runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(low: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` that parses ``kind`` and refuses values below ``low`` (a usage error, exit 2)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a value >= {low:g}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} >= {low:g}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type`` for numbers > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a value > 0, got {text}")
    return value
