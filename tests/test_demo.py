"""`dpolicy demo` end to end at toy scale: trains on the embedded data, evaluates, writes its report."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_writes_a_report_with_curves_frames_videos_and_reference_figures(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "dpolicy", "demo", "--out", str(out), "--steps", "30",
                           "--protocol", "100000-100002", "--videos", "1", "--device", "cpu",
                           "training.compile=false", "training.progress=false", "training.num_threads=1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "`pusht_lowdim_expert`, 2 actions executed per plan" in report
    assert "| **this run** |" in report and "Diffusion Policy paper" in report and "default recipe" in report
    assert "![training curves](curves.png)" in report and (out / "curves.png").is_file()
    assert "![final frames](eval/final_frames.png)" in report and (out / "eval" / "final_frames.png").is_file()
    video = next(p for p in (out / "eval").iterdir() if p.suffix in (".mp4", ".gif"))
    assert f"(eval/{video.name})" in report
