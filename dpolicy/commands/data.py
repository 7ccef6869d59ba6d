"""`dpolicy data info | verify | compare | video | render-images | import-lerobot | export-lerobot`:
inspect, check, compare, watch, complete and convert zarr demonstration datasets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dpolicy.data.replay_buffer import DatasetError, ReplayBuffer, VerifyReport, verify

#: Low-dim keys with at most this many values per step get per-dimension ranges in `info`.
PER_DIM_RANGE_MAX = 6
#: `verify` shows a progress bar (on a terminal) for stores with more chunks than this.
VERIFY_PROGRESS_MIN_CHUNKS = 50


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="episodes, steps, keys, shapes, dtypes and value ranges of a dataset")
    info.add_argument("path", type=Path, help="zarr dataset (directory or .zip)")
    info.add_argument("--no-ranges", action="store_true",
                      help="skip the value ranges (they read the whole dataset)")
    info.add_argument("--write-config", type=Path, default=None, metavar="DIR",
                      help="write the suggested task config (DIR/task/NAME.yaml) and an experiment using it "
                           "(DIR/NAME.yaml); train with `dpolicy train --config-dir DIR --config NAME`")
    info.add_argument("--name", default=None,
                      help="task name for the suggested config (default: the dataset's file name)")
    info.add_argument("--overwrite", action="store_true", help="replace existing config files of that name")
    info.add_argument("--no-suggestion", action="store_true", help="do not print the suggested task config")
    info.set_defaults(_action=run_info)

    check = sub.add_parser(
        "verify", help="decode every chunk and check every value of a dataset (exit 1 listing the problems)",
        description="Check a dataset completely. Opening a dataset (what `info`, `video` and training do) "
                    "already checks, without decoding, that every chunk file exists, has the size its "
                    "codec header gives and holds the dtype the data layer expects. `verify` also "
                    "decodes every chunk of every array, checks that float values are finite and that "
                    "meta/episode_ends is strictly increasing and ends where the data arrays do. It "
                    "prints per array the chunks checked, their bytes (stored and decoded) and the "
                    "problems found; exit status 0 when there are none, 1 otherwise (with the list).")
    check.add_argument("path", type=Path, help="zarr dataset (directory or .zip)")
    check.add_argument("--no-progress", action="store_true",
                       help="no progress bar (it is shown on a terminal for stores of more than "
                            f"{VERIFY_PROGRESS_MIN_CHUNKS} chunks)")
    check.set_defaults(_action=run_verify)

    compare = sub.add_parser(
        "compare", help="Push-T demonstration statistics side by side (starts, leads, smoothness, walls, "
                        "predictability)",
        description="Compute, for each Push-T dataset, the statistics that tell demonstration sets apart: "
                    "where episodes start and end, how far targets lead the agent, how smoothly they move, "
                    "time in contact, time near a wall, and how predictable the action is from the "
                    "observation (action spread between nearest-neighbour observations of different "
                    "episodes). See dpolicy.data.pusht_statistics.")
    compare.add_argument("paths", type=Path, nargs="+", help="zarr datasets in the Push-T layout")
    compare.add_argument("--samples", type=int, default=2000,
                         help="steps matched to their nearest neighbour (default 2000)")
    compare.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    compare.set_defaults(_action=run_compare)

    video = sub.add_parser("video", help="render one episode to mp4 or gif")
    video.add_argument("path", type=Path, help="zarr dataset (directory or .zip)")
    video.add_argument("--episode", type=int, required=True,
                       help="episode index (negative counts from the end)")
    video.add_argument("--out", type=Path, default=None,
                       help="output file, .mp4 or .gif (default: <dataset>_episode<N>.mp4 here)")
    video.add_argument("--size", type=_frame_size, default=256, help="frame size in pixels (default 256)")
    video.add_argument("--source", choices=("state", "img"), default="state",
                       help="draw frames from data/state with the Push-T renderer (default) or use the "
                            "recorded data/img frames")
    video.add_argument("--fps", type=int, default=10, help="frames per second (default 10, the control rate)")
    video.set_defaults(_action=run_video)

    render = sub.add_parser("render-images", help="add data/img (rendered from data/state) to a dataset")
    render.add_argument("path", type=Path, help="zarr dataset directory, modified in place")
    render.add_argument("--size", type=_frame_size, default=96, help="image size in pixels (default 96)")
    render.set_defaults(_action=run_render_images)

    lerobot_in = sub.add_parser(
        "import-lerobot", help="convert a local LeRobotDataset v3.0 folder into a zarr dataset",
        description="Convert a LeRobotDataset v3.0 folder (meta/info.json, data/ parquet files, videos/ mp4 "
                    "files) into this package's zarr layout. Videos and images become uint8 (N, H, W, C) "
                    "arrays; numeric features keep their dtype (action, state and keypoint are stored as "
                    "float32 when the feature is not floating point). Names: action -> action, "
                    "observation.images.<cam> -> <cam>, observation.<name> -> <name>, other features keep "
                    "theirs. timestamp, frame_index, episode_index, index and task_index become the episode "
                    "boundaries and root attributes (fps, task strings). Only format v3.0 is read. The dataset "
                    "is written to a hidden sibling of OUT and renamed into place when complete, so an "
                    "interrupted import leaves nothing at OUT.")
    lerobot_in.add_argument("source", type=Path, metavar="DIR", help="LeRobot dataset folder (has meta/info.json)")
    lerobot_in.add_argument("out", type=Path, metavar="OUT.zarr", help="zarr dataset to create")
    lerobot_in.add_argument("--overwrite", action="store_true", help="replace OUT if it is a zarr store")
    lerobot_in.add_argument("--no-progress", action="store_true",
                            help="no progress bar (it is shown on a terminal)")
    lerobot_in.set_defaults(_action=run_import_lerobot)

    lerobot_out = sub.add_parser(
        "export-lerobot", help="write a zarr dataset as a LeRobotDataset v3.0 folder",
        description="Write a zarr dataset as a LeRobotDataset v3.0 folder (the layout LeRobot reads). uint8 "
                    "(H, W, 3) arrays (and float ones named like images: img, image, rgb, *_img, ...) become "
                    "video features observation.images.<key>, encoded as mp4 (yuv420p, yuv444p for odd sizes; a "
                    "keyframe every 2 frames, as LeRobot does); action stays action; every other array becomes "
                    "observation.<key> with its dtype and shape, bit for bit. Writes meta/info.json, "
                    "meta/episodes, meta/tasks.parquet (one task), meta/stats.json and data/ parquet files. The "
                    "folder is written beside DIR and renamed into place when complete.")
    lerobot_out.add_argument("source", type=Path, metavar="IN.zarr", help="zarr dataset (directory or .zip)")
    lerobot_out.add_argument("out", type=Path, metavar="DIR", help="LeRobot dataset folder to create")
    lerobot_out.add_argument("--fps", type=_positive_float, default=None,
                             help="frames per second (default: the dataset's fps attribute, else 10)")
    lerobot_out.add_argument("--task", default=None,
                             help="the task string of every episode (default: the single task an import "
                                  "recorded, else the dataset's name)")
    lerobot_out.add_argument("--codec", choices=("auto", "libx264", "libsvtav1"), default="auto",
                             help="video encoder: libx264 (h264) or libsvtav1 (av1, LeRobot's default); auto "
                                  "takes libx264 when PyAV has it")
    lerobot_out.add_argument("--crf", type=int, default=None,
                             help="constant-quality factor, lower is better (default 18 for libx264, 30 for "
                                  "libsvtav1)")
    lerobot_out.add_argument("--robot-type", default=None, help="robot_type in meta/info.json (default: none)")
    lerobot_out.add_argument("--overwrite", action="store_true", help="replace DIR if it is a LeRobot folder")
    lerobot_out.add_argument("--no-progress", action="store_true",
                             help="no progress bar (it is shown on a terminal)")
    lerobot_out.set_defaults(_action=run_export_lerobot)


def _frame_size(text: str) -> int:
    size = int(text)
    if size < 8:
        raise argparse.ArgumentTypeError(f"frame size must be at least 8 pixels, got {size}")
    return size


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return int(value) if value.is_integer() else value


def run(args: argparse.Namespace) -> int:
    try:
        return int(args._action(args) or 0)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------- info
def describe(buffer: ReplayBuffer, ranges: bool = True) -> tuple[str, bool]:
    """Human-readable summary of a dataset, and whether every value is finite (True without ranges)."""
    lengths = buffer.episode_lengths
    lines = [f"dataset: {buffer.path} (zarr format {buffer.zarr_format})",
             f"episodes: {buffer.n_episodes}", f"steps: {buffer.n_steps}"]
    if len(lengths):
        lines.append(f"episode length: min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
    if buffer.attrs:
        lines.append("attrs:")
        for name, value in dict(buffer.attrs).items():
            lines.append(f"  {name}: {_shorten(value)}")
    lines.append("keys:")
    all_finite = True
    for key in buffer.keys():
        array = buffer[key]
        line = (f"  {key:<12} shape {tuple(array.shape)!s:<20} {array.dtype!s:<8} "
                f"chunks {tuple(array.chunks)!s:<18}")
        if ranges and buffer.n_steps:
            try:
                line += "  range " + _format_range(*buffer.value_range(key))
            except DatasetError as err:
                line += f"  INVALID: {err}"
                all_finite = False
        lines.append(line)
    return "\n".join(lines), all_finite


def _shorten(value, limit: int = 200) -> str:
    """One attribute value on one line; long lists are summarised by their length and ends."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{value[0]}, {value[1]}, ..., {value[-1]}] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...}"


