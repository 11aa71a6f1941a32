"""Configs: every recipe and preset composes into the typed config; bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from octrain.core.compose import register_schema
from octrain.core.config import OctrainConfig, SamplerBackend, validate
from octrain.core.errors import ConfigError
from octrain.core.layout import load_config, save_config
from octrain.core.paths import available_recipes, configs_dir

register_schema()
SCALES = sorted(p.stem for p in (configs_dir() / "scale").glob("*.yaml"))


def compose_config(*overrides: str) -> OctrainConfig:
    """Compose with raw overrides (the recipe among them, or none at all)."""
    with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
        cfg = compose(config_name="octrain", overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def test_the_two_required_recipes_exist() -> None:
    assert {"pirate_tiny", "pirate_mini"} <= set(available_recipes())


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_composes_and_validates(recipe: str) -> None:
    config = compose_config(f"+recipe={recipe}")
    assert isinstance(config, OctrainConfig)
    assert config.name == recipe
    validate(config)


def test_recipes_say_how_to_launch() -> None:
    for recipe in available_recipes():
        text = (configs_dir() / "recipe" / f"{recipe}.yaml").read_text()
        assert text.startswith("# @package _global_"), recipe
        assert f"python -m octrain +recipe={recipe}" in text, recipe
        assert "Hardware:" in text, recipe


def test_pirate_recipes_pick_their_models() -> None:
    tiny = compose_config("+recipe=pirate_tiny")
    assert tiny.teacher.path == tiny.student.path == "builtin:tiny-qwen3"
    assert tiny.sampler.backend is SamplerBackend.hf and tiny.scale.name == "smoke"
    mini = compose_config("+recipe=pirate_mini")
    assert mini.teacher.path == "Qwen/Qwen3-32B-FP8" and mini.teacher.quantization is None  # fp8 as published
    assert mini.student.path == "Qwen/Qwen3-4B-Instruct-2507"
    assert mini.sampler.backend is SamplerBackend.vllm and mini.scale.name == "mini"


# docs/method.md section 5: DPO pairs / reflections / interactions x turns, for a 10-trait persona.
STUDIO_SCALES = {
    "smoke": (16, 40, 4, 4),
    "micro": (100, 500, 50, 6),
    "mini": (250, 1500, 150, 8),
    "quarter": (375, 3000, 300, 10),
    "half": (750, 6000, 600, 10),
    "full": (1500, 10000, 2000, 10),
}


@pytest.mark.parametrize("scale", SCALES)
def test_scale_presets(scale: str) -> None:
    config = compose_config("name=scales", "constitution=pirate", f"scale={scale}")
    assert config.scale.name == scale
    validate(config)
    if scale in STUDIO_SCALES:
        s = config.scale
        assert (s.pairs_for(10), s.reflections, s.interactions, s.interaction_turns) == STUDIO_SCALES[scale]


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("sampler.bach_size=3", Exception, "sampler.bach_size"),
        ("sampler.backend=gpu", ValidationError, "Invalid value 'gpu', expected one of"),
        ("seed=abc", ValidationError, "could not be converted to Integer"),
        ("stages=[prompts,dance]", ValidationError, "Invalid value 'dance'"),
    ],
)
def test_schema_rejects_bad_overrides(override: str, error: type, message: str) -> None:
    with pytest.raises(Exception) as info:
        compose_config("+recipe=pirate_tiny", override)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, error) and message in str(e) for e in chain), chain


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("scale.samples_per_prompt=0", "scale.samples_per_prompt: expected a number more than zero"),
        ("prompts.sampling.top_p=1.5", r"prompts.sampling.top_p: expected a value in \(0, 1\]"),
        ("prompts.near_duplicate_overlap=0", "prompts.near_duplicate_overlap"),
        ("teacher.path=' '", "teacher.path: expected a Hub id"),
        ("stages=[]", "stages: expected at least one"),
    ],
)
def test_validate_names_the_key(override: str, message: str) -> None:
    config = compose_config("+recipe=pirate_tiny", override)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = compose_config("+recipe=pirate_tiny", "seed=7", "sampler.hf.batch_size=3")
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_python_compose_matches_the_cli_composition() -> None:
    from octrain.core.compose import compose_config as api_compose

    assert api_compose("pirate_tiny", ["seed=3"]) == compose_config("+recipe=pirate_tiny", "seed=3")
    with pytest.raises(
        ConfigError,
        match="unknown recipe 'nope'; available recipes: paper_llama, pirate_mini, pirate_served_teacher, "
        "pirate_smollm2, pirate_tinker, pirate_tiny",
    ):
        api_compose("nope")
