"""TorchScript export: parity with the eager policy, the chunk API, the `dpolicy export` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from dpolicy import export
from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.diffusion import DiffusionPolicy
from dpolicy.training.checkpoint import load_policy

LOWDIM = {"obs": {"obs": {"shape": [20], "type": "low_dim"}}, "action": {"shape": [2]}}
IMAGE = {"obs": {"image": {"shape": [96, 96, 3], "type": "rgb"},
                 "agent_pos": {"shape": [2], "type": "low_dim"}},
         "action": {"shape": [2]}}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Torch's 2 OpenMP threads stall for seconds on a loaded 2-core machine; 1 thread is steady."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_policy(spec: dict, scheduler: str = "ddim", steps: int = 5, **kwargs) -> DiffusionPolicy:
    rng = np.random.default_rng(0)
    data = {key: rng.uniform(0, 512, (64, *item["shape"])) for key, item in spec["obs"].items()
            if item["type"] == "low_dim"}
    data["action"] = rng.uniform(0, 512, (64, 2))
    images = tuple(key for key, item in spec["obs"].items() if item["type"] == "rgb")
    data.update({key: np.zeros((1, *spec["obs"][key]["shape"])) for key in images})
    torch.manual_seed(0)
    return DiffusionPolicy(spec, Normalizer.fit(data, image_keys=images), horizon=8, n_obs_steps=2,
                           n_action_steps=4, down_dims=(16, 32), step_embed_dim=16,
                           inference_scheduler=scheduler, num_inference_steps=steps, **kwargs).eval()


@pytest.fixture(scope="module")
def lowdim_export(tmp_path_factory):
    """A DDIM policy (clipped samples) and its loaded export: (policy, module, export.json)."""
    policy = tiny_policy(LOWDIM, "ddim", clip_sample=True)
    out = tmp_path_factory.mktemp("export")
    archive, _ = export.write_export(policy, out)
    return policy, torch.jit.load(str(archive)), json.loads((out / export.METADATA_NAME).read_text())


def test_exported_chunk_matches_the_eager_policy(lowdim_export):
    policy, module, _ = lowdim_export
    for batch, seed in ((1, 0), (3, 1), (7, 2)):  # traced at batch 2: other batch sizes work too
        assert export.parity(policy, module, batch=batch, seed=seed) < 1e-4


def test_exported_ddpm_without_clipping_matches_the_eager_policy(tmp_path):
    policy = tiny_policy(LOWDIM, "ddpm", clip_sample=False)  # noise at every step, the folded update
    module = torch.jit.load(str(export.write_export(policy, tmp_path)[0]))
    assert export.parity(policy, module, batch=3, seed=1) < 1e-4


def test_image_policy_export_matches_the_eager_policy(tmp_path):
    policy = tiny_policy(IMAGE, "ddim", steps=3, crop_shape=(84, 84), image_feature_dim=16, num_keypoints=8)
    archive, info = export.write_export(policy, tmp_path)
    module = torch.jit.load(str(archive))
    assert export.parity(policy, module, batch=2, seed=3) < 1e-4
    assert info["obs_keys"] == ["image", "agent_pos"] and info["obs"]["image"]["dtype"] == "uint8"


def test_forward_returns_the_executable_chunk_and_follows_torch_seed(lowdim_export):
    policy, module, _ = lowdim_export
    obs = export.example_observations(policy, batch=2)
    torch.manual_seed(5)
    action, action_pred = module(obs)
    torch.manual_seed(5)
    again, _ = module(obs)
    assert action.shape == (2, 4, 2) and action_pred.shape == (2, 8, 2)
    torch.testing.assert_close(action, action_pred[:, 1:5])  # actions To-1 .. To-1+Ta of the plan
    torch.testing.assert_close(action, again)
    assert torch.all(torch.isfinite(action_pred))


def test_the_documented_loop_over_encode_and_denoise_reproduces_the_sampler(lowdim_export):
    policy, module, info = lowdim_export
    obs = export.example_observations(policy, batch=2, seed=4)
    noise, step_noise = export.noise_like_policy(policy, 2, torch.Generator().manual_seed(4))
    with torch.no_grad():
        cond, x = module.encode(obs), noise
        for k, (p, q, c0, c1, c2, sigma) in enumerate(info["coefficients"]):
            out = module.denoise(x, cond + module.step_film[k])
            x0 = (p * x + q * out).clamp(-info["clip_range"], info["clip_range"])
            x = c0 * x0 + c1 * x + c2 * out + sigma * step_noise[k]
        mine = (x - module.action_offset) / module.action_scale
        reference = module.sample_with_noise(obs, noise, step_noise)
    torch.testing.assert_close(mine, reference, rtol=0, atol=1e-3)  # same maths, other rounding order


def test_export_refuses_samplers_and_policies_it_cannot_express():
    policy = tiny_policy(LOWDIM, "dpm_solver", steps=4)
    with pytest.raises(ValueError, match="ddim"):
        export.export_policy(policy)
    with pytest.raises(TypeError, match="DiffusionPolicy"):
        export.export_policy(torch.nn.Linear(2, 2))


def test_export_command_writes_a_checked_archive(tmp_path, capsys):
    from dpolicy.bench.realtime import untrained_checkpoint

    checkpoint = untrained_checkpoint(tmp_path / "tiny.safetensors", overrides=(
        "policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.num_inference_steps=3"))
    from dpolicy.commands import export as export_cmd

    parser = argparse.ArgumentParser()
    export_cmd.configure(parser)
    out = tmp_path / "export"
    assert export_cmd.run(parser.parse_args([str(checkpoint), "--out", str(out), "--latency-repeats", "2"])) == 0
    text = capsys.readouterr().out
    assert "parity" in text and "ok" in text and "TorchScript p50" in text
    info = json.loads((out / export.METADATA_NAME).read_text())
    assert info["format"] == export.EXPORT_FORMAT and info["parity_max_abs_diff"] < 1e-4
    policy, _ = load_policy(checkpoint)
    assert info["obs_keys"] == ["obs"] and info["n_obs_steps"] == 2
    assert info["n_action_steps"] == policy.n_action_steps == 10  # the default config's, carried into the archive
    assert info["scheduler"] == "ddim" and len(info["coefficients"]) == 3 == info["num_inference_steps"]
    assert "sampling loop" in (out / "README.md").read_text()
    extra = {export.METADATA_NAME: ""}
    torch.jit.load(str(out / export.ARCHIVE_NAME), _extra_files=extra)
    assert json.loads(extra[export.METADATA_NAME])["checkpoint"] == str(checkpoint)
