"""Self-describing checkpoints that cannot run code.

A checkpoint is one safetensors file (``*.safetensors``): the tensors (plain weights ``model.*``,
EMA weights ``ema_model.*`` with the normalizer inside as buffers, and for resuming the optimizer's
``optimizer.*`` and the RNG states ``rng.*``) plus a JSON document in the file's header: the format
tag, package version, resolved config, observation/action spec, step and the plain-number training
state (epoch, batch position, LR schedule, EMA counters, top-k list). Loading parses JSON and
copies tensors; nothing in the file is executed or imported:

- the policy class comes from :data:`dpolicy.policies.POLICIES` by the config's ``policy.name``;
- every other config value is data passed to that class, never instantiated;
- files are written to a temporary name and renamed, so a crash never leaves half a checkpoint.

Checkpoints of the older pickle-based format (``.pt``) are refused with a pointer to
``dpolicy convert-checkpoint``, which reads them with torch's restricted unpickler (tensors and
data only).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import dpolicy
from dpolicy.data.normalizer import Normalizer
from dpolicy.errors import CheckpointError

CHECKPOINT_FORMAT = "dpolicy-checkpoint-v2"
SUFFIX = ".safetensors"
#: The run's rolling checkpoint, in ``<run_dir>/checkpoints/``.
LATEST = "latest" + SUFFIX
#: The header key of the safetensors file that holds the JSON document.
META_KEY = "dpolicy"
#: The largest JSON header accepted (configs are a few kB; this bounds a hostile file's header).
MAX_HEADER_BYTES = 64 * 2**20
#: Tensor groups of the file (prefix of the tensor names).
GROUPS = ("model", "ema_model", "optimizer", "rng")


# ------------------------------------------------------------------------------------ writing
def _flatten_optimizer(state: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors, JSON): per-parameter tensors by name, scalars as JSON."""
    tensors, per_param = {}, {}
    for index, entries in state["state"].items():
        scalars = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[name] = value
        per_param[str(index)] = scalars
    return tensors, {"param_groups": state["param_groups"], "scalars": per_param}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> dict:
    state: dict[int, dict] = {int(i): dict(scalars) for i, scalars in meta["scalars"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": [dict(g) for g in meta["param_groups"]]}


def capture_rng(states: tuple | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """torch's, numpy's and Python's generator states as (tensors, JSON): the global generators'
    now, or the given ``(torch_state, numpy_state, python_state)``."""
    import random

    torch_state, numpy_state, python_state = states or (torch.get_rng_state(), np.random.get_state(),
                                                        random.getstate())
    kind, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = python_state
    tensors = {"torch": torch.as_tensor(torch_state, dtype=torch.uint8).cpu(),
               "numpy_keys": torch.from_numpy(np.asarray(keys, np.uint32).view(np.int32)),
               "python_state": torch.tensor(internal, dtype=torch.int64)}
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "gauss_next": gauss_next}}
    return tensors, meta


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Set the global generators from :func:`capture_rng`'s output."""
    import random

    torch.set_rng_state(tensors["torch"].cpu().to(torch.uint8))
    n = meta["numpy"]
    keys = tensors["numpy_keys"].cpu().numpy().view(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(int(v) for v in tensors["python_state"].tolist()), p["gauss_next"]))


def save_checkpoint(path: str | Path, meta: Mapping[str, Any], model: Mapping[str, torch.Tensor],
                    ema_model: Mapping[str, torch.Tensor] | None = None,
                    optimizer: Mapping | None = None, rng: bool | tuple = False) -> Path:
    """Atomically write a checkpoint to ``path`` (a ``.safetensors`` file).

    ``meta``: JSON-serializable document (``config``, ``shape_meta``, ``step``, training state);
    ``model`` / ``ema_model``: state dicts; ``optimizer``: an optimizer's state_dict (for resume);
    ``rng``: also store the global RNG states (True) or the given ones (a tuple, see
    :func:`capture_rng`), for a bit-exact resume.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"checkpoint file names end in {SUFFIX}, got {path}")
    document = {"format": CHECKPOINT_FORMAT, "package_version": dpolicy.__version__, **meta,
                "has_ema": ema_model is not None}
    tensors: dict[str, torch.Tensor] = {}
    document["extra_state"] = {}
    for group, state in (("model", model), ("ema_model", ema_model)):
        if state is None:
            continue
        # Modules' extra state (e.g. the normalizer's key kinds) is plain data: it goes in the JSON.
        document["extra_state"][group] = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"{group}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    if optimizer is not None:
        opt_tensors, document["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
    if rng is not False:
        rng_tensors, document["rng"] = capture_rng(None if rng is True else rng)
        tensors.update({f"rng.{k}": v for k, v in rng_tensors.items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        header = json.dumps(document, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"checkpoint metadata must be plain JSON data: {exc}") from exc
    data = save(_unshare(tensors), metadata={META_KEY: header})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share memory with another entry (safetensors stores each once)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in tensors.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else None
        if ident is not None and ident in seen:
            value = value.clone()
        elif ident is not None:
            seen.add(ident)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------ reading
class Checkpoint:
    """A checkpoint read from disk: ``meta`` (the JSON document) and its tensor groups."""

    def __init__(self, path: Path, meta: dict, tensors: Mapping[str, dict[str, torch.Tensor]]):
        self.path, self.meta, self.tensors = path, meta, tensors

    @property
    def config(self) -> DictConfig:
        return OmegaConf.create(self.meta["config"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def weights(self, use_ema: bool = True) -> dict:
        """A state dict: the EMA weights (when present and ``use_ema``) or the plain ones."""
        group = "ema_model" if use_ema and self.meta.get("has_ema") else "model"
        return {**self.tensors[group], **self.meta.get("extra_state", {}).get(group, {})}

    def optimizer_state(self) -> dict | None:
        if "optimizer" not in self.meta:
            return None
        return _unflatten_optimizer(self.tensors["optimizer"], self.meta["optimizer"])

    def restore_rng(self) -> None:
        if "rng" not in self.meta:
            raise CheckpointError(f"{self.path}: holds no RNG state (not a training checkpoint)")
        restore_rng(self.tensors["rng"], self.meta["rng"])


def _read_header(path: Path, blob: bytes, size: int) -> dict:
    looks_like_safetensors = len(blob) >= 9 and blob[8:9] == b"{"  # 8-byte header length, then JSON
    if not looks_like_safetensors and (blob[:2] == b"PK" or blob[:1] == b"\x80"):  # torch zip or raw pickle
        raise CheckpointError(f"{path}: a legacy pickle checkpoint (torch.save); convert it once with "
                              f"`dpolicy convert-checkpoint {path}`")
    if len(blob) < 8:
        raise CheckpointError(f"{path}: truncated ({len(blob)} bytes), expected a safetensors checkpoint")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER_BYTES or 8 + n > min(len(blob), size):
        raise CheckpointError(f"{path}: corrupt or truncated safetensors header (declares {n} bytes, "
                              f"file has {size})")
    try:
        header = json.loads(blob[8:8 + n])
        document = json.loads(header["__metadata__"][META_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a dpolicy checkpoint (no readable '{META_KEY}' metadata: "
                              f"{type(exc).__name__})") from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    return document


def _check_document(path: Path, meta: dict) -> None:
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("policy"), dict):
        raise CheckpointError(f"{path}: metadata has no 'config' with a 'policy' section")
    shape_meta = meta.get("shape_meta")
    ok = (isinstance(shape_meta, dict) and isinstance(shape_meta.get("obs"), dict)
          and isinstance(shape_meta.get("action"), dict) and _is_shape(shape_meta["action"].get("shape"))
          and all(isinstance(v, dict) and _is_shape(v.get("shape")) and v.get("type", "low_dim") in ("low_dim", "rgb")
                  for v in shape_meta["obs"].values()))
    if not ok:
        raise CheckpointError(f"{path}: metadata 'shape_meta' must be {{'obs': {{key: {{'shape': [...], 'type': "
                              f"'low_dim'|'rgb'}}}}, 'action': {{'shape': [D]}}}}")
    extra = meta.get("extra_state", {})
    if not isinstance(meta.get("has_ema", False), bool) or not isinstance(extra, dict) \
            or not all(isinstance(extra.get(group, {}), dict) for group in ("model", "ema_model")):
        raise CheckpointError(f"{path}: metadata 'has_ema' must be true/false and 'extra_state' "
                              "{'model': {...}, 'ema_model': {...}}")
    if not isinstance(meta.get("step"), int) or isinstance(meta["step"], bool) or meta["step"] < 0:
        raise CheckpointError(f"{path}: metadata 'step' must be a non-negative integer, got {meta.get('step')!r}")


#: The most elements one observation or action may declare (a 4K RGB frame has 2.5e7).
MAX_SHAPE_ELEMENTS = 2**26


def _is_shape(value) -> bool:
    if not (isinstance(value, list) and 0 < len(value) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n for n in value)):
        return False
    return int(np.prod(value, dtype=np.float64)) <= MAX_SHAPE_ELEMENTS


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and check a checkpoint file; :class:`CheckpointError` names what is wrong and where.

    Only the header is read here; a tensor group is read (memory-mapped, copied once) the first
    time it is used, so loading a policy never reads the optimizer state.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        # The size of the opened file, not of the path: a run may replace the path meanwhile.
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        declared = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        blob = head + f.read(min(declared, MAX_HEADER_BYTES) + 1 if len(head) == 8 else 0)
    _read_header(path, blob, size)  # legacy, truncated or foreign files fail here, before safetensors parses
    try:
        # framework="numpy" reads tensors from the file safetensors opened here; the torch backend
        # opens the path a second time, which a run replacing latest.safetensors meanwhile turns
        # into one version's layout over the other version's bytes.
        handle = safe_open(str(path), framework="numpy")
        names = list(handle.keys())
        # The document comes from the opened (memory-mapped) file itself, so a checkpoint replaced
        # meanwhile (a training run writing latest.safetensors) cannot mix two versions.
        header = handle.metadata() or {}
    except (SafetensorError, ValueError, RuntimeError, OverflowError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt tensor data ({str(exc).splitlines()[0]})") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{path}: not a dpolicy checkpoint (no readable '{META_KEY}' metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}")
    _check_document(path, meta)
    layout: dict[str, list[str]] = {group: [] for group in GROUPS}
    for key in names:
        group, _, name = key.partition(".")
        if group not in layout or not name:
            raise CheckpointError(f"{path}: unexpected tensor {key!r} (groups: {', '.join(GROUPS)})")
        layout[group].append(name)
    if not layout["model"]:
        raise CheckpointError(f"{path}: holds no model weights")
    return Checkpoint(path, meta, _TensorGroups(path, handle, layout, device))


class _TensorGroups(Mapping):
    """``group -> {name: tensor}``, each group read from the file on first access."""

    def __init__(self, path: Path, handle, layout: dict[str, list[str]], device):
        self._path, self._handle, self._layout, self._device = path, handle, layout, device
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}

    def __getitem__(self, group: str) -> dict[str, torch.Tensor]:
        if group not in self._layout:
            raise KeyError(group)
        if group not in self._loaded:
            from safetensors import SafetensorError

            try:
                self._loaded[group] = {name: _as_tensor(self._handle.get_tensor(f"{group}.{name}"), self._device)
                                       for name in self._layout[group]}
            except (SafetensorError, ValueError, RuntimeError, OverflowError, OSError) as exc:
                raise CheckpointError(f"{self._path}: corrupt tensor data in {group!r} "
                                      f"({str(exc).splitlines()[0]})") from None
        return self._loaded[group]

    def __iter__(self):
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)


def _as_tensor(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)


# ------------------------------------------------------------------------------------ policies
def policy_class(policy_cfg: Mapping) -> type:
    """The registered policy class a config's ``policy.name`` names (never an import path)."""
    from dpolicy.policies import POLICIES

    name = policy_cfg.get("name")
    if name not in POLICIES:
        raise CheckpointError(f"unknown policy name {name!r} in the config's 'policy' section; "
                              f"expected one of {sorted(POLICIES)}")
    return POLICIES[name]


