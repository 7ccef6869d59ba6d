"""`dpolicy bench train --experiments`: whole policies built from experiment configs, encoder included."""

from __future__ import annotations

import torch

from dpolicy.bench.train import experiment_policy
from dpolicy.cli import main

SMALL = ("policy.down_dims=[16,32]", "policy.resnet_width=16", "policy.resnet_stages=1", "training.batch_size=4")


def test_an_image_experiment_is_built_as_it_trains_with_a_uint8_batch_of_its_shape():
    policy, batch, batch_size = experiment_policy("pusht_image", "matmul", SMALL)
    assert batch_size == 4
    assert batch["obs"]["image"].dtype == torch.uint8 and batch["obs"]["image"].shape == (4, 2, 96, 96, 3)
    assert batch["obs"]["agent_pos"].shape == (4, 2, 2) and batch["action"].shape == (4, 16, 2)
    assert policy.obs_encoder.frames == {"image": 1, "agent_pos": 2}  # the recipe encodes the newest image
    assert torch.isfinite(policy.compute_loss(batch))


def test_the_command_prints_one_row_per_experiment_and_variant(capsys):
    assert main(["bench", "train", "--experiments", "pusht_image", "--override", *SMALL,
                 "--variants", "matmul-fp32", "--seconds", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("pusht_image")]
    assert len(rows) == 1 and "matmul-fp32" in rows[0]
    assert "with policy.down_dims=[16,32]" in out


def test_an_energy_based_experiment_is_measured_too(capsys):
    assert main(["bench", "train", "--experiments", "ibc_pusht_lowdim", "--override", "policy.hidden_dim=16",
                 "policy.n_counter_examples=4", "training.batch_size=4", "--variants", "matmul-bf16",
                 "--seconds", "0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ibc_pusht_lowdim")]
    assert len(rows) == 1 and "matmul-bf16" in rows[0]
