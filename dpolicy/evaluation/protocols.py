"""Named lists of environment seeds to evaluate on.

- ``paper``: the Diffusion Policy paper's 50 test episodes, seeds 100000..100049.
- ``large``: 500 episodes from seed 100000 (a tighter success-rate estimate).
- ``train``: seeds 0..49, the original benchmark's training seeds (``train_start_seed = 0``),
  the starts its human demonstrations were recorded from.
- any explicit list: ``[1, 2, 3]``, ``"1,2,3"``, ``"100000-100009"`` (inclusive range) or a mix
  such as ``"5,10-12"``.
"""

from __future__ import annotations

from collections.abc import Iterable

TEST_START_SEED = 100_000
TRAIN_START_SEED = 0

PROTOCOLS: dict[str, tuple[int, int]] = {  # name -> (first seed, number of episodes)
    "paper": (TEST_START_SEED, 50),
    "large": (TEST_START_SEED, 500),
    "train": (TRAIN_START_SEED, 50),
}


def _parse_seed_text(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            if sep:
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"bad seed list item {part!r} in {text!r}: use protocol names "
                             f"{sorted(PROTOCOLS)}, integers 'a,b,c' or inclusive ranges 'a-b'") from None
    return seeds


def protocol_seeds(name_or_list: str | int | Iterable[int]) -> list[int]:
    """The seeds of a protocol name (``paper``, ``large``, ``train``) or of an explicit seed list."""
    if isinstance(name_or_list, bool):
        raise TypeError("protocol must be a name or a list of seeds, got a bool")
    if isinstance(name_or_list, int):
        seeds = [name_or_list]
    elif isinstance(name_or_list, str):
        if name_or_list in PROTOCOLS:
            start, count = PROTOCOLS[name_or_list]
            return list(range(start, start + count))
        seeds = _parse_seed_text(name_or_list)
    else:
        seeds = [int(s) for s in name_or_list]
    if not seeds:
        raise ValueError(f"protocol {name_or_list!r} gives no seeds; known names: {sorted(PROTOCOLS)}")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds}")
    return seeds