def _format_range(lo: np.ndarray, hi: np.ndarray) -> str:
    if lo.size <= PER_DIM_RANGE_MAX:
        return " ".join(f"[{a:.4g}, {b:.4g}]" for a, b in zip(lo, hi, strict=True))
    return f"[{lo.min():.4g}, {hi.max():.4g}] (all {lo.size} dims)"


def _task_name(path: Path) -> str:
    stem = path.name.removesuffix(".zip").removesuffix(".zarr")
    name = "".join(c if c.isalnum() else "_" for c in stem).strip("_").lower() or "my_task"
    return name if name[0].isalpha() else f"task_{name}"


def run_info(args: argparse.Namespace) -> int:
    from dpolicy.data.suggest import suggest_configs, write_suggested_configs

    name = args.name or _task_name(args.path)
    with ReplayBuffer.open(args.path) as buffer:
        text, all_finite = describe(buffer, ranges=not args.no_ranges)
        print(text)
        if args.write_config is not None:
            task_path, experiment_path = write_suggested_configs(buffer, name, args.write_config, args.overwrite)
            print(f"\nwrote {task_path} and {experiment_path}; check them, then train with\n"
                  f"  dpolicy train --config-dir {args.write_config} --config {name}")
        elif not args.no_suggestion:
            task_text, _ = suggest_configs(buffer, name)
            print(f"\nsuggested task config (save as DIR/task/{name}.yaml, or write it and an experiment with "
                  f"--write-config DIR):\n")
            print(task_text, end="")
    return 0 if all_finite else 1


