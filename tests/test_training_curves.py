"""curves.png draws only the panels the training log has data for."""

from __future__ import annotations

from dpolicy.training.logging import curve_panels


def test_training_curves_show_only_panels_with_data():
    no_rollouts = [{"step": 10, "train_loss": 0.5, "lr": 1e-3}, {"step": 20, "train_loss": 0.4, "val_loss": 0.45}]
    assert [title for title, _ in curve_panels(no_rollouts)] == ["loss", "learning rate"]
    with_rollouts = [*no_rollouts, {"step": 20, "eval/score": 0.7, "eval/success_rate": float("nan")}]
    assert [title for title, _ in curve_panels(with_rollouts)] == ["loss", "learning rate", "rollout"]
