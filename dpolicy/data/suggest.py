"""A starting task config for a dataset: what ``dpolicy data info`` suggests.

Every uint8 (or float, 0-255) array of per-step shape (H, W, 1 or 3) becomes an ``rgb`` observation key, the array
named ``action`` (or the first whose name contains "action") the action, and every other array a
``low_dim`` key; the experiment file next to it picks the image policy when there are cameras and
sizes its crop and ResNet for the image size. The result is a suggestion to read and edit (drop
keys the policy should not see, e.g. a privileged object pose), not a tuned recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpolicy.data.lerobot import BOOKKEEPING as LEROBOT_BOOKKEEPING
from dpolicy.data.replay_buffer import ReplayBuffer

#: Arrays that index the frames rather than describe them (LeRobot's bookkeeping columns).
BOOKKEEPING = set(LEROBOT_BOOKKEEPING)
#: Smallest side, in feature-map pixels, left for the spatial softmax after the ResNet.
MIN_FEATURE_SIDE = 3


def _is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return (dtype == np.uint8 or dtype.kind == "f") and len(shape) == 3 and shape[2] in (1, 3) and min(shape[:2]) >= 8


def encoder_for_image(height: int, width: int) -> dict:
    """Crop, ResNet stages and width for images of this size: the crop keeps about 7/8 of the frame (as
    84 of 96 in Push-T), the stages as many as leave a feature map of >= MIN_FEATURE_SIDE pixels."""
    crop = [max(8, int(round(height * 0.875))), max(8, int(round(width * 0.875)))]
    stages = 1
    for s in range(4, 0, -1):
        if min(crop) / 2 ** (s + 1) >= MIN_FEATURE_SIDE:
            stages = s
            break
    return {"crop_shape": crop, "resnet_stages": stages, "resnet_width": 64 if min(crop) >= 64 else 32}


def suggest_task(buffer: ReplayBuffer) -> dict:
    """{"obs": {key: entry}, "action": entry | None, "images": [keys]} for the arrays of ``buffer``."""
    keys = [k for k in buffer.keys() if k not in BOOKKEEPING]
    action = "action" if "action" in keys else next((k for k in keys if "action" in k), None)
    obs, images = {}, []
    for key in keys:
        if key == action:
            continue
        array = buffer[key]
        shape = tuple(int(n) for n in array.shape[1:])
        if _is_image(shape, array.dtype):
            obs[key] = {"source": key, "shape": list(shape), "type": "rgb"}
            images.append(key)
        else:
            obs[key] = {"source": key, "shape": [int(np.prod(shape)) if shape else 1], "type": "low_dim"}
    action_entry = None
    if action is not None:
        shape = tuple(int(n) for n in buffer[action].shape[1:])
        action_entry = {"source": action, "shape": [int(np.prod(shape)) if shape else 1]}
    return {"obs": obs, "action": action_entry, "images": images}


def _flow(entry: dict) -> str:
    parts = []
    for key, value in entry.items():
        text = "[" + ", ".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)
        parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


def suggest_configs(buffer: ReplayBuffer, name: str) -> tuple[str, str]:
    """(task config, experiment config) YAML texts for training on ``buffer`` without a simulator."""
    spec = suggest_task(buffer)
    path = Path(buffer.path).resolve()
    fps = buffer.attrs.get("fps") if hasattr(buffer.attrs, "get") else None
    val_ratio = 0.1 if buffer.n_episodes >= 10 else round(max(0.1, 1.5 / max(buffer.n_episodes, 1)), 2)
    lines = [
        f"# Task {name}: {buffer.n_episodes} episodes, {buffer.n_steps} steps from {path}"
        + (f" recorded at {fps} Hz" if fps else "") + ".",
        "# Suggested by `dpolicy data info`: check each key, drop what the policy must not see.",
        f"name: {name}",
        "env_id: null             # no simulator: training evaluates offline on held-out episodes",
        "env_kwargs: {}",
        "max_steps: null",
        "dataset:",
        f"  path: {path}",
        "  obs:                   # observation key -> dataset array(s), per-step shape, low_dim | rgb",
    ]
    lines += [f"    {key}: {_flow(entry)}" for key, entry in spec["obs"].items()]
    if spec["action"] is None:
        lines.append("  action: {source: ???, shape: [???]}   # no array named like an action: name it here")
    else:
        lines.append(f"  action: {_flow(spec['action'])}")
    lines += [
        "  horizon: ${horizon}",
        "  n_obs_steps: ${n_obs_steps}",
        "  n_action_steps: ${n_action_steps}",
        f"  val_ratio: {val_ratio}         # held-out episodes for the offline evaluation",
        "  seed: ${seed}",
        "  max_train_episodes: null",
    ]
    task = "\n".join(lines) + "\n"

    experiment = [
        f"# Diffusion Policy on {name}: dpolicy train --config-dir <this folder> --config {name}",
        "defaults:",
        "  - common",
        f"  - task: {name}",
        f"  - policy: {'diffusion_unet_image_cpu' if spec['images'] else 'diffusion_unet_cpu'}",
        "  - training: cpu",
        "  - _self_",
        f"name: {name}",
    ]
    if spec["images"]:
        sizes = [buffer[key].shape[1:3] for key in spec["images"]]
        encoder = encoder_for_image(min(s[0] for s in sizes), min(s[1] for s in sizes))
        experiment += [
            "policy:                  # image encoder sized for the smallest camera",
            f"  crop_shape: [{encoder['crop_shape'][0]}, {encoder['crop_shape'][1]}]",
            f"  resnet_stages: {encoder['resnet_stages']}",
            f"  resnet_width: {encoder['resnet_width']}",
        ]
    return task, "\n".join(experiment) + "\n"


def write_suggested_configs(buffer: ReplayBuffer, name: str, config_dir: Path, overwrite: bool = False
                            ) -> tuple[Path, Path]:
    """Write ``config_dir/task/<name>.yaml`` and ``config_dir/<name>.yaml``; refuses to replace files."""
    from dpolicy.errors import UsageError

    if not name.isidentifier():
        raise UsageError(f"--name {name!r}: use letters, digits and underscores (it names config files)")
    task_text, experiment_text = suggest_configs(buffer, name)
    task_path, experiment_path = config_dir / "task" / f"{name}.yaml", config_dir / f"{name}.yaml"
    for path in (task_path, experiment_path):
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; choose another --name or pass --overwrite")
    task_path.parent.mkdir(parents=True, exist_ok=True)
    task_path.write_text(task_text)
    experiment_path.write_text(experiment_text)
    return task_path, experiment_path