# ---------------------------------------------------------------------------------- verify
def format_verify_report(report: VerifyReport) -> str:
    """The table `dpolicy data verify` prints: one row per array, then the problems (if any)."""
    lines = [f"dataset: {report.path} (zarr format {report.zarr_format})"]
    if report.n_episodes is not None:
        lines.append(f"episodes: {report.n_episodes}, steps: {report.n_steps}")
    lines += [f"note: {note}" for note in report.notes]
    width = max([len(name) for name in report.arrays] + [5])
    lines.append(f"  {'array':<{width}}  {'chunks':>7}  {'stored':>10}  {'decoded':>10}  problems")
    for name, array in report.arrays.items():
        lines.append(f"  {name:<{width}}  {array.chunks:>7}  {_bytes(array.stored_bytes):>10}  "
                     f"{_bytes(array.decoded_bytes):>10}  {array.n_problems}{'+' if array.stopped else ''}")
    chunks = sum(a.chunks for a in report.arrays.values())
    decoded = sum(a.decoded_chunks for a in report.arrays.values())
    stored = sum(a.stored_bytes for a in report.arrays.values())
    problems = report.all_problems
    summary = (f"{chunks} chunks checked, {decoded} decoded ({_bytes(stored)} stored, "
               f"{_bytes(sum(a.decoded_bytes for a in report.arrays.values()))} decoded)")
    if not problems:
        lines.append(f"ok: {summary}, no problems")
    else:
        lines.append(f"{summary}; {len(problems)} problem{'s' if len(problems) > 1 else ''}:")
        lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run_verify(args: argparse.Namespace) -> int:
    progress = not args.no_progress and sys.stderr.isatty()
    report = verify(args.path, progress=progress, progress_min_chunks=VERIFY_PROGRESS_MIN_CHUNKS)
    print(format_verify_report(report))
    problems = report.all_problems
    if problems:
        more = f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""
        raise DatasetError(f"{args.path}: verify found {len(problems)} problem{'s' if len(problems) > 1 else ''}; "
                           f"first: {problems[0]}{more}")
    return 0


# ---------------------------------------------------------------------------------- video
def episode_frames(buffer: ReplayBuffer, episode: int, size: int, source: str = "state",
                   render: Callable[..., np.ndarray] | None = None) -> list[np.ndarray]:
    """uint8 (size, size, 3) frames of one episode: data/img resized, or data/state drawn by ``render``
    (default: the Push-T renderer) with the commanded action as target marker when data/action exists."""
    import cv2

    if source == "img":
        if "img" not in buffer:
            raise DatasetError(f"{buffer.path}: no data/img to take frames from; use --source state")
        images = buffer.load("img", episodes=[episode], dtype=np.uint8)
        interpolation = cv2.INTER_AREA if size < images.shape[1] else cv2.INTER_NEAREST
        return [cv2.resize(image, (size, size), interpolation=interpolation) for image in images]
    if "state" not in buffer:
        raise DatasetError(f"{buffer.path}: no data/state to render frames from")
    render = render or _pusht_renderer()
    states = buffer.get_episode(episode, keys=["state"])["state"]
    if "action" not in buffer:
        return [np.asarray(render(state, size=size), dtype=np.uint8) for state in states]
    actions = buffer.get_episode(episode, keys=["action"])["action"]
    return [np.asarray(render(state, size=size, target=action), dtype=np.uint8)
            for state, action in zip(states, actions, strict=True)]


