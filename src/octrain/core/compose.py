"""Compose a recipe into the typed config from Python, as the command line does.

    config = compose_config("pirate_tiny", ["seed=1", "sampler=fake"])
    octrain.run.pipeline.run(config, "runs/my_run")

Hydra's compose API reads the same ``configs/`` and ``recipes/`` as ``python -m octrain``.
"""

from __future__ import annotations

from collections.abc import Sequence

from octrain.core.config import OctrainConfig
from octrain.core.errors import ConfigError
from octrain.core.paths import available_recipes, configs_dir

SCHEMA_NAME = "octrain_schema"


def register_schema() -> None:
    """Make the dataclass schema available to Hydra as ``octrain_schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=OctrainConfig)


def compose_config(recipe: str, overrides: Sequence[str] = ()) -> OctrainConfig:
    """The typed config of ``recipe`` with Hydra-style ``key=value`` overrides applied.

    Raises:
        ConfigError: unknown recipe.
        hydra/omegaconf errors: a bad override (misspelled key, wrong type, bad enum value).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if recipe not in available_recipes():
        raise ConfigError(f"unknown recipe {recipe!r}; available recipes: {', '.join(available_recipes())}")
    register_schema()
    with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
        cfg = compose(config_name="octrain", overrides=[f"+recipe={recipe}", *overrides])
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
