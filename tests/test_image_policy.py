"""The image policy learns from pixels: spatial-softmax keypoints sit on the feature map's peaks,
and a tiny image policy trained by the same trainer tells two scenes apart by their images alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpolicy.config import compose_config
from dpolicy.data.replay_buffer import ReplayBuffer
from dpolicy.models.resnet import SpatialSoftmax
from dpolicy.training.checkpoint import load_policy
from dpolicy.training.logging import read_log
from dpolicy.training.trainer import Trainer


@pytest.mark.parametrize("height, width", [(7, 7), (6, 10)])
def test_spatial_softmax_keypoints_land_on_each_maps_peak(height, width):
    peaks = [(1, 2), (height // 2, width // 2), (height - 2, 1), (3, width - 3)]  # (row, col), interior
    pool = SpatialSoftmax(len(peaks), num_keypoints=len(peaks))
    with torch.no_grad():  # keypoint k reads channel k only
        pool.keypoint_conv.weight.copy_(torch.eye(len(peaks))[:, :, None, None])
        pool.keypoint_conv.bias.zero_()
    features = torch.zeros(1, len(peaks), height, width)
    for k, (row, col) in enumerate(peaks):
        features[0, k, row, col] = 50.0
    expected = torch.tensor([[-1 + 2 * col / (width - 1), -1 + 2 * row / (height - 1)] for row, col in peaks])
    torch.testing.assert_close(pool(features).reshape(len(peaks), 2), expected, atol=1e-4, rtol=0)


def test_spatial_softmax_keypoint_between_two_equal_peaks_is_their_midpoint():
    pool = SpatialSoftmax(1, num_keypoints=1)
    with torch.no_grad():
        pool.keypoint_conv.weight.fill_(1.0)
        pool.keypoint_conv.bias.zero_()
    features = torch.zeros(1, 1, 9, 9)
    features[0, 0, 2, 2] = features[0, 0, 6, 4] = 50.0
    torch.testing.assert_close(pool(features), torch.tensor([[-0.25, 0.0]]), atol=1e-4, rtol=0)


# Two one-window episodes with the same agent position and opposite demonstrated motions: only the
# image (a bright square on the left or on the right) says which way to go.
LENGTH, START, STEP = 4, 256.0, 15.0  # LENGTH = n_action_steps: one training window per episode


def _scene_dataset(path: Path) -> Path:
    buf = ReplayBuffer.create(path)
    for side in (-1, 1):
        img = np.full((LENGTH, 96, 96, 3), 30, np.uint8)
        cols = slice(8, 32) if side < 0 else slice(64, 88)
        img[:, 36:60, cols] = 230
        state = np.tile(np.array([START, START, 200.0, 200.0, 0.0], np.float32), (LENGTH, 1))
        action = np.stack([START + side * STEP * np.arange(1, LENGTH + 1), np.full(LENGTH, START)], 1)
        buf.append_episode({"img": img, "state": state, "action": action.astype(np.float32)})
    buf.close()
    return path


def test_a_tiny_image_policy_overfits_its_windows_from_pixels_through_the_trainer(tmp_path):
    dataset = _scene_dataset(tmp_path / "scenes.zarr")
    run = tmp_path / "run"
    cfg = compose_config("pusht_image", [
        f"task.dataset.path={dataset}", f"run_dir={run}", "task.dataset.val_ratio=0",
        "horizon=8", "n_obs_steps=2", "n_action_steps=4",
        "policy.down_dims=[16,32]", "policy.kernel_size=3", "policy.n_groups=4", "policy.step_embed_dim=16",
        # predicting the clean chunk (not the noise) lets a tiny network overfit in a few hundred steps
        "policy.num_train_timesteps=20", "policy.num_inference_steps=4", "policy.prediction_type=sample",
        "policy.crop_shape=null",
        "policy.resnet_width=16", "policy.resnet_stages=1", "policy.num_keypoints=8", "policy.image_feature_dim=16",
        "training.batch_size=16", "training.max_steps=300", "training.max_minutes=null", "training.lr=3e-3",
        "training.warmup_steps=10", "training.log_every=10", "training.val_every=0", "training.eval_every=0",
        "training.checkpoint_every=1000", "training.progress=false", "training.ema.enabled=false",
        "training.num_threads=1", "training.compile=false", "training.bf16=false", "device=cpu"])
    summary = Trainer(cfg).train()
    assert summary["step"] == 300
    losses = [r["train_loss"] for r in read_log(run / "log.jsonl") if "train_loss" in r]
    assert losses[-1] < 0.01 * losses[0], losses

    policy, _ = load_policy(run / "checkpoints" / "latest.safetensors")
    with ReplayBuffer.open(dataset) as buf:
        episodes = [buf.get_episode(i) for i in range(2)]
    generator = torch.Generator().manual_seed(0)
    predicted = []
    for episode in episodes:  # the first window: the first frame twice (padding), then steps 0.. onward
        obs = {"image": torch.as_tensor(episode["img"][[0, 0]])[None],
               "agent_pos": torch.as_tensor(episode["state"][[0, 0], :2])[None]}
        predicted.append(policy.predict_action(obs, generator=generator)["action"][0].numpy())
    for episode, actions in zip(episodes, predicted, strict=True):
        demonstrated = episode["action"][:len(actions)]
        error = np.abs(actions - demonstrated).max()
        assert error < 2.0, (actions, demonstrated)  # px, against 15 px between consecutive actions
    # the two scenes' chunks go opposite ways, as their demonstrations do
    assert predicted[0][-1, 0] < START - 2 * STEP < START + 2 * STEP < predicted[1][-1, 0], predicted
