"""Push-T geometry: coverage (checked against shapely), keypoints, frame transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import zarr
from shapely.geometry import Polygon

from envs.pusht import geometry as geo


def _shapely_t(pose):
    return shapely.union_all([Polygon(box) for box in geo.t_polygons(pose)])


def test_t_shape_area_and_goal_coverage():
    assert _shapely_t((0, 0, 0)).area == pytest.approx(geo.T_AREA)
    assert geo.coverage(geo.GOAL_POSE) == pytest.approx(1.0, abs=1e-12)
    assert geo.coverage((100.0, 100.0, 0.0)) == 0.0


def test_coverage_matches_shapely_on_random_poses():
    rng = np.random.default_rng(0)
    poses = [np.r_[rng.uniform(150, 350, 2), rng.uniform(-2 * math.pi, 2 * math.pi)] for _ in range(300)]
    poses += [geo.GOAL_POSE + rng.normal(0, 1, 3) * (4.0, 4.0, 0.05) for _ in range(300)]
    goal = _shapely_t(geo.GOAL_POSE)
    worst = 0.0
    for pose in poses:
        expected = goal.intersection(_shapely_t(pose)).area / goal.area
        worst = max(worst, abs(geo.coverage(pose) - expected))
    assert worst < 1e-9


def test_overlap_area_is_symmetric():
    a, b = (250.0, 240.0, 0.3), (262.0, 255.0, 1.1)
    assert geo.overlap_area(a, b) == pytest.approx(geo.overlap_area(b, a), rel=1e-12)


def test_reward_from_coverage_clips():
    assert geo.reward_from_coverage(0.475) == pytest.approx(0.5)
    assert geo.reward_from_coverage(0.97) == 1.0
    assert geo.reward_from_coverage(0.0) == 0.0


def test_world_body_round_trip():
    rng = np.random.default_rng(1)
    points = rng.uniform(-100, 100, (7, 2))
    pose = (123.0, 321.0, 2.5)
    assert np.allclose(geo.world_to_body(geo.body_to_world(points, pose), pose), points, atol=1e-12)
    # rotating (1, 0) by +90 degrees gives (0, 1) in y-down pixel coordinates
    assert np.allclose(geo.body_to_world([[1.0, 0.0]], (0, 0, math.pi / 2)), [[0.0, 1.0]], atol=1e-12)


def test_keypoints_lie_on_the_t():
    # farthest-point samples of a rasterised T: on the shape, at most ~3 px beyond its edges
    t = _shapely_t((0, 0, 0)).buffer(3.0)
    assert all(t.contains(shapely.Point(p)) for p in geo.KEYPOINTS_BODY)


def test_derive_body_keypoints_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"state must have shape \(N, 5\)"):
        geo.derive_body_keypoints(np.zeros((4, 3)), np.zeros((4, 9, 2)))
    with pytest.raises(ValueError, match="keypoint must have shape"):
        geo.derive_body_keypoints(np.zeros((4, 5)), np.zeros((3, 9, 2)))


def test_derive_body_keypoints_recovers_synthetic_points():
    rng = np.random.default_rng(2)
    state = np.c_[rng.uniform(0, 512, (50, 4)), rng.uniform(0, 2 * math.pi, 50)]
    keypoint = np.stack([geo.keypoints_world(s[2:5]) for s in state])
    assert np.allclose(geo.derive_body_keypoints(state, keypoint), geo.KEYPOINTS_BODY, atol=1e-9)


@pytest.mark.human_data
def test_keypoint_constant_matches_the_human_dataset(human_dataset_path):
    data = zarr.open_group(str(human_dataset_path), mode="r")["data"]
    state = data["state"][:].astype(np.float64)
    keypoint = data["keypoint"][:].astype(np.float64)
    assert np.abs(geo.derive_body_keypoints(state, keypoint) - geo.KEYPOINTS_BODY).max() < 1e-5
    # the constant reproduces the recorded world keypoints (float32 data; a few frames disagree)
    predicted = np.stack([geo.keypoints_world(s[2:5]) for s in state[::10]])
    error = np.linalg.norm(predicted - keypoint[::10], axis=-1).max(axis=1)
    assert np.median(error) < 1e-3
    assert np.percentile(error, 95) < 0.05
