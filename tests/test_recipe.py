"""The one-CPU-hour recipe: the default config is it, its latency can be measured from a checkpoint,
and results over training seeds are summarised as the README's table and plot."""

import argparse
import json

import pytest
from omegaconf import OmegaConf

from dpolicy.config import compose_config
from dpolicy.experiments import recipe
from dpolicy.paths import EMBEDDED_PUSHT


def test_default_config_is_the_one_cpu_hour_recipe():
    cfg = compose_config("pusht_lowdim", [])
    t = cfg.training
    assert t.max_minutes <= 60 and t.num_threads == 2 and t.bf16 == "auto"
    assert 0 < t.eval_every < t.max_steps  # periodic rollouts for the score-vs-minutes curve
    assert list(cfg.policy.down_dims) == [32, 64, 128] and t.max_steps == 70000  # the README's measured recipe
    assert t.lr == pytest.approx(3e-4)  # the README's measured recipe: 3x the paper's learning rate
    assert t.compile is True and cfg.n_action_steps == 10  # compiled UNet; 10 of the 16 planned actions run
    assert cfg.task.dataset.max_train_episodes is None  # all 206 human episodes
    # the baselines and image configs keep their own budgets
    ibc = compose_config("ibc_pusht_lowdim", [])
    assert ibc.training.bf16 is False and ibc.training.eval_every == 0


def test_expert_data_recipe_is_the_default_re_planning_every_two_actions():
    default, expert = compose_config("pusht_lowdim", []), compose_config("pusht_lowdim_expert", [])
    assert expert.n_action_steps == 2 and expert.task.dataset.n_action_steps == 2
    assert expert.task.dataset.path == str(EMBEDDED_PUSHT)
    assert OmegaConf.to_container(expert.policy, resolve=True) == {
        **OmegaConf.to_container(default.policy, resolve=True), "n_action_steps": 2}
    assert expert.training == default.training  # the same budget and optimizer


def fake_run(root, name, scores, paper=None, large=None, minutes=55.0, steps=24000):
    run = root / name
    (run / "eval").mkdir(parents=True)
    lines = [json.dumps({"step": 50, "train_loss": 0.5, "elapsed_min": 0.1})]
    lines += [json.dumps({"step": 100 * (i + 1), "elapsed_min": 5.0 * (i + 1), "eval/score": s})
              for i, s in enumerate(scores)]
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    (run / "summary.json").write_text(json.dumps({"step": steps, "train_minutes": minutes}))
    for protocol, metrics in (("paper", paper), ("large", large)):
        if metrics is not None:
            (run / "eval" / f"latest_{protocol}").mkdir()
            (run / "eval" / f"latest_{protocol}" / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_recipe_table_averages_seeds_and_lists_each(tmp_path, capsys):
    runs = [fake_run(tmp_path, "s0", [0.5, 0.9], {"score": 0.90}, {"success_rate": 0.60}, minutes=54.0),
            fake_run(tmp_path, "s1", [0.6, 0.9], {"score": 0.94}, {"success_rate": 0.70}, minutes=56.0)]
    ibc = fake_run(tmp_path, "ibc", [], {"score": 0.3}, None, minutes=17.0, steps=4400)
    plot = tmp_path / "plot.png"
    assert recipe.main(["--group", f"DP={runs[0]},{runs[1]}", "--group", f"IBC={ibc}",
                        "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    dp_row = next(line for line in out.splitlines() if line.startswith("| DP"))
    assert "| 2 | 24000 | 54.0-56.0 |" in dp_row
    assert "0.920 +- 0.028" in dp_row and "0.650 +- 0.071" in dp_row  # sample std over the two seeds
    assert "0.900, 0.940 / 60.0%, 70.0%" in dp_row
    ibc_row = next(line for line in out.splitlines() if line.startswith("| IBC"))
    assert "| 0.300 | - |" in ibc_row  # one seed, no large-protocol evaluation yet
    assert plot.stat().st_size > 10_000


def test_recipe_names_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        recipe.run_figures(tmp_path)
    with pytest.raises(SystemExit):
        recipe.main(["--group", "no-equals-sign"])


def test_infer_bench_times_a_trained_checkpoint(tmp_path, capsys):
    from dpolicy.bench import infer
    from dpolicy.bench.realtime import untrained_checkpoint

    checkpoint = untrained_checkpoint(tmp_path / "tiny.safetensors", overrides=(
        "policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.num_inference_steps=3"))
    parser = argparse.ArgumentParser()
    infer.configure(parser)
    assert infer.run(parser.parse_args(["--checkpoint", str(checkpoint), "--batch-sizes", "1", "2",
                                        "--seconds", "0.05", "--threads", "1"])) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert [(r[0], r[1]) for r in rows] == [("1", "ddim-3"), ("2", "ddim-3")]  # the checkpoint's own sampler
    assert all(float(r[2]) > 0 for r in rows)


def test_infer_bench_times_an_ibc_checkpoint_and_refuses_schedules_for_it(tmp_path, capsys):
    from dpolicy.bench import infer
    from dpolicy.bench.realtime import untrained_checkpoint

    checkpoint = untrained_checkpoint(tmp_path / "ibc.safetensors", config="ibc_pusht_lowdim", overrides=(
        "policy.hidden_dim=16", "policy.dfo_samples=8"))
    parser = argparse.ArgumentParser()
    infer.configure(parser)
    assert infer.run(parser.parse_args(["--checkpoint", str(checkpoint), "--batch-sizes", "1",
                                        "--seconds", "0.05"])) == 0
    assert "IbcPolicy" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="diffusion"):
        infer.run(parser.parse_args(["--checkpoint", str(checkpoint), "--schedules", "ddim:5"]))


def test_bf16_auto_follows_the_hardware():
    import torch

    from dpolicy.errors import ConfigError
    from dpolicy.training.devices import bf16_is_fast, resolve_bf16

    cpu = torch.device("cpu")
    assert resolve_bf16("auto", cpu) is bf16_is_fast(cpu)
    assert resolve_bf16(True, cpu) is True and resolve_bf16(False, cpu) is False
    with pytest.raises(ConfigError, match="training.bf16"):
        resolve_bf16("yes", cpu)
