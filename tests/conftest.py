"""Shared fixtures. Tests that need the original human dataset skip with a clear reason
when it is not on this machine (CI has it next to the checkout, in ../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from dpolicy.paths import human_pusht_path


@pytest.fixture(autouse=True)
def torch_single_thread():
    """Every test runs with one torch thread (the CI machine's 2 cores are shared; results do not
    depend on the thread count); the previous count is restored afterwards, even when the test or
    the code under test (e.g. ``training.num_threads``) changed it. A test that needs more threads
    sets them itself."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def human_dataset_path():
    path = human_pusht_path()
    if path is None:
        pytest.skip("original human Push-T dataset not found: set DPOLICY_HUMAN_PUSHT or place it at "
                    "../shared/datasets/pusht/pusht_cchi_v7_replay.zarr next to the checkout")
    return path


@pytest.fixture
def make_tiny_diffusion_policy():
    """Factory of small untrained Push-T keypoint diffusion policies (20-d observations, 2-d actions),
    with a normalizer fitted to workspace-sized values and seeded weights."""

    def make(horizon: int = 16, n_action_steps: int = 8, scheduler: str = "ddim", steps: int = 4):
        import torch

        from dpolicy.data.normalizer import Normalizer
        from dpolicy.policies.diffusion import DiffusionPolicy

        rng = np.random.default_rng(0)
        spec = {"obs": {"obs": {"shape": [20], "type": "low_dim"}}, "action": {"shape": [2]}}
        normalizer = Normalizer.fit({"obs": rng.uniform(0, 512, (64, 20)),
                                     "action": rng.uniform(0, 512, (64, 2))})
        torch.manual_seed(0)
        return DiffusionPolicy(spec, normalizer, horizon=horizon, n_obs_steps=2, n_action_steps=n_action_steps,
                               down_dims=(16, 32), step_embed_dim=16, inference_scheduler=scheduler,
                               num_inference_steps=steps).eval()

    return make
