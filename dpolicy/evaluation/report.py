"""Files an evaluation leaves behind: metrics JSON, per-episode CSV, videos, final-frame grid.

Frames are drawn from the recorded Push-T states with ``envs.pusht.render.render_state``:
goal, block and agent, the executed target and the whole predicted action sequence of the
plan it came from, plus the step and the coverage.
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


def write_episodes_csv(path: Path, results: Sequence[EpisodeResult]) -> None:
    """One row per finished episode, in seed-list order."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EpisodeResult.columns())
        writer.writeheader()
        for r in results:
            row = r.as_row()
            row["max_coverage"] = f"{r.max_coverage:.6f}"
            row["final_coverage"] = f"{r.final_coverage:.6f}"
            row["score"] = f"{r.score:.6f}"
            writer.writerow(row)


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


def episode_frames(trace, size: int = VIDEO_SIZE) -> list[np.ndarray]:
    """Frames of a traced episode: the state before each action, with that plan drawn in."""
    from envs.pusht.render import render_state

    frames = []
    n = len(trace.actions)
    for t in range(n + 1):
        state = trace.states[t]
        if t < n:
            image = render_state(state, size=size, action_path=trace.predictions[t], target=trace.actions[t])
        else:
            image = render_state(state, size=size)
        cov = trace.coverages[t - 1] if t > 0 else float("nan")
        image = _caption(image, [f"step {t}", f"coverage {cov:.3f}" if t > 0 else "start"])
        frames.append(image)
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


def final_frame_grid(results: Sequence[EpisodeResult], final_states: Mapping[int, np.ndarray | None],
                     tile: int = GRID_TILE, max_episodes: int = GRID_MAX_EPISODES) -> np.ndarray | None:
    """Final frame of each episode (seed, best coverage; green border = success), tiled in rows of 10."""
    import cv2

    from envs.pusht.render import render_state

    shown = [r for r in results if final_states.get(r.episode) is not None][:max_episodes]
    if not shown:
        return None
    cols = min(10, len(shown))
    rows = math.ceil(len(shown) / cols)
    grid = np.full((rows * tile, cols * tile, 3), 255, dtype=np.uint8)
    for k, r in enumerate(shown):
        image = render_state(final_states[r.episode], size=tile)
        color = (40, 160, 40) if r.success else (200, 40, 40)
        image = cv2.copyMakeBorder(image[3:-3, 3:-3], 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=color)
        image = _caption(image, [f"{r.seed}", f"{r.max_coverage:.2f}"])
        y, x = divmod(k, cols)
        grid[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = image
    return grid


def write_report(out_dir: Path, metrics: dict, results: Sequence[EpisodeResult], traces: Mapping,
                 final_states: Mapping[int, np.ndarray | None], video_format: str = "mp4") -> None:
    """Write everything into ``out_dir``; the names of the written files are added to ``metrics``."""
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_episodes_csv(out_dir / EPISODES_FILE, results)
    files = [EPISODES_FILE]
    has_states = any(s is not None for s in final_states.values())
    if has_states:
        grid = final_frame_grid(results, final_states)
        if grid is not None:
            import imageio.v3 as iio

            iio.imwrite(out_dir / GRID_FILE, grid)
            files.append(GRID_FILE)
        for episode in sorted(traces):
            trace = traces[episode]
            if any(s is None for s in trace.states):
                continue
            seed = next(r.seed for r in results if r.episode == episode)
            name = f"episode_{episode:03d}_seed_{seed}.{video_format}"
            path = write_video(out_dir / name, episode_frames(trace))
            files.append(path.name)
    elif results:
        metrics["frames_note"] = "the environment's info has no agent/block state: no videos or frame grid"
    metrics["files"] = [METRICS_FILE, *files]
    write_metrics(out_dir / METRICS_FILE, metrics)
