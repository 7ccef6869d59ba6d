"""Files an evaluation leaves behind: metrics JSON, per-episode CSV, videos, final-frame grid.

Frames are what the environment's ``render()`` returned during the rollout (whatever the task
draws, e.g. the scene and the executed target), scaled to the video size and
captioned with the step and its reward.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dpolicy.evaluation.metrics import EpisodeResult

METRICS_FILE = "metrics.json"
EPISODES_FILE = "episodes.csv"
GRID_FILE = "final_frames.png"
VIDEO_FORMATS = ("mp4", "gif")
#: Frame rate of the videos: the control rate (10 Hz) plays in real time.
VIDEO_FPS = 10
VIDEO_SIZE = 256
GRID_TILE = 128
#: The grid shows the first this-many episodes.
GRID_MAX_EPISODES = 100


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


def write_metrics(path: Path, metrics: Mapping) -> None:
    """Metrics as JSON (NaN written as null)."""
    path.write_text(json.dumps(_jsonable(dict(metrics)), indent=2) + "\n")


def write_episodes_csv(path: Path, results: Sequence[EpisodeResult], extra_names: Sequence[str] = ()) -> None:
    """One row per finished episode, in seed-list order (floats with 6 decimals)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EpisodeResult.columns(extra_names))
        writer.writeheader()
        for r in results:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in r.as_row().items()})


def _caption(image: np.ndarray, lines: Sequence[str], color=(0, 0, 0)) -> np.ndarray:
    """Small text lines in the top-left corner, readable from 128 px frames up."""
    import cv2

    image = np.ascontiguousarray(image)
    size = image.shape[0]
    font_scale = 0.3 + size / 1000
    line_height = int(12 + size / 40)
    for k, text in enumerate(lines):
        cv2.putText(image, text, (5, line_height * (k + 1)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1,
                    cv2.LINE_AA)
    return image


def _fit(frame: np.ndarray, size: int) -> np.ndarray:
    """A rendered frame scaled to ``size`` x ``size`` (nearest neighbour keeps thin lines crisp)."""
    import cv2

    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.shape[:2] == (size, size):
        return frame.copy()
    interpolation = cv2.INTER_NEAREST if frame.shape[0] < size else cv2.INTER_AREA
    return cv2.resize(frame, (size, size), interpolation=interpolation)


def episode_frames(trace, size: int = VIDEO_SIZE) -> list[np.ndarray]:
    """Frames of a traced episode (the reset frame, then one per step), captioned with step and reward."""
    frames = []
    for t, frame in enumerate(trace.frames):
        caption = [f"step {t}", f"reward {trace.rewards[t - 1]:.3f}" if t > 0 else "start"]
        frames.append(_caption(_fit(frame, size), caption))
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = VIDEO_FPS) -> Path:
    """mp4 (ffmpeg via imageio-ffmpeg) or gif, by the suffix of ``path``; mp4 falls back to gif."""
    import imageio.v2 as imageio

    if path.suffix == ".mp4":
        try:
            with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=8,
                                    ffmpeg_log_level="error") as writer:
                for frame in frames:
                    writer.append_data(frame)
            return path
        except (ImportError, RuntimeError, OSError) as exc:
            warnings.warn(f"mp4 writing failed ({exc}); writing a gif instead", stacklevel=2)
            path.unlink(missing_ok=True)
            path = path.with_suffix(".gif")
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
    return path


def final_frame_grid(results: Sequence[EpisodeResult], final_frames: Mapping[int, np.ndarray],
                     tile: int = GRID_TILE, max_episodes: int = GRID_MAX_EPISODES) -> np.ndarray | None:
    """Final frame of each episode (seed and score; green border = success), tiled in rows of 10."""
    import cv2

    shown = [r for r in results if r.episode in final_frames][:max_episodes]
    if not shown:
        return None
    cols = min(10, len(shown))
    rows = math.ceil(len(shown) / cols)
    grid = np.full((rows * tile, cols * tile, 3), 255, dtype=np.uint8)
    for k, r in enumerate(shown):
        image = _fit(final_frames[r.episode], tile)
        color = (40, 160, 40) if r.success else (200, 40, 40)
        image = cv2.copyMakeBorder(image[3:-3, 3:-3], 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=color)
        image = _caption(image, [f"{r.seed}", f"{r.score:.2f}"])
        y, x = divmod(k, cols)
        grid[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = image
    return grid


def write_report(out_dir: Path, metrics: dict, results: Sequence[EpisodeResult], traces: Mapping,
                 final_frames: Mapping[int, np.ndarray], extra_names: Sequence[str] = (),
                 video_format: str = "mp4") -> None:
    """Write everything into ``out_dir``; the names of the written files are added to ``metrics``.

    ``extra_names``: the tracked info keys (columns ``max_<key>``, ``final_<key>``)."""
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [f"{kind}_{key}" for key in extra_names for kind in ("max", "final")]
    write_episodes_csv(out_dir / EPISODES_FILE, results, columns)
    files = [EPISODES_FILE]
    grid = final_frame_grid(results, final_frames)
    if grid is not None:
        import imageio.v3 as iio

        iio.imwrite(out_dir / GRID_FILE, grid)
        files.append(GRID_FILE)
    for episode in sorted(traces):
        seed = next(r.seed for r in results if r.episode == episode)
        name = f"episode_{episode:03d}_seed_{seed}.{video_format}"
        path = write_video(out_dir / name, episode_frames(traces[episode]))
        files.append(path.name)
    metrics["files"] = [METRICS_FILE, *files]
    write_metrics(out_dir / METRICS_FILE, metrics)