def run_video(args: argparse.Namespace) -> int:
    from dpolicy.evaluation.report import write_video

    with ReplayBuffer.open(args.path) as buffer:
        if not -buffer.n_episodes <= args.episode < buffer.n_episodes:
            raise DatasetError(f"{args.path}: --episode {args.episode} is out of range "
                               f"({buffer.n_episodes} episodes)")
        index = args.episode % buffer.n_episodes
        frames = episode_frames(buffer, index, args.size, args.source)
    out = args.out or Path(f"{args.path.name.split('.')[0]}_episode{index}.mp4")
    if out.suffix not in (".mp4", ".gif"):
        raise DatasetError(f"--out must end in .mp4 or .gif, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_video(out, frames, fps=args.fps)
    print(f"wrote {written} ({len(frames)} frames, episode {index} of {args.path})")
    return 0


# ---------------------------------------------------------------------------------- compare
def run_compare(args: argparse.Namespace) -> int:
    import json

    from dpolicy.data.pusht_statistics import demonstration_statistics, format_comparison

    columns = {}
    for path in args.paths:
        if str(path) in columns:
            continue
        columns[str(path)] = demonstration_statistics(path, samples=args.samples)
    print(format_comparison(columns))
    if args.json is not None:
        args.json.write_text(json.dumps(columns, indent=2))
    return 0


# ---------------------------------------------------------------------------------- render-images
def add_rendered_images(buffer: ReplayBuffer, size: int = 96, key: str = "img",
                        render: Callable[..., np.ndarray] | None = None, progress: bool = True) -> None:
    """Add ``data/<key>`` (N, size, size, 3) uint8 rendered from data/state, atomically."""
    if "state" not in buffer:
        raise DatasetError(f"{buffer.path}: no data/state to render images from")
    render = render or _pusht_renderer()

    def render_episode(episode: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(render(state, size=size), dtype=np.uint8) for state in episode["state"]])

    buffer.add_key(key, render_episode, inputs=["state"], progress=progress)


def run_render_images(args: argparse.Namespace) -> int:
    with ReplayBuffer.open(args.path, mode="a") as buffer:
        if "img" in buffer:
            raise DatasetError(f"{args.path}: already has data/img {tuple(buffer['img'].shape)}")
        add_rendered_images(buffer, size=args.size)
        print(f"added data/img {tuple(buffer['img'].shape)} uint8 to {args.path}")
    return 0


def _pusht_renderer() -> Callable[..., np.ndarray]:
    try:
        from envs.pusht.render import render_state
    except ImportError as err:
        raise ImportError(f"the Push-T renderer envs.pusht.render.render_state is missing: {err}") from err
    return render_state


# ---------------------------------------------------------------------------------- LeRobot
def run_import_lerobot(args: argparse.Namespace) -> int:
    from dpolicy.data.lerobot import import_lerobot

    summary = import_lerobot(args.source, args.out, overwrite=args.overwrite,
                             progress=not args.no_progress and sys.stderr.isatty())
    keys = ", ".join(f"{key} <- {name}" for key, name in summary.keys.items())
    print(f"wrote {summary.path}: {summary.n_episodes} episodes, {summary.n_steps} steps at {summary.fps} fps "
          f"({keys}; {len(summary.tasks)} task{'s' if len(summary.tasks) != 1 else ''})")
    for name, why in summary.skipped.items():
        print(f"skipped {name}: {why}")
    return 0


def run_export_lerobot(args: argparse.Namespace) -> int:
    from dpolicy.data.lerobot import export_lerobot

    summary = export_lerobot(args.source, args.out, fps=args.fps, task=args.task, codec=args.codec, crf=args.crf,
                             robot_type=args.robot_type, overwrite=args.overwrite,
                             progress=not args.no_progress and sys.stderr.isatty())
    features = ", ".join(f"{key} -> {name}" for key, name in summary.features.items())
    video = f", videos {summary.codec}" if summary.codec else ""
    print(f"wrote {summary.path}: LeRobotDataset v3.0, {summary.n_episodes} episodes, {summary.n_frames} frames at "
          f"{summary.fps} fps ({features}{video}; task {summary.task!r})")
    return 0
