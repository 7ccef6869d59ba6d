"""`dpolicy data info | verify | video | render-images`."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from dpolicy.cli import main
from dpolicy.commands.data import add_rendered_images
from dpolicy.data.datasets import make_pusht_image_dataset
from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer
from dpolicy.data.synthetic import write_synthetic_pusht

LENGTHS = [20, 30, 25]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "demo.zarr"
    write_synthetic_pusht(path, LENGTHS, image_size=16).close()
    return path


@pytest.fixture
def lowdim_dataset(tmp_path):
    path = tmp_path / "lowdim.zarr"
    write_synthetic_pusht(path, [10, 9], image_size=None).close()
    return path


def test_info_reports_episodes_steps_keys_and_ranges(dataset, capsys):
    assert main(["data", "info", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "episodes: 3" in out and "steps: 75" in out
    assert "episode length: min 20, mean 25.0, max 30" in out
    assert "attrs:\n  synthetic: True" in out
    keys_section, suggestion = out.split("\nkeys:\n", 1)[1].split("\nsuggested task config", 1)
    lines = {line.split()[0]: line for line in keys_section.splitlines() if line.startswith("  ")}
    assert set(lines) == {"action", "img", "keypoint", "state"}
    # the suggested config declares what the dataset holds
    assert "    img: {source: img, shape: [16, 16, 3], type: rgb}" in suggestion
    assert "    keypoint: {source: keypoint, shape: [18], type: low_dim}" in suggestion
    assert "  action: {source: action, shape: [2]}" in suggestion
    assert "(75, 16, 16, 3)" in lines["img"] and "uint8" in lines["img"]
    assert "(75, 2)" in lines["action"] and "float32" in lines["action"]
    assert "range [0.125, 74.12] [0.375, 74.38]" in lines["action"]  # per dimension for small keys
    assert "(all 768 dims)" in lines["img"]


def test_info_into_a_pipe_whose_reader_has_gone_ends_quietly(dataset):
    # as in `dpolicy data info X | head -1`, when head has exited before the output is written
    proc = subprocess.Popen([sys.executable, "-m", "dpolicy", "data", "info", str(dataset)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # no reader left: every write to stdout fails
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_info_flags_non_finite_values_and_bad_paths(dataset, tmp_path, capsys):
    zarr.open_group(LocalStore(dataset), mode="r+")["data"]["state"][40, 0] = np.nan
    assert main(["data", "info", str(dataset)]) == 1
    assert "INVALID" in capsys.readouterr().out
    assert main(["data", "info", str(dataset), "--no-ranges"]) == 0
    assert main(["data", "info", str(tmp_path / "nowhere.zarr")]) == 1
    assert "no such dataset" in capsys.readouterr().err


def test_verify_reports_every_array_and_passes_a_clean_dataset(dataset, capsys):
    assert main(["data", "verify", str(dataset)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress bar off a terminal, no error line
    lines = {line.split()[0]: line.split() for line in captured.out.splitlines() if line.startswith("  ")}
    assert set(lines) == {"array", "meta/episode_ends", "data/action", "data/img", "data/keypoint", "data/state"}
    assert lines["data/img"][1] == "1" and lines["data/img"][-1] == "0"  # 1 chunk, no problems
    assert lines["data/img"][4:6] == ["56.2", "KiB"]  # 75 * 16 * 16 * 3 bytes decoded
    assert "episodes: 3, steps: 75" in captured.out
    assert captured.out.splitlines()[-1].startswith("ok: 5 chunks checked, 5 decoded")


def test_verify_lists_problems_and_exits_1(dataset, capsys):
    zarr.open_group(LocalStore(dataset), mode="r+")["data"]["state"][40, 0] = np.nan
    (dataset / "data" / "keypoint" / "0.0.0").unlink()
    assert main(["data", "verify", str(dataset)]) == 1
    captured = capsys.readouterr()
    assert "2 problems:" in captured.out
    assert "  - data/state contains NaN or inf at step 40 (episode 1), in data/state: chunk 0.0" in captured.out
    assert "  - data/keypoint: chunk 0.0.0 is missing (no file data/keypoint/0.0.0)" in captured.out
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {dataset}: verify found 2 problems; first: ")
    # `info` (and every reader) refuses the missing chunk at open; the NaN alone is only an INVALID range
    assert main(["data", "info", str(dataset)]) == 1
    assert "data/keypoint: chunk 0.0.0 is missing" in capsys.readouterr().err


def test_verify_checks_episode_ends_against_the_arrays(dataset, capsys):
    ends = zarr.open_group(LocalStore(dataset), mode="r+")["meta"]["episode_ends"]
    ends[:] = [20, 50, 74]
    assert main(["data", "verify", str(dataset)]) == 1
    assert ("every data array needs one row per step, 74 in all (meta/episode_ends[-1]); found data/action: 75"
            in capsys.readouterr().out)
    ends[:] = [20, 20, 75]
    assert main(["data", "verify", str(dataset)]) == 1
    assert "meta/episode_ends must be strictly increasing" in capsys.readouterr().out


def test_verify_help_explains_what_is_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "verify", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "decodes every chunk of every array" in text and "finite" in text
    assert "exit status 0 when there are none, 1 otherwise" in text


def test_video_from_recorded_frames(dataset, tmp_path, capsys):
    out = tmp_path / "videos" / "ep1.gif"
    assert main(["data", "video", str(dataset), "--episode", "1", "--source", "img", "--size", "32",
                 "--out", str(out)]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape == (LENGTHS[1], 32, 32, 3)
    assert "30 frames" in capsys.readouterr().out
    assert main(["data", "video", str(dataset), "--episode", "3", "--source", "img"]) == 1
    assert "out of range (3 episodes)" in capsys.readouterr().err


def test_video_rendered_from_states_as_mp4(dataset, tmp_path):
    pytest.importorskip("envs.pusht.render")
    out = tmp_path / "ep0.mp4"
    assert main(["data", "video", str(dataset), "--episode", "-3", "--out", str(out), "--size", "64"]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == LENGTHS[0] and frames.shape[1:3] == (64, 64)


def test_video_without_images_asks_for_state_source(lowdim_dataset, tmp_path, capsys):
    assert main(["data", "video", str(lowdim_dataset), "--episode", "0", "--source", "img",
                 "--out", str(tmp_path / "x.gif")]) == 1
    assert "no data/img" in capsys.readouterr().err


def test_add_rendered_images_writes_one_frame_per_state(lowdim_dataset):
    def fake_render(state, size):
        return np.full((size, size, 3), int(state[0]) % 256, dtype=np.uint8)

    with ReplayBuffer.open(lowdim_dataset, mode="a") as buffer:
        add_rendered_images(buffer, size=12, render=fake_render, progress=False)
    with ReplayBuffer.open(lowdim_dataset) as buffer:
        images, state = buffer.load("img"), buffer.load("state")
    assert images.shape == (19, 12, 12, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 5, 7, 1], state[:, 0].astype(int))


def test_render_images_command_makes_an_image_dataset(lowdim_dataset, capsys):
    render = pytest.importorskip("envs.pusht.render")
    with pytest.raises(DatasetError, match="missing array data/img"):
        make_pusht_image_dataset(lowdim_dataset, val_ratio=0.0)
    assert main(["data", "render-images", str(lowdim_dataset)]) == 0
    assert "added data/img (19, 96, 96, 3) uint8" in capsys.readouterr().out
    with ReplayBuffer.open(lowdim_dataset) as buffer:
        np.testing.assert_array_equal(buffer["img"][7], render.render_state(buffer["state"][7], size=96))
    assert len(make_pusht_image_dataset(lowdim_dataset, val_ratio=0.0)) == (10 - 7) + (9 - 7)
    assert main(["data", "render-images", str(lowdim_dataset)]) == 1
    assert "already has data/img" in capsys.readouterr().err
