"""Headless rendering: matches the dataset's frames, any size, overlays, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from envs.pusht.render import (
    AGENT_COLOR,
    GOAL_COLOR,
    TARGET_COLOR,
    Renderer,
    light_color,
    render_state,
)

STATE = np.array([100.0, 120.0, 300.0, 330.0, 1.0])


@pytest.mark.human_data
def test_96px_frames_match_the_dataset_images(human_dataset_path):
    data = zarr.open_group(str(human_dataset_path), mode="r")["data"]
    n_frames = data["img"].shape[0]
    chunk = data["img"].chunks[0]
    frames = np.sort(np.random.default_rng(0).choice(n_frames, 500, replace=False))
    states = data["state"][:].astype(np.float64)
    diffs = []
    for first in np.unique(frames // chunk) * chunk:  # read each needed chunk once
        images = data["img"][first:first + chunk]
        for i in frames[(frames >= first) & (frames < first + chunk)]:
            rendered = render_state(states[i], 96).astype(np.float32)
            diffs.append(np.abs(rendered - images[i - first]).mean())
    assert len(diffs) == 500
    assert np.mean(diffs) < 3.0
    assert np.max(diffs) < 6.0


def test_frame_content_and_colors():
    image = render_state(STATE, 512)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert tuple(image[10, 256]) == (255, 255, 255)  # inside the walls: background
    assert tuple(image[256, 256]) == GOAL_COLOR  # the goal T covers (256, 256) + stem
    assert tuple(image[120, 100]) == light_color(AGENT_COLOR)  # agent centre (x=100, y=120)
    assert tuple(image[120, 100 + 13]) == AGENT_COLOR  # agent outer ring
    assert tuple(image[5, 256]) == (211, 211, 211)  # top wall


@pytest.mark.parametrize("size", [64, 96, 200, 512, 1024])
def test_any_size(size):
    image = render_state(STATE, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert (image != 255).any()


def test_overlays_are_drawn_only_when_asked():
    plain = render_state(STATE, 256)
    path = np.array([[100.0, 120.0], [150.0, 160.0], [200.0, 220.0], [260.0, 250.0]])
    with_path = render_state(STATE, 256, action_path=path)
    with_target = render_state(STATE, 256, target=np.array([400.0, 400.0]))
    assert np.array_equal(plain, render_state(STATE, 256))
    assert (with_path != plain).any(axis=-1).sum() > 50
    assert tuple(with_target[200, 200]) == TARGET_COLOR  # (400, 400) px at 256/512 scale
    assert np.array_equal(with_target[:150], plain[:150])


def test_custom_goal_pose_moves_the_goal():
    image = Renderer(goal_pose=(400.0, 100.0, 0.0)).render(STATE, 512)
    assert tuple(image[110, 400]) == GOAL_COLOR
    assert tuple(image[256, 256]) == (255, 255, 255)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="state must be 5 finite numbers"):
        render_state([1.0, 2.0], 96)
    with pytest.raises(ValueError, match="state must be 5 finite numbers"):
        render_state([1.0, 2.0, 3.0, 4.0, np.nan], 96)
    with pytest.raises(ValueError, match="render size"):
        render_state(STATE, 2)
    with pytest.raises(ValueError, match=r"action_path must be world points of shape \(T, 2\)"):
        render_state(STATE, 96, action_path=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="goal_pose"):
        Renderer(goal_pose=(1.0, 2.0))


def test_renders_at_512_without_a_display():
    code = ("import numpy as np; from envs.pusht.render import render_state; "
            "im = render_state(np.array([100., 120., 300., 330., 1.]), 512); print(im.shape, im.dtype)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(512, 512, 3) uint8"
