"""Hydra config composition for `dpolicy train` (and the demo).

Configs live in the repository's top-level ``configs/`` directory (shipped in the package as
``dpolicy/resources/configs``): an experiment file
(``pusht_lowdim``, ``pusht_image``, their ``_paper`` variants, ...) composed from the groups
``task/``, ``policy/`` and ``training/``. Two resolvers name datasets without hard-coding
paths: ``${dataset:human}`` (the original human Push-T demonstrations, see dpolicy.paths) and
``${dataset:embedded}`` (the expert dataset shipped in data/).

A user's own configs live in a folder of the same layout (``DIR/task/my_robot.yaml``,
``DIR/my_robot.yaml``, ...) passed as ``config_dir`` (``dpolicy train --config-dir DIR``): its groups
extend the package's, and its experiment files may use the package's groups and ``common``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dpolicy.errors import ConfigError
from dpolicy.paths import CONFIG_DIR, EMBEDDED_PUSHT, human_pusht_path

DEFAULT_CONFIG = "pusht_lowdim"
#: Top-level config files that are not experiments (keys the experiments include).
SHARED_CONFIGS = ("common",)


def _dataset_path(name: str) -> str:
    if name == "embedded":
        return str(EMBEDDED_PUSHT)
    if name == "human":
        path = human_pusht_path()
        if path is None:
            raise FileNotFoundError(
                "the original human Push-T dataset was not found: set DPOLICY_HUMAN_PUSHT to its path, or "
                "train on the embedded expert data with task.dataset.path='${dataset:embedded}'")
        return str(path)
    raise ConfigError(f"unknown dataset name {name!r} in ${{dataset:...}}: use 'human' or 'embedded'")


if not OmegaConf.has_resolver("dataset"):
    OmegaConf.register_new_resolver("dataset", _dataset_path)


def available_configs(config_dir: str | Path | None = None) -> list[str]:
    """Names of the experiment configs (``configs/<name>.yaml``, and ``config_dir/<name>.yaml``)."""
    folders = [CONFIG_DIR] + ([Path(config_dir)] if config_dir is not None else [])
    return sorted({p.stem for folder in folders for p in folder.glob("*.yaml") if p.stem not in SHARED_CONFIGS})


def compose_config(config_name: str = DEFAULT_CONFIG, overrides: list[str] | tuple[str, ...] = (),
                   config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra-style ``key=value`` overrides.

    ``config_dir``: a folder of the user's configs, searched as well (see the module docstring).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    main, extra = CONFIG_DIR.resolve(), None
    if config_dir is not None:
        user = Path(config_dir).expanduser().resolve()
        if not user.is_dir():
            raise ConfigError(f"config folder {config_dir} does not exist")
        # Hydra finds an experiment file only in its primary folder; the other one is searched for groups.
        main, extra = (user, main) if (user / f"{config_name}.yaml").is_file() else (main, user)
    if config_name not in available_configs(config_dir):
        where = CONFIG_DIR if config_dir is None else f"{CONFIG_DIR} or {config_dir}"
        raise ConfigError(f"unknown config {config_name!r} in {where}; expected one of: "
                          f"{', '.join(available_configs(config_dir))}")
    GlobalHydra.instance().clear()
    search = [f"hydra.searchpath=[file://{extra}]"] if extra is not None else []
    try:
        with initialize_config_dir(config_dir=str(main), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[*search, *overrides])
    except HydraException as exc:  # e.g. task=my_robot without a task/my_robot.yaml anywhere
        raise ConfigError(str(exc).splitlines()[0]) from None
    return cfg


# ------------------------------------------------------------------------------------ validation
#: Numeric options of an experiment: (key, kind, lowest, highest, may be null). Checked before a run
#: writes anything, so a typo costs one line of error instead of a half-made run directory.
NUMERIC_OPTIONS: tuple[tuple[str, type, float | None, float | None, bool], ...] = (
    ("seed", int, 0, None, False),
    ("horizon", int, 1, None, False),
    ("n_obs_steps", int, 1, None, False),
    ("n_action_steps", int, 1, None, False),
    ("task.max_steps", int, 1, None, True),
    ("training.batch_size", int, 1, None, False),
    ("training.lr", float, 0, None, False),
    ("training.weight_decay", float, 0, None, False),
    ("training.warmup_steps", int, 0, None, False),
    ("training.min_lr_ratio", float, 0, 1, False),
    ("training.max_steps", int, 1, None, False),
    ("training.max_minutes", float, 0, None, True),
    ("training.grad_clip", float, 0, None, True),
    ("training.ema.power", float, 0, None, False),
    ("training.ema.max_value", float, 0, 1, False),
    ("training.log_every", int, 1, None, False),
    ("training.val_every", int, 0, None, False),
    ("training.val_batches", int, 1, None, False),
    ("training.eval_every", int, 0, None, False),
    ("training.eval.n_envs", int, 1, None, True),
    ("training.eval.n_videos", int, 0, None, False),
    ("training.eval.offline_samples", int, 1, None, False),
    ("training.eval.offline_windows", int, 1, None, False),
    ("training.checkpoint_every", int, 1, None, False),
    ("training.top_k", int, 0, None, False),
    ("training.num_threads", int, 1, None, True),
)
#: Options that must be strictly above their lowest value (a zero learning rate trains nothing).
STRICTLY_POSITIVE = {"training.lr", "training.max_minutes", "training.grad_clip", "training.ema.power",
                     "training.ema.max_value"}


def validate_config(cfg: DictConfig) -> None:
    """Range-check the numeric options of an experiment; :class:`ConfigError` names the key."""
    for key, kind, low, high, nullable in NUMERIC_OPTIONS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            if nullable or OmegaConf.select(cfg, key, default="absent") == "absent":
                continue
            raise ConfigError(f"config key {key} is null; expected a number")
        not_integer = kind is int and isinstance(value, float) and not value.is_integer()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not_integer:
            raise ConfigError(f"config key {key}={value!r}: expected {'an integer' if kind is int else 'a number'}")
        strict = key in STRICTLY_POSITIVE
        too_low = low is not None and (value <= low if strict else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            bounds = f"{'>' if strict else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise ConfigError(f"config key {key}={value}: expected a value {bounds}")
    clock = OmegaConf.select(cfg, "training.schedule_clock", default="steps")
    if clock not in ("steps", "budget"):
        raise ConfigError(f"config key training.schedule_clock={clock!r}: expected steps or budget")
    if clock == "budget" and not OmegaConf.select(cfg, "training.max_minutes", default=None):
        raise ConfigError("config key training.schedule_clock=budget needs training.max_minutes (the budget "
                          "whose clock the schedule follows)")
    horizon, n_obs, n_act = int(cfg.horizon), int(cfg.n_obs_steps), int(cfg.n_action_steps)
    if not (n_obs <= horizon and n_act <= horizon - n_obs + 1):
        raise ConfigError(f"horizon={horizon}, n_obs_steps={n_obs}, n_action_steps={n_act}: expected "
                          "n_obs_steps <= horizon and n_action_steps <= horizon - n_obs_steps + 1")


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be written there (``ConfigError`` if not)."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to {directory} ({exc.strerror or exc}); choose another run_dir") from None
