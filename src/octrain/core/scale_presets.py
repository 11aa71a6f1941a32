"""Which wins when a recipe and a scale preset both set a size, and saying so.

A recipe is the more specific choice: ``pirate_tiny`` pins ``scale.prompts_per_trait: 6`` for its
tiny model, and that value holds whichever ``scale=`` preset is picked (Hydra composes the recipe
after the preset). Silently, that surprised users: ``scale=micro`` gave 6 prompts per trait, not
the preset's 5. :func:`recipe_departures` lists every size a preset named on the command line did
not set because the recipe did, and the run prints it before anything starts, with the override
that gives the preset's value. A size set on the command line itself (``scale.prompts_per_trait=5``)
is the user's own and is not listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import OmegaConf

from octrain.core.config import OctrainConfig
from octrain.core.paths import configs_dir


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def recipe_departures(config: OctrainConfig, overrides: Sequence[str]) -> list[str]:
    """One line per size the chosen ``scale=`` preset gives and the recipe replaced; [] when no preset was named."""
    keys = {_override_key(o) for o in overrides}
    if "scale" not in keys:  # the recipe's own preset: its departures are the recipe's design, not a surprise
        return []
    preset_file = configs_dir() / "scale" / f"{config.scale.name}.yaml"
    if not preset_file.is_file():
        return []
    preset = OmegaConf.to_container(OmegaConf.load(preset_file))
    assert isinstance(preset, dict)
    lines = []
    for key, wanted in preset.items():
        if key == "name" or f"scale.{key}" in keys:
            continue
        actual = getattr(config.scale, str(key), wanted)
        if actual != wanted:
            lines.append(
                f"scale.{key} is {actual}, set by recipe {config.name}; the scale={config.scale.name} preset says "
                f"{wanted} (the recipe wins; scale.{key}={wanted} gives the preset's)"
            )
    return lines
