"""Two equally good actions: Diffusion Policy and IBC keep both modes, MSE regression averages them."""

import pytest

from dpolicy.experiments.multimodal import MODE_X, run_comparison


@pytest.mark.slow
def test_distribution_models_keep_both_modes_and_regression_averages():
    results = run_comparison(steps=600, n_samples=200, seed=0)
    for name in ("Diffusion Policy", "IBC"):
        assert results[name]["on_mode"] >= 0.8, (name, results[name])
        assert results[name]["minority_mode"] >= 0.1, (name, results[name])
    mse = results["MSE regression"]
    assert mse["on_mode"] < 0.05
    assert mse["mean_abs_x"] < 0.25 * MODE_X  # the average of the two modes, an action nobody showed
