"""`dpolicy eval CHECKPOINT` on a small untrained diffusion policy checkpoint."""

from __future__ import annotations

import argparse
import json

import pytest

from dpolicy.cli import main
from dpolicy.commands.eval import configure, default_out_dir, settings_tag
from dpolicy.data.normalizer import Normalizer
from dpolicy.policies.diffusion import DiffusionPolicy
from dpolicy.training.checkpoint import save_checkpoint

SHAPE_META = {"obs": {"obs": {"shape": [20], "type": "low_dim"}}, "action": {"shape": [2]}}
POLICY_CFG = {"name": "diffusion", "horizon": 16, "n_obs_steps": 2,
              "n_action_steps": 8, "down_dims": [16, 32], "step_embed_dim": 16,
              "inference_scheduler": "ddim", "num_inference_steps": 4}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    normalizer = Normalizer.from_spec({"obs": SHAPE_META["obs"]["obs"], "action": {"shape": [2]}})
    kwargs = {k: v for k, v in POLICY_CFG.items() if k != "name"}
    policy = DiffusionPolicy(SHAPE_META, normalizer, **kwargs)
    config = {"task": {"env_id": "envs/PushTKeypoints-v0", "env_kwargs": {}, "max_steps": 300},
              "policy": POLICY_CFG}
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "latest.safetensors"
    save_checkpoint(path, {"config": config, "shape_meta": SHAPE_META, "step": 0}, policy.state_dict())
    return path


def test_eval_command_writes_metrics_csv_video_and_grid(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", str(checkpoint), "--protocol", "100000,100001", "--max-steps", "10",
               "--vector", "sync", "--videos", "1", "--out", str(out), "--no-progress",
               "--inference-steps", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "score" in printed and "success rate" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(checkpoint) and metrics["n_episodes"] == 2
    assert metrics["env_id"] == "envs/PushTKeypoints-v0" and metrics["max_steps"] == 10
    assert metrics["inference_steps"] == 2 and metrics["sampler"] == "ddim"
    assert (out / "episodes.csv").exists() and (out / "final_frames.png").exists()
    assert (out / "episode_000_seed_100000.mp4").stat().st_size > 0


def test_default_output_folder_sits_in_the_run_folder(checkpoint):
    assert default_out_dir(checkpoint, "paper") == checkpoint.parent.parent / "eval" / "latest_paper"
    assert default_out_dir(checkpoint, "1,2").name == "latest_seeds"


def test_default_output_folder_names_changed_inference_settings(checkpoint):
    """Evaluating one checkpoint at two search or sampler settings keeps both results."""
    parser = argparse.ArgumentParser()
    configure(parser)

    def folder(*extra):
        args = parser.parse_args([str(checkpoint), *extra])
        return default_out_dir(checkpoint, args.protocol, settings_tag(args)).name

    assert folder() == "latest_paper"
    assert folder("--dfo-samples", "256", "--dfo-iters", "2") == "latest_paper_dfo256x2"
    assert folder("--dfo-iters", "2") == "latest_paper_dfockptx2"
    assert folder("--sampler", "ddim", "--inference-steps", "5", "--action-steps", "4") == \
        "latest_paper_ddim-steps5-ta4"
    assert folder("--no-ema", "--seed", "3") == "latest_paper_noema-seed3"
    assert len({folder(), folder("--inference-steps", "5"), folder("--replan-threshold", "2")}) == 3


@pytest.mark.parametrize("action_steps, plans", [(None, 3), (12, 2), (15, 2)])
def test_action_steps_sets_how_much_of_each_plan_runs(checkpoint, tmp_path, action_steps, plans):
    out = tmp_path / "eval"
    args = ["eval", str(checkpoint), "--protocol", "100000", "--max-steps", "24", "--vector", "sync",
            "--videos", "0", "--out", str(out), "--no-progress", "--inference-steps", "1"]
    if action_steps is not None:
        args += ["--action-steps", str(action_steps)]
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["action_steps"] == (action_steps or 8)
    episode = (out / "episodes.csv").read_text().splitlines()
    n_plans = int(episode[1].split(",")[episode[0].split(",").index("n_plans")])
    assert n_plans == plans


def test_action_steps_beyond_the_plan_are_refused(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match=r"1\.\.15"):
        main(["eval", str(checkpoint), "--protocol", "100000", "--action-steps", "16", "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def ibc_checkpoint(tmp_path_factory):
    from dpolicy.policies.ibc import IbcPolicy

    normalizer = Normalizer.from_spec({"obs": SHAPE_META["obs"]["obs"], "action": {"shape": [2]}})
    ibc_cfg = {"name": "ibc", "horizon": 2, "n_obs_steps": 2, "n_action_steps": 1, "hidden_dim": 16,
               "n_layers": 2, "dfo_samples": 64, "dfo_iters": 3}
    policy = IbcPolicy(SHAPE_META, normalizer, **{k: v for k, v in ibc_cfg.items() if k != "name"})
    config = {"task": {"env_id": "envs/PushTKeypoints-v0", "env_kwargs": {}, "max_steps": 300}, "policy": ibc_cfg}
    path = tmp_path_factory.mktemp("ibc") / "checkpoints" / "latest.safetensors"
    save_checkpoint(path, {"config": config, "shape_meta": SHAPE_META, "step": 0}, policy.state_dict())
    return path


def test_dfo_search_budget_is_set_for_an_ibc_checkpoint_and_refused_for_diffusion(checkpoint, ibc_checkpoint,
                                                                                  tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(ibc_checkpoint), "--protocol", "100000", "--max-steps", "3", "--vector", "sync",
                 "--videos", "0", "--out", str(out), "--no-progress", "--dfo-samples", "16", "--dfo-iters", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["sampler"], metrics["dfo_samples"], metrics["dfo_iters"]) == ("dfo", 16, 1)
    with pytest.raises(SystemExit, match="only energy-based"):
        main(["eval", str(checkpoint), "--protocol", "100000", "--dfo-samples", "16", "--out", str(tmp_path)])


def test_bench_infer_times_each_search_budget_of_an_ibc_checkpoint(checkpoint, ibc_checkpoint, capsys):
    assert main(["bench", "infer", "--checkpoint", str(ibc_checkpoint), "--batch-sizes", "1", "3",
                 "--searches", "32:1", "64:2", "--seconds", "0.01"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [(row[0], row[1]) for row in rows] == [("1", "32:1"), ("1", "64:2"), ("3", "32:1"), ("3", "64:2")]
    with pytest.raises(SystemExit, match="--searches applies to energy-based"):
        main(["bench", "infer", "--checkpoint", str(checkpoint), "--searches", "32:1"])
    with pytest.raises(SystemExit, match="--searches"):
        main(["bench", "infer", "--checkpoint", str(ibc_checkpoint), "--schedules", "ddim:4"])
