"""The per-key normalizer: min-max to [-1, 1], constant dimensions, images, checkpoint round trip."""

import numpy as np
import pytest
import torch

from dpolicy.data.normalizer import Normalizer


def test_min_max_maps_the_fitted_range_to_unit_interval_and_back():
    data = np.array([[0.0, 10.0], [5.0, 30.0], [10.0, 20.0]], dtype=np.float32)
    normalizer = Normalizer.fit({"obs": data})
    x = torch.from_numpy(data)
    y = normalizer.normalize("obs", x)
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0], [0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(normalizer.unnormalize("obs", y), x)
    lo, hi = normalizer.input_range("obs")
    torch.testing.assert_close(lo, torch.tensor([0.0, 10.0]))
    torch.testing.assert_close(hi, torch.tensor([10.0, 30.0]))


def test_fit_works_per_dimension_of_multidimensional_features_and_broadcasts_over_time():
    rng = np.random.default_rng(0)
    data = rng.uniform(-50, 400, size=(100, 9, 2)).astype(np.float32)
    normalizer = Normalizer.fit({"keypoint": data})
    windows = torch.from_numpy(data[:10]).reshape(5, 2, 9, 2)  # (B, To, 9, 2)
    y = normalizer.normalize("keypoint", windows)
    assert y.shape == windows.shape and y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    full = normalizer.normalize("keypoint", torch.from_numpy(data))
    torch.testing.assert_close(full.amin(dim=0), -torch.ones(9, 2))
    torch.testing.assert_close(full.amax(dim=0), torch.ones(9, 2))


def test_constant_dimensions_are_shifted_to_zero_and_invert_exactly():
    data = np.stack([np.linspace(0, 1, 5), np.full(5, 42.0)], axis=1).astype(np.float32)
    normalizer = Normalizer.fit({"x": data})
    y = normalizer.normalize("x", torch.from_numpy(data))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, 1], torch.zeros(5))
    torch.testing.assert_close(normalizer.unnormalize("x", y), torch.from_numpy(data))


def test_images_map_0_255_to_unit_interval_whatever_the_data():
    images = np.full((4, 8, 8, 3), 100, dtype=np.uint8)  # not fitted: the range is fixed
    normalizer = Normalizer.fit({"image": images}, image_keys=("image",))
    assert normalizer.kinds["image"] == "rgb"
    pixels = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    torch.testing.assert_close(normalizer.normalize("image", pixels), torch.tensor([[-1.0, -0.6, 1.0]]))
    back = normalizer.unnormalize("image", torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(back, torch.tensor([0.0, 255.0]))


def test_state_dict_round_trip_through_an_identity_normalizer_from_the_spec():
    rng = np.random.default_rng(1)
    fitted = Normalizer.fit({"obs": rng.normal(size=(50, 20)), "action": rng.uniform(0, 512, size=(50, 2)),
                             "image": np.zeros((1, 96, 96, 3), np.uint8)}, image_keys=("image",))
    spec = {"obs": {"shape": [20], "type": "low_dim"}, "action": {"shape": [2]},
            "image": {"shape": [96, 96, 3], "type": "rgb"}}
    restored = Normalizer.from_spec(spec)
    x = torch.randn(3, 2)
    torch.testing.assert_close(restored.normalize("action", x), x)  # identity before loading
    restored.load_state_dict(fitted.state_dict())
    assert restored.kinds == fitted.kinds
    for key, sample in {"obs": torch.randn(4, 20), "action": torch.rand(4, 2) * 512,
                        "image": torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8)}.items():
        torch.testing.assert_close(restored.normalize(key, sample), fitted.normalize(key, sample))


def test_bad_input_is_rejected_with_the_key_named():
    with pytest.raises(ValueError, match="'obs' contains NaN or inf"):
        Normalizer.fit({"obs": np.array([[1.0], [np.nan]])})
    with pytest.raises(ValueError, match=r"'obs' needs shape \(N, ...\) with N > 0"):
        Normalizer.fit({"obs": np.zeros((0, 3))})
    normalizer = Normalizer.fit({"obs": np.zeros((2, 3))})
    with pytest.raises(KeyError, match="no key 'action'; it has \\['obs'\\]"):
        normalizer.normalize("action", torch.zeros(1, 2))
