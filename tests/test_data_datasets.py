"""Windowed datasets: window contents and padding, splits, normalizer fitting, Push-T presets."""

import numpy as np
import pytest
import torch

from dpolicy.data.datasets import (
    ObsSource,
    WindowDataset,
    make_pusht_image_dataset,
    make_pusht_lowdim_dataset,
)
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer
from dpolicy.data.synthetic import step_of_action, write_synthetic_pusht
from dpolicy.data.windows import window_index

LENGTHS = [20, 30, 25, 12, 40, 9, 8]
HORIZON, TO, TA = 16, 2, 8


@pytest.fixture(scope="module")
def pusht(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pusht.zarr"
    write_synthetic_pusht(path, LENGTHS).close()
    return path


def reference_windows(lengths, episodes, horizon=HORIZON, pad_before=TO - 1, pad_after=TA - 1):
    """Step indices of each window, written out step by step."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    windows = []
    for e in episodes:
        first, n = starts[e], lengths[e]
        for offset in range(-pad_before, n - horizon + pad_after + 1):
            windows.append([first + min(max(offset + k, 0), n - 1) for k in range(horizon)])
    return np.array(windows)


def test_lowdim_windows_hold_the_right_steps_with_edge_padding(pusht):
    ds = make_pusht_lowdim_dataset(pusht, val_ratio=0.0)
    assert len(ds) == sum(n - TA + 1 for n in LENGTHS)
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["action"].shape == (len(ds), HORIZON, 2) and batch["action"].dtype == torch.float32
    assert batch["obs"]["obs"].shape == (len(ds), TO, 20) and batch["obs"]["obs"].dtype == torch.float32
    steps = step_of_action(batch["action"].numpy())
    np.testing.assert_array_equal(steps, reference_windows(LENGTHS, range(len(LENGTHS))))
    # Observations are the first To steps of each window: 9 keypoints flattened, then agent (x, y).
    with ReplayBuffer.open(pusht) as buffer:
        keypoint, state = buffer.load("keypoint"), buffer.load("state")
    expected_obs = np.concatenate([keypoint.reshape(-1, 18), state[:, :2]], axis=1)[steps[:, :TO]]
    np.testing.assert_array_equal(batch["obs"]["obs"].numpy(), expected_obs)
    # The first window of an episode repeats its first frame; the last one repeats its last action.
    np.testing.assert_array_equal(steps[0, :3], [0, 0, 1])
    last_of_first_episode = LENGTHS[0] - TA
    np.testing.assert_array_equal(steps[last_of_first_episode, -TA:], [LENGTHS[0] - 1] * TA)


def test_image_windows_are_uint8_hwc_and_match_the_recorded_frames(tmp_path):
    path = tmp_path / "float_images.zarr"
    write_synthetic_pusht(path, [12, 9], image_dtype="float32").close()  # stored like the human set
    ds = make_pusht_image_dataset(path, val_ratio=0.0)
    assert ds.shape_meta == {"obs": {"image": {"shape": [96, 96, 3], "type": "rgb"},
                                     "agent_pos": {"shape": [2], "type": "low_dim"}},
                             "action": {"shape": [2]}}
    batch = ds.get_batch([0, 3, len(ds) - 1])
    image, agent = batch["obs"]["image"], batch["obs"]["agent_pos"]
    assert image.shape == (3, TO, 96, 96, 3) and image.dtype == torch.uint8
    assert agent.shape == (3, TO, 2) and agent.dtype == torch.float32
    steps = step_of_action(batch["action"].numpy())[:, :TO]
    with ReplayBuffer.open(path) as buffer:
        frames, state = buffer["img"][:], buffer.load("state")
    np.testing.assert_array_equal(image.numpy(), frames[steps].astype(np.uint8))
    np.testing.assert_array_equal(agent.numpy(), state[steps][..., :2])


def test_split_by_episode_and_validation_view(pusht):
    ds = make_pusht_lowdim_dataset(pusht, val_ratio=0.3, seed=1)
    train, val = ds.train_episode_indices, ds.val_episode_indices
    assert len(val) == 2 and len(train) == 5 and set(train).isdisjoint(val)
    val_ds = ds.get_validation_dataset()
    assert val_ds.shape_meta == ds.shape_meta
    assert len(val_ds) == sum(LENGTHS[e] - TA + 1 for e in val)
    val_steps = step_of_action(val_ds.get_batch(np.arange(len(val_ds)))["action"].numpy())
    np.testing.assert_array_equal(val_steps, reference_windows(LENGTHS, val))
    train_steps = step_of_action(ds.get_batch(np.arange(len(ds)))["action"].numpy())
    np.testing.assert_array_equal(train_steps, reference_windows(LENGTHS, train))
    again = make_pusht_lowdim_dataset(pusht, val_ratio=0.3, seed=1)
    np.testing.assert_array_equal(again.val_episode_indices, val)


def test_max_train_episodes_caps_the_training_split(pusht):
    ds = make_pusht_lowdim_dataset(pusht, val_ratio=0.2, seed=0, max_train_episodes=3)
    assert len(ds.train_episode_indices) == 3
    assert len(ds) == sum(LENGTHS[e] - TA + 1 for e in ds.train_episode_indices)
    assert set(ds.train_episode_indices).isdisjoint(ds.val_episode_indices)


def test_normalizer_is_fitted_on_training_episodes_only(pusht):
    ds = make_pusht_lowdim_dataset(pusht, val_ratio=0.3, seed=2)
    # Synthetic values grow with the step: the held-out last episode holds the dataset's maxima.
    assert 6 in ds.val_episode_indices
    normalizer = ds.fit_normalizer()
    with ReplayBuffer.open(pusht) as buffer:
        train = ds.train_episode_indices
        action = buffer.load("action", episodes=train)
        obs = np.concatenate([buffer.load("keypoint", episodes=train).reshape(-1, 18),
                              buffer.load("state", episodes=train)[:, :2]], axis=1)
        all_actions = buffer.load("action")
    lo, hi = normalizer.input_range("action")
    np.testing.assert_array_equal(lo.numpy(), action.min(axis=0))
    np.testing.assert_array_equal(hi.numpy(), action.max(axis=0))
    assert (hi.numpy() < all_actions.max(axis=0)).all()
    lo, hi = normalizer.input_range("obs")
    np.testing.assert_array_equal(lo.numpy(), obs.min(axis=0))
    batch = ds.get_batch(np.arange(len(ds)))
    normalized = normalizer.normalize("action", batch["action"])
    assert normalized.min() >= -1 - 1e-6 and normalized.max() <= 1 + 1e-6
    torch.testing.assert_close(normalizer.unnormalize("action", normalized), batch["action"])


def test_image_normalizer_maps_pixels_to_unit_range(pusht):
    normalizer = make_pusht_image_dataset(pusht, val_ratio=0.0).fit_normalizer()
    assert normalizer.kinds == {"image": "rgb", "agent_pos": "low_dim", "action": "low_dim"}
    pixels = torch.tensor([0, 255], dtype=torch.uint8)
    torch.testing.assert_close(normalizer.normalize("image", pixels), torch.tensor([-1.0, 1.0]))


def test_single_windows_work_with_a_torch_dataloader(pusht):
    ds = make_pusht_lowdim_dataset(pusht, val_ratio=0.0)
    item = ds[5]
    assert item["obs"]["obs"].shape == (TO, 20) and item["action"].shape == (HORIZON, 2)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)))
    torch.testing.assert_close(batch["action"], ds.get_batch(np.arange(4))["action"])
    with pytest.raises(IndexError, match="window indices must be in"):
        ds.get_batch([len(ds)])


def test_generic_dataset_builds_observations_from_a_description(pusht):
    def block_pose(state):
        return state[:, 2:]

    obs = {"block": ObsSource({"state": (5,)}, build=block_pose)}
    ds = WindowDataset(pusht, obs, horizon=4, n_obs_steps=3, n_action_steps=2)
    assert ds.shape_meta["obs"] == {"block": {"shape": [3], "type": "low_dim"}}
    assert len(ds) == sum(n + 2 + 1 - 4 + 1 for n in LENGTHS)
    batch = ds.get_batch([0])
    assert batch["obs"]["block"].shape == (1, 3, 3) and batch["action"].shape == (1, 4, 2)
    with pytest.raises(ValueError, match="n_action_steps"):
        WindowDataset(pusht, obs, horizon=4, n_obs_steps=3, n_action_steps=3)


def test_missing_or_misshaped_inputs_are_named(tmp_path, pusht):
    lowdim_only = tmp_path / "lowdim.zarr"
    write_synthetic_pusht(lowdim_only, [10, 10], image_size=None).close()
    with pytest.raises(DatasetError, match=r"missing array data/img .*dpolicy data render-images"):
        make_pusht_image_dataset(lowdim_only)
    with pytest.raises(DatasetError, match=r"data/state has per-step shape \(5,\), expected \(4,\)"):
        WindowDataset(pusht, {"x": ObsSource({"state": (4,)})})
    with ReplayBuffer.open(lowdim_only, mode="a") as buffer:
        buffer["keypoint"][13, 4, 1] = np.nan
    with pytest.raises(DatasetError, match="data/keypoint contains NaN or inf"):
        make_pusht_lowdim_dataset(lowdim_only)


# ---------------------------------------------------------------------------------- the human dataset
@pytest.mark.human_data
def test_human_dataset_windows_and_padding(human_dataset_path):
    with ReplayBuffer.open(human_dataset_path) as buffer:
        assert buffer.n_episodes == 206 and buffer.n_steps == 25_650
        lengths = buffer.episode_lengths
        first_action, last_action = buffer["action"][0], buffer["action"][buffer.n_steps - 1]
        first_obs = np.concatenate([buffer["keypoint"][0].ravel(), buffer["state"][0][:2]])
    ds = make_pusht_lowdim_dataset(human_dataset_path, val_ratio=0.0)
    assert len(ds) == int((lengths - TA + 1).sum()) == 25_650 - 206 * 7
    episode_of_window = np.searchsorted(np.cumsum(lengths), window_index(
        np.cumsum(lengths), HORIZON, TO - 1, TA - 1)[:, 0], side="right")
    np.testing.assert_array_equal(np.bincount(episode_of_window, minlength=206), lengths - TA + 1)
    first = ds.get_batch([0])
    np.testing.assert_array_equal(first["obs"]["obs"][0].numpy(), [first_obs, first_obs])
    np.testing.assert_array_equal(first["action"][0, :2].numpy(), [first_action, first_action])
    last = ds.get_batch([len(ds) - 1])
    np.testing.assert_array_equal(last["action"][0, -TA:].numpy(), np.tile(last_action, (TA, 1)))

    paper = make_pusht_lowdim_dataset(human_dataset_path, max_train_episodes=90)
    assert len(paper.train_episode_indices) == 90 and len(paper.val_episode_indices) == 4
    assert len(paper) == int((lengths[paper.train_episode_indices] - TA + 1).sum())


@pytest.mark.human_data
def test_human_image_dataset_holds_uint8_frames(human_dataset_path):
    ds = make_pusht_image_dataset(human_dataset_path, max_train_episodes=20)
    assert ds.shape_meta["obs"]["image"] == {"shape": [96, 96, 3], "type": "rgb"}
    batch = ds.get_batch(np.arange(0, len(ds), 97))
    assert batch["obs"]["image"].dtype == torch.uint8
    first_episode = int(ds.train_episode_indices[0])
    with ReplayBuffer.open(human_dataset_path) as buffer:
        frame = buffer["img"][buffer.episode_slice(first_episode).start]
        used = np.union1d(ds.train_episode_indices, ds.val_episode_indices)
        used_steps = int(buffer.episode_lengths[used].sum())
    np.testing.assert_array_equal(batch["obs"]["image"][0, 0].numpy(), frame.astype(np.uint8))
    # Only the used episodes (20 training + 4 validation) are held, images as uint8 (1 byte per value).
    image_bytes = used_steps * 96 * 96 * 3
    assert image_bytes <= ds.nbytes < 1.1 * image_bytes
