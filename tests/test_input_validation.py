"""Bad options are refused before anything is written, with one plain line and exit code 2; a
killed collection leaves no worker processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpolicy.cli import main


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpolicy", "train", "task.dataset.path=${dataset:embedded}",
                           f"run_dir={tmp_path / 'run'}", *overrides], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override", ["training.batch_size=0", "training.log_every=0", "training.checkpoint_every=0",
                                      "training.max_steps=0", "training.lr=-0.001", "training.val_batches=0",
                                      "training.max_minutes=0", "n_action_steps=20", "training.eval.n_envs=0"])
def test_zero_and_negative_training_options_are_refused_before_the_run_directory_exists(tmp_path, override):
    proc = _train(tmp_path, override)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and override.split("=")[0] in lines[0] and len(lines) <= 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_an_unwritable_run_directory_is_found_at_start(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["train", "task.dataset.path=${dataset:embedded}", f"run_dir={blocker / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to") and str(blocker) in err


@pytest.mark.parametrize("args", [
    ["eval", "x.safetensors", "--n-envs", "0"], ["eval", "x.safetensors", "--videos", "-1"], ["demo", "--steps", "0"],
    ["collect", "--expert", "scripted", "--episodes", "0", "--out", "x.zarr"],
    ["export", "x.safetensors", "--out", "e", "--steps", "0"]])
def test_command_line_numbers_are_range_checked(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "expected a value >=" in capsys.readouterr().err


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
def test_a_sigkilled_collect_leaves_no_live_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dpolicy", "collect", "--expert", "scripted", "--workers", "2",
                             "--episodes", "400", "--seed", "0", "--out", str(tmp_path / "demos.zarr")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.monotonic() + 90, set()
        while time.monotonic() < deadline and len(workers) < 2:
            workers = {c for c in _children(proc.pid) if _alive(c)}
            time.sleep(0.2)
        assert len(workers) >= 2, "the collection did not start its worker processes"
        time.sleep(1.0)  # let them get to work
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _children(proc.pid):
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass
