"""A recipe's own size beats a scale preset picked on the command line, and the run says so."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from octrain.core.compose import compose_config
from octrain.core.scale_presets import recipe_departures


def test_a_preset_the_recipe_partly_overrides_is_named_with_the_override_that_restores_it() -> None:
    overrides = ["scale=micro"]
    config = compose_config("pirate_tiny", overrides)
    assert config.scale.prompts_per_trait == 6  # the recipe's, not micro's 5: the recipe wins
    assert config.scale.generic_prompts == 50  # what the recipe leaves alone comes from the preset
    assert recipe_departures(config, overrides) == [
        "scale.prompts_per_trait is 6, set by recipe pirate_tiny; the scale=micro preset says 5 (the recipe wins; "
        "scale.prompts_per_trait=5 gives the preset's)"
    ]
    # The user's own value is theirs; the recipe's own default preset is its design: nothing to say.
    explicit = ["scale=micro", "scale.prompts_per_trait=5"]
    assert recipe_departures(compose_config("pirate_tiny", explicit), explicit) == []
    assert recipe_departures(compose_config("pirate_tiny", []), []) == []


def test_the_run_prints_the_departure_before_it_starts(tmp_path: Path) -> None:
    result = run_cli(
        "+recipe=pirate_tiny", "scale=micro", "stages=[prompts]", "prompts.expansion_rounds=0", f"run_root={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "octrain: note: scale.prompts_per_trait is 6, set by recipe pirate_tiny" in result.stderr
