"""Shared fixtures. Tests that need the original human dataset skip with a clear reason
when it is not on this machine (CI has it next to the checkout, in ../shared)."""

from __future__ import annotations

import pytest

from dpolicy.paths import human_pusht_path


@pytest.fixture(scope="session")
def human_dataset_path():
    path = human_pusht_path()
    if path is None:
        pytest.skip("original human Push-T dataset not found: set DPOLICY_HUMAN_PUSHT or place it at "
                    "../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the checkout")
    return path
