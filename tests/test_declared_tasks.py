"""A task from config alone: declared observation keys, the configs `dpolicy data info` suggests,
user config folders, per-key frames in the encoder, and the offline metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpolicy.config import compose_config
from dpolicy.data.datasets import build_dataset, make_dataset
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer
from dpolicy.data.suggest import encoder_for_image, suggest_configs, write_suggested_configs
from dpolicy.errors import ConfigError
from dpolicy.evaluation.offline import evaluate_offline
from dpolicy.models.obs_encoder import ObservationEncoder

LENGTHS = (12, 9, 15, 10)


def write_robot_store(path, lengths=LENGTHS, image_dtype=np.uint8):
    """Episodes whose arrays encode the global step t: joints t + j/10, gripper -t, images filled with t % 256."""
    with ReplayBuffer.create(path) as buffer:
        first = 0
        for length in lengths:
            t = np.arange(first, first + length, dtype=np.float32)
            buffer.append_episode({
                "joints": t[:, None] + np.arange(7, dtype=np.float32) / 10,
                "gripper": -t[:, None],
                "cam": np.broadcast_to((t % 256).astype(image_dtype)[:, None, None, None], (length, 16, 16, 3)).copy(),
                "arm_action": t[:, None] + 0.5 + np.zeros((1, 7), np.float32),
                "gripper_action": (t[:, None] % 2).astype(np.float32),
            })
            first += length
    return path


OBS = {
    "state": {"source": ["joints", "gripper"], "shape": [8], "type": "low_dim"},
    "cam": {"source": "cam", "shape": [16, 16, 3], "type": "rgb", "frames": 1},
}
ACTION = {"source": ["arm_action", "gripper_action"], "shape": [8]}


def test_declared_keys_concatenate_their_sources_per_step(tmp_path):
    ds = make_dataset(write_robot_store(tmp_path / "r.zarr"), OBS, ACTION, horizon=4, n_obs_steps=2,
                      n_action_steps=2, val_ratio=0.0)
    assert ds.shape_meta["obs"] == {"state": {"shape": [8], "type": "low_dim"},
                                    "cam": {"shape": [16, 16, 3], "type": "rgb", "frames": 1}}
    assert ds.shape_meta["action"] == {"shape": [8]}
    batch = ds.get_batch(np.arange(len(ds)))
    state, cam, action = batch["obs"]["state"].numpy(), batch["obs"]["cam"].numpy(), batch["action"].numpy()
    steps = state[..., 0]  # joint 0 is the step index
    offsets = state[..., 1:7] - steps[..., None]
    np.testing.assert_allclose(offsets, np.broadcast_to(np.arange(1, 7) / 10, offsets.shape), atol=1e-5)
    np.testing.assert_array_equal(state[..., 7], -steps)
    np.testing.assert_array_equal(cam[..., 0, 0, 0], steps % 256)
    assert cam.dtype == np.uint8
    np.testing.assert_array_equal(action[..., :7], np.broadcast_to(action[..., :1], action[..., :7].shape))
    np.testing.assert_array_equal(action[..., 7], (action[..., 0] - 0.5) % 2)


@pytest.mark.parametrize("obs, action, message", [
    ({"state": {"source": "joint", "shape": [7]}}, {"shape": [8]}, "observation 'state' reads data/joint, which"),
    ({"state": {"source": "joints", "shape": [8]}}, ACTION, "7 numbers per step; the config says shape [8]"),
    ({"cam": {"source": "cam", "shape": [32, 32, 3], "type": "rgb"}}, ACTION, "expected one array of per-step "
                                                                              "shape [32, 32, 3]"),
    ({"cam": {"source": "joints", "shape": [7], "type": "rgb"}}, ACTION, "an rgb key has shape [H, W, C], got [7]"),
    ({"cam": {"source": "gripper", "shape": [1, 1, 1], "type": "rgb"}}, ACTION,
     "reads data/gripper [1], expected one array of per-step shape [1, 1, 1]"),
    ({"x": {"source": "joints", "shape": [7], "type": "depth"}}, ACTION, "type must be low_dim or rgb"),
    ({"state": {"source": "joints", "shape": [7]}}, {"source": "action", "shape": [8]},
     "action reads data/action, which the dataset does not have"),
    ({"state": {"source": "joints", "shape": [7]}}, {"source": "arm_action", "shape": [8]},
     "action reads data/arm_action [7], 7 numbers per step; the config says shape [8]"),
])
def test_declaration_mismatches_name_the_key_and_what_was_expected(tmp_path, obs, action, message):
    path = write_robot_store(tmp_path / "r.zarr")
    with pytest.raises(DatasetError) as caught:
        make_dataset(path, obs, action, horizon=4, n_obs_steps=2, n_action_steps=2)
    assert message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_int16_images_are_refused_but_float_images_are_converted(tmp_path):
    path = write_robot_store(tmp_path / "f.zarr", image_dtype=np.float32)
    ds = make_dataset(path, OBS, ACTION, horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.0)
    assert ds.get_batch([3])["obs"]["cam"].dtype == torch.uint8
    bad = write_robot_store(tmp_path / "i.zarr", image_dtype=np.int16)
    with pytest.raises(DatasetError, match="data/cam has dtype int16, expected uint8 images"):
        make_dataset(bad, OBS, ACTION, horizon=4, n_obs_steps=2, n_action_steps=2)


def test_suggested_configs_train_from_a_user_config_folder(tmp_path):
    path = write_robot_store(tmp_path / "robot.zarr")
    with ReplayBuffer.open(path) as buffer:
        task_text, experiment_text = suggest_configs(buffer, "my_robot")
        assert "cam: {source: cam, shape: [16, 16, 3], type: rgb}" in task_text
        assert "joints: {source: joints, shape: [7], type: low_dim}" in task_text
        assert "env_id: null" in task_text and "policy: diffusion_unet_image_cpu" in experiment_text
        # no array is named "action": the first one named like an action is suggested, to be edited
        assert "action: {source: arm_action, shape: [7]}" in task_text
        write_suggested_configs(buffer, "my_robot", tmp_path / "configs")
        with pytest.raises(Exception, match="exists"):
            write_suggested_configs(buffer, "my_robot", tmp_path / "configs")
    cfg = compose_config("my_robot", ["horizon=8", "n_action_steps=4"], config_dir=tmp_path / "configs")
    assert cfg.task.env_id is None and cfg.policy.name == "diffusion"
    assert list(cfg.policy.crop_shape) == encoder_for_image(16, 16)["crop_shape"]
    dataset = build_dataset(cfg.task.dataset)
    assert set(dataset.shape_meta["obs"]) == {"joints", "gripper", "cam", "gripper_action"}
    # a task of the user's folder also works under a package experiment
    cfg = compose_config("pusht_lowdim", ["task=my_robot"], config_dir=tmp_path / "configs")
    assert cfg.task.name == "my_robot"
    with pytest.raises(ConfigError, match="Could not find 'task/nope'"):
        compose_config("pusht_lowdim", ["task=nope"], config_dir=tmp_path / "configs")


def test_encoder_sizes_leave_a_feature_map_for_the_spatial_softmax():
    for side in (16, 32, 48, 96, 240):
        encoder = encoder_for_image(side, side)
        crop, stages = encoder["crop_shape"][0], encoder["resnet_stages"]
        enc = ObservationEncoder({"cam": {"shape": [side, side, 3], "type": "rgb"}}, 1,
                                 crop_shape=encoder["crop_shape"], resnet_stages=stages,
                                 resnet_width=encoder["resnet_width"])
        features = enc.image_encoders["cam"].trunk(torch.zeros(1, 3, crop, crop))
        assert features.shape[-1] >= 2, (side, features.shape)


def test_a_key_with_one_frame_ignores_its_older_frames():
    spec = {"a": {"shape": [3], "type": "low_dim"}, "b": {"shape": [2], "type": "low_dim", "frames": 1}}
    enc = ObservationEncoder(spec, n_obs_steps=3)
    assert enc.output_dim == 3 * 3 + 1 * 2
    obs = {"a": torch.randn(4, 3, 3), "b": torch.randn(4, 3, 2)}
    out = enc(obs)
    assert out.shape == (4, 11)
    changed = {"a": obs["a"], "b": obs["b"].clone()}
    changed["b"][:, :2] += 5.0  # older frames of b
    torch.testing.assert_close(enc(changed), out)
    changed["b"][:, 2] += 1.0  # its newest frame
    assert not torch.allclose(enc(changed), out)
    # step-major order: frame 0 of a, frame 1 of a, frame 2 of a then b's only frame
    torch.testing.assert_close(out[:, -2:], obs["b"][:, -1])
    with pytest.raises(ValueError, match="frames must be in 1..n_obs_steps"):
        ObservationEncoder({"a": {"shape": [3], "frames": 4}}, n_obs_steps=3)


class OraclePolicy(torch.nn.Module):
    """Plans the demonstrated chunk of the synthetic store (actions are the step index + 0.5), with
    every second sample shifted by ``offset`` in the first action dimension."""

    n_obs_steps, n_action_steps = 2, 2

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.device = torch.device("cpu")

    def predict_action(self, obs, generator=None):
        step = obs["state"][:, -1, :1]  # (B, 1): the step of the newest observation
        chunk = (step[:, None, :] + 0.5 + torch.arange(2.0)[None, :, None]).repeat(1, 1, 8)
        chunk[:, :, 7] = (step + torch.arange(2.0)[None]) % 2
        chunk[1::2, :, 0] += self.offset
        return {"action": chunk}


def test_offline_metrics_of_an_exact_and_a_two_mode_policy(tmp_path):
    ds = make_dataset(write_robot_store(tmp_path / "r.zarr"), OBS, ACTION, horizon=4, n_obs_steps=2,
                      n_action_steps=2, val_ratio=0.5, seed=0).get_validation_dataset()
    exact = evaluate_offline(OraclePolicy(0.0), ds, n_samples=4)
    assert exact["action_error_min"] == pytest.approx(0.0, abs=1e-6)
    assert exact["action_error_mean"] == pytest.approx(0.0, abs=1e-6)
    assert exact["multimodality"] == pytest.approx(0.0, abs=1e-6) and exact["n_windows"] == len(ds)
    two_modes = evaluate_offline(OraclePolicy(3.0), ds, n_samples=4)
    assert two_modes["action_error_min"] == pytest.approx(0.0, abs=1e-6)  # the right mode is among the samples
    assert two_modes["action_error_mean"] == pytest.approx(1.5, abs=1e-5)  # half the samples 3 units off
    assert two_modes["multimodality"] == pytest.approx(1.0, abs=1e-6)
    assert two_modes["sample_spread"] == pytest.approx(1.5, abs=1e-5)
    assert two_modes["action_error_per_dim"][0] == pytest.approx(0.0, abs=1e-6)
    empty = make_dataset(tmp_path / "r.zarr", OBS, ACTION, horizon=4, n_obs_steps=2, n_action_steps=2,
                         val_ratio=0.0).get_validation_dataset()
    with pytest.raises(ValueError, match="no held-out windows"):
        evaluate_offline(OraclePolicy(0.0), empty)


def test_the_evaluation_mode_follows_the_simulator_and_refuses_rollouts_without_one():
    from dpolicy.training.trainer import evaluation_mode

    assert evaluation_mode(compose_config("point_lowdim")) == "rollouts"
    assert evaluation_mode(compose_config("point_lowdim", ["task.env_id=null"])) == "offline"
    assert evaluation_mode(compose_config("toy_arm")) == "offline"  # a simulator, evaluated as without one
    with pytest.raises(ConfigError, match="needs a simulator, but task.env_id is null"):
        evaluation_mode(compose_config("point_lowdim", ["task.env_id=null", "training.eval.mode=rollouts"]))
    from omegaconf import OmegaConf

    # a config without a training section (an older checkpoint's, a hand-made one) still has a mode
    assert evaluation_mode(OmegaConf.create({"task": {"env_id": None}})) == "offline"
    assert evaluation_mode(OmegaConf.create({"task": {"env_id": "envs/PushT-v0"}})) == "rollouts"
    with pytest.raises(ConfigError, match="expected auto, rollouts or offline"):
        evaluation_mode(compose_config("point_lowdim", ["training.eval.mode=sometimes"]))
