"""Window enumeration with edge padding, and the seeded episode split."""

import numpy as np
import pytest

from dpolicy.data.windows import split_episodes, window_index, windows_per_episode


def test_window_count_per_episode_is_length_minus_ta_plus_one():
    lengths = np.array([8, 9, 16, 49, 246])
    counts = windows_per_episode(lengths, horizon=16, pad_before=1, pad_after=7)  # To = 2, Ta = 8
    np.testing.assert_array_equal(counts, lengths - 8 + 1)
    index = window_index(np.cumsum(lengths), horizon=16, pad_before=1, pad_after=7)
    assert index.shape == (int((lengths - 7).sum()), 16)


def test_episodes_shorter_than_the_padded_horizon_give_no_windows():
    counts = windows_per_episode(np.array([1, 5, 7, 8]), horizon=16, pad_before=1, pad_after=7)
    np.testing.assert_array_equal(counts, [0, 0, 0, 1])


def test_padding_repeats_the_first_and_last_frame():
    # Two episodes: steps 0..4 and 5..10; horizon 4, one frame of padding before, two after.
    index = window_index(np.array([5, 11]), horizon=4, pad_before=1, pad_after=2)
    expected_first_episode = [
        [0, 0, 1, 2],  # starts one step before the episode: step 0 repeated
        [0, 1, 2, 3],
        [1, 2, 3, 4],
        [2, 3, 4, 4],  # runs past the end: step 4 repeated
        [3, 4, 4, 4],
    ]
    np.testing.assert_array_equal(index[:5], expected_first_episode)
    np.testing.assert_array_equal(index[5], [5, 5, 6, 7])
    np.testing.assert_array_equal(index[-1], [9, 10, 10, 10])
    assert len(index) == 5 + 6
    assert index.dtype == np.int64


def test_windows_never_cross_episode_boundaries():
    ends = np.cumsum([3, 20, 9, 40])
    index = window_index(ends, horizon=16, pad_before=1, pad_after=7)
    episode = np.searchsorted(ends, index, side="right")
    assert (episode == episode[:, :1]).all()
    assert (np.diff(index, axis=1) >= 0).all() and (np.diff(index, axis=1) <= 1).all()


def test_episode_subset_uses_the_rows_of_those_episodes():
    ends = np.cumsum([10, 12, 9])
    full = window_index(ends, horizon=16, pad_before=1, pad_after=7)
    subset = window_index(ends, horizon=16, pad_before=1, pad_after=7, episodes=np.array([2, 0]))
    first_step_episode = np.searchsorted(ends, subset[:, 0], side="right")
    assert set(first_step_episode) == {0, 2}
    full_rows = {tuple(r) for r in full}
    assert all(tuple(r) in full_rows for r in subset)
    assert len(subset) == (10 - 7) + (9 - 7)


@pytest.mark.parametrize("kwargs", [dict(horizon=0, pad_before=0, pad_after=0),
                                    dict(horizon=4, pad_before=-1, pad_after=0),
                                    dict(horizon=4, pad_before=4, pad_after=0)])
def test_bad_window_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError, match="horizon|pad"):
        window_index(np.array([10]), **kwargs)


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_episodes(206, val_ratio=0.02, seed=42)
    assert len(val) == 4 and len(train) == 202
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(206))
    again_train, again_val = split_episodes(206, val_ratio=0.02, seed=42)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    _, other_val = split_episodes(206, val_ratio=0.02, seed=43)
    assert not np.array_equal(val, other_val)
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()


def test_split_caps_training_episodes_and_keeps_validation():
    train, val = split_episodes(206, val_ratio=0.02, seed=0, max_train_episodes=90)
    _, uncapped_val = split_episodes(206, val_ratio=0.02, seed=0)
    assert len(train) == 90
    np.testing.assert_array_equal(val, uncapped_val)
    assert set(train).isdisjoint(val)


def test_split_edge_cases():
    train, val = split_episodes(5, val_ratio=0.0, seed=0)
    assert len(val) == 0 and len(train) == 5
    train, val = split_episodes(1, val_ratio=0.5, seed=0)  # never leaves training empty
    assert list(train) == [0] and len(val) == 0
    train, val = split_episodes(10, val_ratio=0.01, seed=0)  # a positive ratio holds out at least one
    assert len(val) == 1
    with pytest.raises(ValueError, match="val_ratio"):
        split_episodes(10, val_ratio=1.0, seed=0)
    with pytest.raises(ValueError, match="max_train_episodes"):
        split_episodes(10, val_ratio=0.1, seed=0, max_train_episodes=0)
