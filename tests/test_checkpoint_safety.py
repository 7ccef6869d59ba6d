"""Checkpoints cannot run code: a planted pickle payload or a planted ``_target_`` never executes,
through any command that loads a checkpoint; bad files give one plain error line."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpolicy.bench.realtime import untrained_checkpoint
from dpolicy.training.checkpoint import (
    CheckpointError,
    convert_legacy_checkpoint,
    load_policy,
    read_checkpoint,
    save_checkpoint,
)

TINY = ("policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.num_inference_steps=2")


class _Payload:
    """Unpickling this creates the marker file: proof that the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _commands(path: Path, tmp_path: Path) -> list[list[str]]:
    """Every command that loads a checkpoint, pointed at ``path``."""
    return [["eval", str(path), "--protocol", "100000", "--max-steps", "2", "--vector", "sync", "--no-progress"],
            ["serve", str(path), "--address", "tcp://127.0.0.1:0"],
            ["export", str(path), "--out", str(tmp_path / "export")],
            ["bench", "infer", "--checkpoint", str(path)],
            ["bench", "realtime", "--checkpoint", str(path), "--steps", "5", "--no-sync"],
            ["bench", "serve", "--checkpoint", str(path)]]


def _cli_env() -> dict[str, str]:
    """This environment without DPOLICY_DEBUG, so errors reach stderr as the user sees them."""
    return {k: v for k, v in os.environ.items() if k != "DPOLICY_DEBUG"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpolicy", *args], capture_output=True, text=True, timeout=120,
                          env=_cli_env())


# Runs each command line through the CLI's entry point in one fresh interpreter (one torch import
# for all of them) and prints, per command, its exit code and what it wrote to stderr.
_DRIVER = """
import contextlib, io, json, sys, traceback
from dpolicy.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except BaseException:
            traceback.print_exc()
            code = -1
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def _run_each(commands: list[list[str]]) -> list[tuple[int, str]]:
    """``(exit code, stderr)`` of every command, run one after another in a single new process."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(commands)], capture_output=True, text=True,
                          timeout=300, env=_cli_env())
    assert proc.returncode == 0, proc.stderr[-1500:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("good") / "tiny.safetensors", overrides=TINY)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["legacy.pt", "disguised.safetensors"])
def test_a_planted_pickle_never_executes_through_any_command(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"format": "dpolicy-checkpoint-v1", "config": _Payload(marker)}, path)
    commands = _commands(path, tmp_path)
    results = _run_each(commands)
    assert not marker.exists(), "a command executed the checkpoint's pickle"
    for args, (code, stderr) in zip(commands, results, strict=True):
        assert code == 1, (args, code, stderr[-1500:])
        assert "Traceback" not in stderr, (args, stderr[-1500:])
        assert "legacy pickle checkpoint" in stderr and str(path) in stderr, stderr


def _with_config(source: Path, dest: Path, edit) -> Path:
    checkpoint = read_checkpoint(source)
    meta = {k: v for k, v in checkpoint.meta.items() if k not in ("format", "package_version", "has_ema",
                                                                  "extra_state")}
    edit(meta["config"])
    return save_checkpoint(dest, meta, checkpoint.weights(use_ema=False))


@pytest.mark.slow
def test_a_planted_target_never_executes_through_any_command(tmp_path, good_checkpoint):
    marker = tmp_path / "made_by_target"
    target = {"_target_": "os.makedirs", "name": str(marker)}

    def nested_in_policy(config):
        config["policy"]["down_dims"] = target

    def elsewhere(config):
        config["task"]["dataset"] = target
        config["policy"]["_target_"] = "os.makedirs"

    commands = [(edit.__name__, args) for edit in (nested_in_policy, elsewhere)
                for args in _commands(_with_config(good_checkpoint, tmp_path / f"{edit.__name__}.safetensors", edit),
                                      tmp_path)]
    results = _run_each([args for _, args in commands])
    assert not marker.exists(), "a command followed a planted _target_"
    for (edit_name, args), (code, stderr) in zip(commands, results, strict=True):
        assert code == 1 and "Traceback" not in stderr, (edit_name, args, stderr[-1500:])
        assert "is not allowed" in stderr and "policy." in stderr, (edit_name, args, stderr)


def test_unknown_policy_names_and_foreign_files_are_refused(tmp_path, good_checkpoint):
    renamed = _with_config(good_checkpoint, tmp_path / "renamed.safetensors",
                           lambda c: c["policy"].update(name="os.system"))
    with pytest.raises(CheckpointError, match=r"unknown policy name 'os.system'.*expected one of"):
        load_policy(renamed)
    random_bytes = tmp_path / "noise.safetensors"
    random_bytes.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="noise.safetensors"):
        read_checkpoint(random_bytes)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "absent.safetensors")


