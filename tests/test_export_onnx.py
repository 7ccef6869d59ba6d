"""ONNX export: parity with the eager policy, dynamic batch, the torch-free runtime, the command."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_export import IMAGE, LOWDIM, one_torch_thread, tiny_policy  # noqa: F401 (autouse: 1 torch thread)

from dpolicy import cli, export
from dpolicy.errors import UserError
from dpolicy.onnx_runtime import OnnxFolderError, OnnxPolicy
from dpolicy.training.checkpoint import load_policy

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def lowdim_onnx(tmp_path_factory):
    """A DDIM policy (clipped samples), its ONNX folder and the folder loaded: (policy, folder, runtime)."""
    policy = tiny_policy(LOWDIM, "ddim", clip_sample=True)
    out = tmp_path_factory.mktemp("onnx")
    export.write_onnx_export(policy, out)
    return policy, out, OnnxPolicy(out, intra_op_num_threads=1)


def assert_onnx_parity(policy, runtime, batch: int, seed: int) -> None:
    diff, normalized = export.plan_differences(policy, runtime, batch=batch, seed=seed)
    assert normalized < export.ONNX_PARITY_TOLERANCE, f"{diff:.2e} env units, {normalized:.2e} normalized"


def test_onnx_chunk_matches_the_eager_policy(lowdim_onnx):
    policy, _, runtime = lowdim_onnx
    for batch, seed in ((1, 0), (3, 1), (7, 2)):  # exported at batch 2: the batch dimension is free
        assert_onnx_parity(policy, runtime, batch, seed)


def test_graphs_have_named_inputs_and_a_free_batch_dimension(lowdim_onnx):
    _, out, runtime = lowdim_onnx
    encoder_inputs = runtime.encoder.get_inputs()
    assert [i.name for i in encoder_inputs] == ["obs"] and encoder_inputs[0].type == "tensor(float)"
    assert isinstance(encoder_inputs[0].shape[0], str) and encoder_inputs[0].shape[1:] == [2, 20]
    assert [i.name for i in runtime.denoiser.get_inputs()] == ["x", "film"]
    assert [o.name for o in runtime.encoder.get_outputs()] == ["film"]
    assert all(isinstance(i.shape[0], str) for i in runtime.denoiser.get_inputs())
    assert not list(out.glob("*.data"))  # weights inside the graphs: two self-contained files


def test_rows_do_not_depend_on_the_batch(lowdim_onnx):
    """B=3 at once and each row alone (B=1) give the plan of the eager policy for that row."""
    policy, _, runtime = lowdim_onnx
    obs = export.example_observations(policy, batch=3, seed=5)
    noise, step_noise = export.noise_like_policy(policy, 3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        eager = policy.predict_action(dict(zip(policy.obs_keys(), obs, strict=True)),
                                      generator=torch.Generator().manual_seed(5))["action_pred"].numpy()
    obs, noise, step_noise = [x.numpy() for x in obs], noise.numpy(), step_noise.numpy()
    together = runtime.sample_with_noise(obs, noise, step_noise)
    scale = policy.normalizer.maps["action"].scale.numpy()
    for row in range(3):
        alone = runtime.sample_with_noise([x[row:row + 1] for x in obs], noise[row:row + 1],
                                          step_noise[:, row:row + 1])
        assert alone.shape == (1, policy.horizon, policy.action_dim)
        for plan in (alone[0], together[row]):
            assert np.abs((plan - eager[row]) * scale).max() < export.ONNX_PARITY_TOLERANCE


def test_export_json_carries_the_sampler_and_the_readme_the_loop(lowdim_onnx):
    policy, out, _ = lowdim_onnx
    info = json.loads((out / export.METADATA_NAME).read_text())
    assert info["format"] == "dpolicy-onnx-v1" and info["obs_keys"] == ["obs"]
    assert info["encoder"] == "encoder.onnx" and info["denoiser"] == "denoiser.onnx"
    assert (out / info["encoder"]).is_file() and (out / info["denoiser"]).is_file()
    assert (info["n_obs_steps"], info["n_action_steps"], info["horizon"], info["action_dim"]) == (2, 4, 8, 2)
    assert info["obs"]["obs"] == {"shape": [20], "type": "low_dim", "dtype": "float32"}
    assert len(info["coefficients"]) == 5 == len(info["step_film"]) and info["clip_range"] == 1.0
    assert len(info["step_film"][0]) == info["film_dim"]
    action_map = policy.normalizer.maps["action"]
    assert np.array_equal(np.float32(info["action_scale"]), action_map.scale.numpy())  # exact in JSON
    assert np.array_equal(np.float32(info["action_offset"]), action_map.offset.numpy())
    readme = (out / "README.md").read_text()
    assert "The sampling loop" in readme and "encoder.onnx" in readme and "OnnxPolicy" in readme
    assert "policy_torchscript.pt" not in readme


def test_the_documented_loop_in_plain_numpy_reproduces_the_runtime(lowdim_onnx):
    """The README's loop over the two graphs and export.json's tables, written out by a user."""
    policy, out, runtime = lowdim_onnx
    info = json.loads((out / export.METADATA_NAME).read_text())
    obs = [x.numpy() for x in export.example_observations(policy, batch=2, seed=4)]
    noise, step_noise = runtime.noise(2, np.random.default_rng(4))
    cond, x = runtime.encoder.run(None, {"obs": obs[0]})[0], noise
    for k, (p, q, c0, c1, c2, sigma) in enumerate(info["coefficients"]):
        out_k = runtime.denoiser.run(None, {"x": x, "film": cond + np.float32(info["step_film"][k])})[0]
        x0 = np.clip(p * x + q * out_k, -info["clip_range"], info["clip_range"])
        x = (c0 * x0 + c1 * x + c2 * out_k + sigma * step_noise[k]).astype(np.float32)
    mine = (x - np.float32(info["action_offset"])) / np.float32(info["action_scale"])
    reference = runtime.sample_with_noise(obs, noise, step_noise)
    np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-2)  # same maths, other rounding order


def test_ddpm_tables_without_clipping_drive_the_same_graphs(lowdim_onnx, tmp_path):
    """The folded update and the per-step noise: a DDPM policy with the same weights."""
    policy, out, _ = lowdim_onnx
    ddpm = tiny_policy(LOWDIM, "ddpm", clip_sample=False)
    for a, b in zip(policy.state_dict().values(), ddpm.state_dict().values(), strict=True):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)  # the fixture's graphs hold these weights
    for name in (export.ENCODER_NAME, export.DENOISER_NAME):
        shutil.copy(out / name, tmp_path / name)
    export.write_onnx_metadata(tmp_path, export.onnx_metadata(ddpm))
    runtime = OnnxPolicy(tmp_path, intra_op_num_threads=1)
    assert runtime.clip_range == 0 and all(row[5] > 0 for row in runtime.coefficients[:-1])
    assert_onnx_parity(ddpm, runtime, batch=3, seed=1)


def test_predict_returns_the_executable_chunk_and_follows_its_seed(lowdim_onnx):
    policy, out, runtime = lowdim_onnx
    obs = {"obs": export.example_observations(policy, batch=2)[0].numpy()}
    action, action_pred = OnnxPolicy(out, seed=3).predict(obs)
    again, _ = OnnxPolicy(out, seed=3).predict(obs)
    other, _ = runtime.predict(obs, rng=np.random.default_rng(4))
    assert action.shape == (2, 4, 2) and action_pred.shape == (2, 8, 2) and action.dtype == np.float32
    np.testing.assert_array_equal(action, action_pred[:, 1:5])  # actions To-1 .. To-1+Ta of the plan
    np.testing.assert_array_equal(action, again)
    assert not np.allclose(action, other)
    with pytest.raises(ValueError, match=r"expected \(B, 2, 20\)"):
        runtime.predict([obs["obs"][:, :1]])


@pytest.mark.parametrize("copied", [False, True], ids=["package", "copied-file"])
def test_the_runtime_runs_without_torch(lowdim_onnx, tmp_path, copied):
    """numpy + onnxruntime only: importing torch fails in the child, yet the plan is the same; the
    module also works as a lone file next to the robot's code, without the package."""
    import dpolicy.onnx_runtime

    policy, out, runtime = lowdim_onnx
    obs = export.example_observations(policy, batch=2, seed=6)[0].numpy()
    noise, step_noise = runtime.noise(2, np.random.default_rng(6))
    np.savez(tmp_path / "inputs.npz", obs=obs, noise=noise, step_noise=step_noise)
    if copied:
        shutil.copy(dpolicy.onnx_runtime.__file__, tmp_path / "robot_policy.py")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` raises ImportError
        if {copied}:
            sys.modules["dpolicy"] = None
            sys.path.insert(0, {str(tmp_path)!r})
            from robot_policy import OnnxPolicy
        else:
            from dpolicy.onnx_runtime import OnnxPolicy
        import numpy as np
        data = np.load({str(tmp_path / "inputs.npz")!r})
        runtime = OnnxPolicy({str(out)!r}, intra_op_num_threads=1)
        plan = runtime.sample_with_noise([data["obs"]], data["noise"], data["step_noise"])
        action, _ = runtime.predict([data["obs"]])
        np.save({str(tmp_path / "plan.npy")!r}, plan)
        assert action.shape == (2, 4, 2)
        assert not [name for name, mod in sys.modules.items() if mod is not None and name.split(".")[0] == "torch"]
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "plan.npy"), runtime.sample_with_noise([obs], noise, step_noise))


@pytest.mark.slow
def test_image_policy_onnx_export_matches_the_eager_policy(tmp_path, monkeypatch):
    """ResNet encoder (GroupNorm, spatial softmax, centered crop): uint8 HWC images in; no network used."""
    def no_network(*args, **kwargs):
        raise AssertionError("the export tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    policy = tiny_policy(IMAGE, "ddim", steps=3, crop_shape=(84, 84), image_feature_dim=16, num_keypoints=8,
                         resnet_width=16, resnet_stages=2)
    info = export.write_onnx_export(policy, tmp_path)
    runtime = OnnxPolicy(tmp_path, intra_op_num_threads=1)
    assert info["obs_keys"] == ["image", "agent_pos"] and info["obs"]["image"]["dtype"] == "uint8"
    assert [(i.name, i.type) for i in runtime.encoder.get_inputs()] == [("image", "tensor(uint8)"),
                                                                        ("agent_pos", "tensor(float)")]
    assert_onnx_parity(policy, runtime, batch=2, seed=3)
    assert_onnx_parity(policy, runtime, batch=1, seed=4)


def test_export_refuses_what_it_cannot_express(tmp_path):
    with pytest.raises(export.ExportError, match="ddim"):
        export.write_onnx_export(tiny_policy(LOWDIM, "dpm_solver", steps=4), tmp_path)
    with pytest.raises(export.NotExportableError, match="DiffusionPolicy") as refused:
        export.write_onnx_export(torch.nn.Linear(2, 2), tmp_path)
    assert isinstance(refused.value, UserError) and isinstance(refused.value, TypeError)
    assert not list(tmp_path.iterdir())  # refused before writing anything
    with pytest.raises(OnnxFolderError, match="export.json"):
        OnnxPolicy(tmp_path)


def test_missing_onnx_packages_are_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    code = cli.main(["export", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o"),
                     "--format", "onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ['error: the ONNX export needs onnxscript: pip install "dpolicy[onnx]"']
    assert cli.main(["export", "x.safetensors", "--out", str(tmp_path), "--format", "onnx", "--device", "cuda"]) == 2


@pytest.mark.slow
def test_export_command_writes_checked_onnx_files(tmp_path, capsys):
    from dpolicy.bench.realtime import untrained_checkpoint
    from dpolicy.commands import export as export_cmd

    checkpoint = untrained_checkpoint(tmp_path / "tiny.safetensors", overrides=(
        "policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.num_inference_steps=3"))
    parser = argparse.ArgumentParser()
    export_cmd.configure(parser)
    out = tmp_path / "export"
    args = parser.parse_args([str(checkpoint), "--out", str(out), "--format", "onnx", "--latency-repeats", "2",
                              "--threads", "1"])
    assert export_cmd.run(args) == 0
    text = capsys.readouterr().out
    assert "parity" in text and " ok" in text and "ONNX p50" in text and "eager p50" in text
    assert len(text.strip().splitlines()) == 3
    assert {p.name for p in out.iterdir()} == {"encoder.onnx", "denoiser.onnx", "export.json", "README.md"}
    info = json.loads((out / export.METADATA_NAME).read_text())
    policy, _ = load_policy(checkpoint)
    assert info["format"] == "dpolicy-onnx-v1" and info["checkpoint"] == str(checkpoint)
    assert info["parity_max_abs_diff_normalized"] < export.ONNX_PARITY_TOLERANCE
    assert info["obs_keys"] == ["obs"] and info["n_obs_steps"] == 2
    assert info["n_action_steps"] == policy.n_action_steps == 10 and info["horizon"] == policy.horizon
    assert info["scheduler"] == "ddim" and len(info["coefficients"]) == 3 == len(info["step_film"])
    assert info["clip_sample"] is True and info["clip_range"] > 0
    assert_onnx_parity(policy, OnnxPolicy(out, intra_op_num_threads=1), batch=3, seed=2)
