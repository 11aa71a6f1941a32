"""The settings digest behind stage fingerprints: a setting added at its default leaves finished runs finished."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from octrain.core.compose import compose_config
from octrain.core.config import OctrainConfig
from octrain.core.settings_digest import at_defaults, settings_digest, settings_json
from octrain.run.markers import stage_fingerprints
from octrain.run.preflight import resolve_constitution
from octrain.stages.context import RunContext
from octrain.stages.table import stages_for


class Colour(enum.Enum):
    red = "red"
    blue = "blue"


@dataclasses.dataclass
class SamplingBefore:
    temperature: float = 0.7


@dataclasses.dataclass
class SamplingAfter:  # the same section one release later, with a setting added
    temperature: float = 0.7
    min_p: float = 0.0


@dataclasses.dataclass
class StageBefore:
    path: str = "model"
    sampling: SamplingBefore = dataclasses.field(default_factory=SamplingBefore)


@dataclasses.dataclass
class StageAfter:
    path: str = "model"
    sampling: SamplingAfter = dataclasses.field(default_factory=SamplingAfter)
    colour: Colour = Colour.red
    tags: list[str] = dataclasses.field(default_factory=list)


def test_a_setting_added_at_its_default_keeps_the_digest_and_a_set_value_changes_it() -> None:
    before = settings_digest({"stage": StageBefore(path="m", sampling=SamplingBefore(0.9)), "upstream": {"a": "1"}})
    after = StageAfter(path="m", sampling=SamplingAfter(0.9))
    assert settings_digest({"stage": after, "upstream": {"a": "1"}}) == before
    for changed in (
        dataclasses.replace(after, colour=Colour.blue),
        dataclasses.replace(after, tags=["x"]),
        dataclasses.replace(after, sampling=SamplingAfter(0.9, min_p=0.05)),
        dataclasses.replace(after, sampling=SamplingAfter(0.8)),
    ):
        assert settings_digest({"stage": changed, "upstream": {"a": "1"}}) != before
    assert settings_digest({"stage": after, "upstream": {"a": "2"}}) != before  # plain mappings keep every key
    assert settings_json(dataclasses.replace(after, colour=Colour.blue, tags=["x"])) == {
        "path": "m",
        "sampling": {"temperature": 0.9},
        "colour": "blue",
        "tags": ["x"],
    }
    assert settings_json({"where": Path("/a/b"), "steps": (1, 2)}) == {"where": "/a/b", "steps": [1, 2]}
    assert at_defaults(StageAfter(path="m", colour=Colour.blue), ("colour",)) == StageAfter(path="m")


def _fingerprints(config: OctrainConfig, tmp_path: Path) -> dict[str, str]:
    ctx = RunContext(config=config, run_dir=tmp_path, constitution=resolve_constitution(config))
    return {name.value: value for name, value in stage_fingerprints(ctx, stages_for(config).values()).items()}


def _with_a_new_setting(section: Any) -> Any:
    """``section`` as a release that added one setting (at a default that keeps the old behaviour) would hold it."""
    grown = dataclasses.make_dataclass(
        f"{type(section).__name__}Grown", [("added_later", int, dataclasses.field(default=0))], bases=(type(section),)
    )
    return grown(**{field.name: getattr(section, field.name) for field in dataclasses.fields(section)})


def test_a_release_that_adds_a_setting_to_every_section_leaves_every_stage_finished(tmp_path: Path) -> None:
    config = compose_config("pirate_tiny", ["distill.method=sdft", "distill.sdft.teacher_weights=teacher"])
    plain = _fingerprints(config, tmp_path)
    sections = [
        field.name for field in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, field.name))
    ]
    assert {"student", "teacher", "pairs", "dpo", "distill", "sft", "introspect", "prompts", "eval", "trainer"} <= set(
        sections
    )
    grown = dataclasses.replace(config, **{name: _with_a_new_setting(getattr(config, name)) for name in sections})
    assert _fingerprints(grown, tmp_path) == plain
    # The same new setting, set by a user, remakes the stages that read its section (and those after them).
    pairs = _with_a_new_setting(config.pairs)
    pairs.added_later = 1
    changed = _fingerprints(dataclasses.replace(config, pairs=pairs), tmp_path)
    assert changed["prompts"] == plain["prompts"]
    assert {stage for stage in plain if changed[stage] != plain[stage]} >= {"pairs", "dpo", "introspect", "sft"}


def test_how_long_to_wait_for_a_judge_leaves_the_evaluation_finished(tmp_path: Path) -> None:
    plain = _fingerprints(compose_config("pirate_tiny"), tmp_path)
    assert _fingerprints(compose_config("pirate_tiny", ["eval.judge_timeout=5"]), tmp_path)["eval"] == plain["eval"]
    assert _fingerprints(compose_config("pirate_tiny", ["eval.prompt_count=7"]), tmp_path)["eval"] != plain["eval"]