def test_weights_that_do_not_fit_the_config_name_the_file(tmp_path, good_checkpoint):
    wider = _with_config(good_checkpoint, tmp_path / "wider.safetensors",
                         lambda c: c["policy"].update(down_dims=[32, 64]))
    with pytest.raises(CheckpointError, match=r"wider.safetensors: weights do not match"):
        load_policy(wider)


def _legacy_file(path: Path, source: Path, rng: bool = False, extra: dict | None = None) -> Path:
    """A checkpoint as the pickle-format versions wrote it, from the same weights (with their RNG
    streams, as training checkpoints held them, when ``rng``; ``extra`` entries added as they are)."""
    checkpoint = read_checkpoint(source)
    config = json.loads(json.dumps(checkpoint.meta["config"]))
    config["policy"] = {"_target_": "dpolicy.policies.diffusion.DiffusionPolicy",
                        **{k: v for k, v in config["policy"].items() if k != "name"}}
    torch.save({"format": "dpolicy-checkpoint-v1", "package_version": "0.1.0", "config": config,
                "shape_meta": checkpoint.meta["shape_meta"], "step": 7,
                "model": checkpoint.weights(use_ema=False), "ema_model": None,
                **({"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate()}} if rng else {}), **(extra or {})}, path)
    return path


def test_conversion_keeps_the_weights_and_rng_state(tmp_path, good_checkpoint):
    legacy = _legacy_file(tmp_path / "old.pt", good_checkpoint, rng=True)
    proc = _run(["convert-checkpoint", str(legacy)])
    assert proc.returncode == 0, proc.stderr
    converted, cfg = load_policy(legacy.with_suffix(".safetensors"))
    original, _ = load_policy(good_checkpoint)
    assert cfg.policy.name == "diffusion" and read_checkpoint(legacy.with_suffix(".safetensors")).step == 7
    for name, value in original.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, converted.state_dict()[name]), name


def test_conversion_never_runs_a_planted_payload(tmp_path, good_checkpoint):
    marker = tmp_path / "ran"
    legacy = _legacy_file(tmp_path / "old.pt", good_checkpoint, extra={"hook": _Payload(marker)})
    with pytest.raises(CheckpointError, match=r"old.pt: refused"):
        convert_legacy_checkpoint(legacy, tmp_path / "new.safetensors")
    proc = _run(["convert-checkpoint", str(legacy)])
    assert proc.returncode == 1 and "old.pt: refused" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists() and not (tmp_path / "new.safetensors").exists()


def test_a_truncated_header_is_refused_before_parsing(tmp_path, good_checkpoint):
    blob = good_checkpoint.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    for cut in (4, 8 + n // 2, len(blob) - 10):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.safetensors"):
            load_policy(path)


def test_a_checkpoint_replaced_while_it_is_being_opened_reads_one_whole_version(tmp_path, good_checkpoint,
                                                                                monkeypatch):
    """A run rewrites latest.safetensors (atomically) while a user or a monitor opens it: the read
    returns one whole version, never one version's layout over the other's bytes."""
    source = read_checkpoint(good_checkpoint)
    meta = {k: v for k, v in source.meta.items() if k in ("config", "shape_meta", "step")}
    weights = source.weights(use_ema=False)
    path = tmp_path / "latest.safetensors"
    save_checkpoint(path, meta, weights)
    replaced = []

    def replace_once():
        if not replaced:  # the run's next save lands while the file is being opened
            replaced.append(True)
            save_checkpoint(path, {**meta, "step": 12345, "note": "a longer header than before"},
                            {k: v + 1 if _is_float(v) else v for k, v in weights.items()})

    original_from_file = torch.UntypedStorage.from_file

    def replace_then_map(*args, **kwargs):  # torch's mapping of the file, if a reader used one
        replace_once()
        return original_from_file(*args, **kwargs)

    monkeypatch.setattr(torch.UntypedStorage, "from_file", replace_then_map)
    checkpoint = read_checkpoint(path)
    replace_once()  # after the file was opened, if the reader never mapped it a second time
    read = checkpoint.weights(use_ema=False)
    shift = 1 if checkpoint.step == 12345 else 0
    assert checkpoint.step in (meta["step"], 12345)
    for name, value in weights.items():
        if _is_float(value):
            assert torch.equal(read[name], value + shift), name


def _is_float(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()
