"""Where the package finds datasets it did not create itself.

Nothing is ever downloaded: the human Push-T dataset is read from a local copy, found through
the ``DPOLICY_HUMAN_PUSHT`` environment variable or next to the repository checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout (or, for an installed wheel, the folder holding the package).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Files that ship with the package (links to the top-level configs/ and data/ in a checkout).
RESOURCES = Path(__file__).parent / "resources"
#: The hydra configs.
CONFIG_DIR = RESOURCES / "configs"
#: The embedded expert dataset (see data/README.md).
EMBEDDED_PUSHT = RESOURCES / "data" / "pusht" / "pusht_expert.zarr"


def human_pusht_path() -> Path | None:
    """Path of the original human Push-T demonstrations, or None when not on this machine."""
    candidates = []
    if os.environ.get("DPOLICY_HUMAN_PUSHT"):
        candidates.append(Path(os.environ["DPOLICY_HUMAN_PUSHT"]))
    candidates.append(REPO_ROOT.parent / "shared" / "datasets" / "pusht" / "pusht_cchi_v7_replay.zarr")
    for path in candidates:
        if (path / "meta" / "episode_ends").exists() or (path / "meta" / "episode_ends" / ".zarray").exists():
            return path
    return None