def _plain_arguments(policy_cfg: Mapping) -> dict:
    """The policy's constructor arguments: plain data; a nested ``_target_`` is refused, not followed."""
    def check(value, where: str):
        if isinstance(value, Mapping):
            for key, item in value.items():
                if str(key).startswith("_") and str(key).endswith("_"):
                    raise CheckpointError(f"config key {where}.{key} is not allowed: config values are data, "
                                          "nothing in a config or checkpoint is instantiated or imported")
                check(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
        elif not (value is None or isinstance(value, (bool, int, float, str))):
            raise CheckpointError(f"config value {where} has type {type(value).__name__}; expected plain data")

    arguments = {k: v for k, v in policy_cfg.items() if k != "name"}
    check(arguments, "policy")
    return arguments


def build_policy(cfg: DictConfig | Mapping, shape_meta: dict, normalizer: Normalizer) -> torch.nn.Module:
    """Construct ``cfg.policy`` (``name`` + arguments) for the given spec and normalizer."""
    policy_cfg = OmegaConf.to_container(cfg.policy, resolve=True) if isinstance(cfg, DictConfig) \
        else dict(cfg["policy"])
    cls = policy_class(policy_cfg)
    try:
        return cls(shape_meta=shape_meta, normalizer=normalizer, **_plain_arguments(policy_cfg))
    except TypeError as exc:
        raise CheckpointError(f"policy {policy_cfg.get('name')!r}: {exc}") from None


def policy_from_checkpoint(checkpoint: Checkpoint, use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the policy of an already-read checkpoint, with its (EMA) weights."""
    shape_meta = checkpoint.meta["shape_meta"]
    spec = dict(shape_meta["obs"])
    spec["action"] = {"shape": shape_meta["action"]["shape"], "type": "low_dim"}
    try:
        # First on the meta device (shapes only, no memory): a config that describes another or an
        # enormous network is refused before anything is allocated.
        with torch.device("meta"):
            skeleton = build_policy(checkpoint.meta["config"], shape_meta, Normalizer.from_spec(spec))
        _check_shapes(checkpoint, skeleton.state_dict(), use_ema)
        policy = build_policy(checkpoint.meta["config"], shape_meta, Normalizer.from_spec(spec))
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint.path}: its config does not build a policy ({exc})") from None
    try:
        policy.load_state_dict(checkpoint.weights(use_ema))
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:3]
        raise CheckpointError(f"{checkpoint.path}: weights do not match the policy its config describes: "
                              + " ".join(lines)) from None
    return policy


def _check_shapes(checkpoint: Checkpoint, expected: Mapping, use_ema: bool) -> None:
    """The file's weights have exactly the names and shapes of the policy its config describes."""
    stored = checkpoint.weights(use_ema)
    wanted = {k: tuple(v.shape) for k, v in expected.items() if isinstance(v, torch.Tensor)}
    found = {k: tuple(v.shape) for k, v in stored.items() if isinstance(v, torch.Tensor)}
    missing, unexpected = sorted(set(wanted) - set(found)), sorted(set(found) - set(wanted))
    wrong = [f"{k} {found[k]} (expected {wanted[k]})" for k in sorted(set(wanted) & set(found))
             if found[k] != wanted[k]]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"wrong shapes {wrong[:3]}" if wrong else ""]
        raise CheckpointError("weights do not match the policy its config describes: "
                              + "; ".join(p for p in parts if p))


def load_policy(path: str | Path, use_ema: bool = True, device: str | torch.device | None = None):
    """Load ``(policy, cfg)`` from a checkpoint; EMA weights by default, as evaluated in training."""
    from dpolicy.training.devices import resolve_device

    checkpoint = read_checkpoint(path)
    policy = policy_from_checkpoint(checkpoint, use_ema=use_ema)
    policy.to(resolve_device(device or "auto")).eval()
    return policy, checkpoint.config


# ------------------------------------------------------------------------------------ legacy
#: The package's own classes in checkpoints of the pickle format, mapped to registry names. A
#: legacy file's import paths are looked up here, never imported.
LEGACY_POLICY_TARGETS = {
    "dpolicy.policies.diffusion.DiffusionPolicy": "diffusion",
    "dpolicy.policies.ibc.IbcPolicy": "ibc",
    "dpolicy.policies.regression.MseRegressionPolicy": "regression",
}
LEGACY_DATASET_TARGETS = {
    "dpolicy.data.datasets.make_pusht_lowdim_dataset": "pusht_lowdim",
    "dpolicy.data.datasets.make_pusht_image_dataset": "pusht_image",
}
LEGACY_FORMAT = "dpolicy-checkpoint-v1"


def _legacy_safe_globals() -> list:
    """What a legacy file may name besides tensors and plain containers: the constructors of the
    NumPy arrays and dtypes in its RNG state. These build data; none of them runs code."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2 / 1
    reconstruct = multiarray._reconstruct
    dtypes = [type(np.dtype(name)) for name in ("uint32", "int64", "float64")]
    return [reconstruct, np.ndarray, np.dtype, *dtypes]


def load_legacy_payload(path: str | Path) -> Any:
    """A legacy pickle-format (``torch.save``) file's contents, through torch's restricted unpickler
    (``weights_only=True``): tensors, plain containers and NumPy arrays only. A file that names any
    other class or function is refused before anything it names is called."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused: the file names code to run, not only tensors and data "
                              f"({first})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch.save file ({exc})") from None


