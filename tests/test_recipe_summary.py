"""The across-seeds summary (`python -m dpolicy.experiments.recipe`) that the results tables come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpolicy.experiments.recipe import main, markdown_table, run_figures


def make_run(run_dir: Path, paper_score: float, first_seed: int, rollout_scores: list[float]) -> Path:
    (run_dir / "eval" / "latest_paper").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"step": 1000, "train_minutes": 12.5}))
    (run_dir / "eval" / "latest_paper" / "metrics.json").write_text(json.dumps({"score": paper_score}))
    records = [{"step": 10 * (i + 1), "train_loss": 1.0, "elapsed_min": float(i)} for i in range(len(rollout_scores))]
    records += [{"step": 10 * (i + 1), "elapsed_min": float(i), "eval/score": s, "eval/success_rate": 0.0,
                 "eval/first_seed": first_seed, "eval/n_seeds": 50} for i, s in enumerate(rollout_scores)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_the_table_gives_mean_and_std_over_seeds_and_each_seed(tmp_path):
    runs = [run_figures(make_run(tmp_path / f"s{i}", score, 100000, [0.2, 0.5]))
            for i, score in enumerate([0.8, 0.9])]
    row = markdown_table({"recipe": runs}).splitlines()[-1]
    assert "| recipe | 2 | 1000 | 12.5-12.5 | 0.850 +- 0.071 | - | 0.800, 0.900 / -, - |" == row
    assert runs[0]["curve"] == [(0.0, 0.2, 0.0), (1.0, 0.5, 0.0)]


@pytest.mark.parametrize(("first_seed", "words"), [(100000, "50 paper seeds"), (0, "seeds 0..49")])
def test_the_rollout_seeds_are_named_for_the_plot(tmp_path, first_seed, words):
    assert run_figures(make_run(tmp_path / "run", 0.5, first_seed, [0.3]))["rollout_seeds"] == [words]


def test_the_command_writes_the_plot(tmp_path, capsys):
    run = make_run(tmp_path / "run", 0.5, 0, [0.3, 0.4])
    plot, figures = tmp_path / "plot.png", tmp_path / "runs.json"
    assert main(["--group", f"IBC={run}", "--plot", str(plot), "--json", str(figures)]) == 0
    assert plot.stat().st_size > 0 and "| IBC | 1 |" in capsys.readouterr().out
    assert json.loads(figures.read_text())["IBC"][0]["rollout_seeds"] == ["seeds 0..49"]
