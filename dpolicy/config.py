"""Hydra config composition for `dpolicy train` (and the demo).

Configs live in the repository's top-level ``configs/`` directory (shipped in the package as
``dpolicy/resources/configs``): an experiment file
(``pusht_lowdim``, ``pusht_image``, their ``_paper`` variants, ...) composed from the groups
``task/``, ``policy/`` and ``training/``. Two resolvers name datasets without hard-coding
paths: ``${dataset:human}`` (the original human Push-T demonstrations, see dpolicy.paths) and
``${dataset:embedded}`` (the expert dataset shipped in data/).
"""

from __future__ import annotations

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


def available_configs() -> list[str]:
    """Names of the experiment configs (``configs/<name>.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem not in SHARED_CONFIGS)


def compose_config(config_name: str = DEFAULT_CONFIG, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra-style ``key=value`` overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if config_name not in available_configs():
        raise ConfigError(f"unknown config {config_name!r} in {CONFIG_DIR}; expected one of: "
                          f"{', '.join(available_configs())}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR.resolve()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return cfg