def convert_legacy_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Rewrite a pickle-format (``torch.save``) checkpoint as a safetensors one.

    The old file is read with :func:`load_legacy_payload`, which never runs code the file names.
    """
    path, out = Path(path), Path(out)
    payload = load_legacy_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != LEGACY_FORMAT:
        raise CheckpointError(f"{path}: not a legacy dpolicy checkpoint (expected format {LEGACY_FORMAT!r})")
    config = payload["config"]
    target = config["policy"].pop("_target_", None)
    if target not in LEGACY_POLICY_TARGETS:
        raise CheckpointError(f"{path}: policy {target!r} is not one of the package's "
                              f"({', '.join(LEGACY_POLICY_TARGETS)})")
    config["policy"] = {"name": LEGACY_POLICY_TARGETS[target], **config["policy"]}
    dataset = config.get("task", {}).get("dataset")
    if isinstance(dataset, dict) and "_target_" in dataset:
        dataset_target = dataset.pop("_target_")
        if dataset_target in LEGACY_DATASET_TARGETS:
            config["task"]["dataset"] = {"preset": LEGACY_DATASET_TARGETS[dataset_target], **dataset}
    meta = {"config": config, "shape_meta": payload["shape_meta"], "step": int(payload["step"]),
            "converted_from": str(path)}
    for key in ("epoch", "batch_in_epoch", "elapsed_s", "lr_scheduler", "top_k"):
        if key in payload:
            meta[key] = payload[key]
    ema_state = payload.get("ema_state")
    if ema_state is not None:
        meta["ema_state"] = {k: v for k, v in ema_state.items() if k != "averaged_model"}
    rng = payload.get("rng")
    rng_states = (rng["torch"], rng["numpy"], rng["python"]) if rng else False
    return save_checkpoint(out, meta, payload["model"], ema_model=payload.get("ema_model"),
                           optimizer=payload.get("optimizer"), rng=rng_states)
