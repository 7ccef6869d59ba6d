"""The embedded expert dataset (data/pusht/pusht_expert.zarr): layout, seeds, and that its episodes
replay to success in the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from dpolicy.collect import EVAL_SEEDS
from dpolicy.data.replay_buffer import ReplayBuffer
from dpolicy.paths import EMBEDDED_PUSHT
from envs.pusht.sim import PushTSim


@pytest.fixture(scope="module")
def embedded():
    assert EMBEDDED_PUSHT.is_dir(), f"{EMBEDDED_PUSHT} is missing: see data/README.md to regenerate it"
    buffer = ReplayBuffer.open(EMBEDDED_PUSHT)
    yield buffer
    buffer.close()


def test_layout_matches_the_human_data(embedded):
    assert embedded.n_episodes == 200
    assert embedded.keys() == ["action", "keypoint", "n_contacts", "state"]
    n = embedded.n_steps
    shapes = {"action": (n, 2), "keypoint": (n, 9, 2), "n_contacts": (n, 1), "state": (n, 5)}
    for key, shape in shapes.items():
        assert embedded[key].shape == shape and embedded[key].dtype == np.float32
    assert embedded.episode_lengths.max() <= 300
    size = sum(f.stat().st_size for f in EMBEDDED_PUSHT.rglob("*") if f.is_file())
    assert size < 8 * 2**20, f"embedded dataset is {size / 2**20:.1f} MB; it must stay small enough to commit"


def test_seeds_are_recorded_unique_and_not_evaluation_seeds(embedded):
    seeds = [int(s) for s in embedded.attrs["episode_seeds"]]
    assert len(seeds) == embedded.n_episodes == len(set(seeds))
    assert not set(seeds) & set(EVAL_SEEDS)
    assert embedded.attrs["collector"]["source"].startswith("scripted expert")


@pytest.mark.parametrize("index", [0, 57, 123, 199])
def test_episode_replays_from_its_seed_and_ends_at_success(embedded, index):
    seed = int(embedded.attrs["episode_seeds"][index])
    episode = embedded.get_episode(index)
    sim = PushTSim()
    sim.reset_legacy(seed)
    for t, action in enumerate(episode["action"]):
        np.testing.assert_allclose(episode["state"][t, :4], sim.get_state()[:4], atol=1e-3)
        assert sim.coverage() <= 0.95, f"episode {index} should have ended before step {t}"
        sim.step(action.astype(np.float64))
    assert sim.coverage() > 0.95
