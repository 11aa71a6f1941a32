"""Smoke runs before scale=full and scale=paper: what they change, and that a failing one stops the full run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from conftest import patience, run_cli
from octrain.core.compose import compose_config
from octrain.core.config import SmokeMode, StageName
from octrain.core.errors import StageError
from octrain.run.pipeline import resolve_constitution, run
from octrain.run.smoke import derive_smoke_config, smoke_dir, smoke_kinds

EVERY_STAGE = list(StageName)


def statuses(result) -> dict[str, str]:
    return {outcome.stage.value: outcome.status for outcome in result.outcomes}


def _derived(recipe: str, overrides: list[str]):
    config = compose_config(recipe, overrides)
    constitution = resolve_constitution(config)
    small = derive_smoke_config(config, SmokeMode.small, constitution)
    large = derive_smoke_config(config, SmokeMode.large, constitution)
    return config, len(constitution.traits), small, large


@pytest.mark.parametrize(
    ("recipe", "scale", "large_counts"),
    [
        # hf sampler, 32 sequences a call, DPO and SFT batches of 8: the sampler's batch sets the counts.
        ("pirate_tiny", "full", (3, 0, 39, 32, 32, 12)),
        # vLLM, batches of 32: 1.25 x 32 = 40 pairs and reflections.
        ("pirate_mini", "paper", (3, 2, 41, 40, 2, 4)),
    ],
)
def test_smoke_configs_keep_every_setting_and_shrink_only_counts(
    recipe: str, scale: str, large_counts: tuple[int, ...]
) -> None:
    full, traits, small, large = _derived(recipe, [f"scale={scale}"])
    for smoke in (small, large):
        # What the full run will load and how it trains: exactly the same.
        for key in ("teacher", "student", "sampler", "trainer", "dpo", "sft", "execution", "seed", "constitution"):
            assert getattr(smoke, key) == getattr(full, key), key
        assert smoke.pairs.max_length == full.pairs.max_length and smoke.pairs.chunk_size == full.pairs.chunk_size
        assert smoke.prompts.expansion_rounds == full.prompts.expansion_rounds
        assert smoke.eval.judge_sampling == full.eval.judge_sampling
        assert smoke.eval.classifier.kind == full.eval.classifier.kind
        assert smoke.stages == EVERY_STAGE
        assert (smoke.smoke, smoke.force, smoke.reuse) == (SmokeMode.none, [], [])
        assert smoke.scale.name == scale and smoke.scale.samples_per_prompt == 1
        assert smoke.eval.trials_per_trait == 1 and smoke.eval.elo_rounds == 20
    # The constitution's first traits have no seed questions, so the full run asks the teacher for
    # prompts; one prompt a trait makes the smoke runs do that too.
    assert small.scale.prompts_per_trait == 1
    assert small.scale.generic_prompts == min(full.scale.generic_prompts, 2)
    assert (small.scale.reflections, small.scale.interactions, small.scale.interaction_turns) == (4, 2, 3)
    assert (small.eval.prompt_count, small.eval.classifier.prompts) == (4, 8)
    # Small: short answers, and the filters that would drop every answer cut short are off.
    short = min(full.pairs.sampling.max_new_tokens, 64)
    assert small.pairs.sampling.max_new_tokens == short
    assert small.introspect.reflection_sampling.max_new_tokens == min(
        full.introspect.reflection_sampling.max_new_tokens, 64
    )
    assert small.eval.sampling.max_new_tokens == min(full.eval.sampling.max_new_tokens, 64)
    assert not small.pairs.filters.unfinished and not small.pairs.filters.final_punctuation
    assert small.pairs.filters.too_long and small.pairs.filters.empty
    # Large: the full run's lengths and filters, and enough records for full batches.
    for key in ("prompts", "pairs", "introspect"):
        assert getattr(large, key) == getattr(full, key), key
    assert large.eval.sampling == full.eval.sampling
    assert large.scale.interaction_turns == full.scale.interaction_turns == 10
    assert large.scale.pairs_for(traits) >= math.ceil(1.25 * full.dpo.batch_size)
    assert large.scale.reflections >= math.ceil(1.25 * full.sft.batch_size)
    assert (
        large.scale.prompts_per_trait,
        large.scale.generic_prompts,
        large.scale.pairs_for(traits),
        large.scale.reflections,
        large.scale.interactions,
        large.eval.prompt_count,
    ) == large_counts
    if full.sampler.backend.value == "hf":  # one generate() call of a full batch, in every sampling stage
        batch = full.sampler.hf.batch_size
        assert batch == 32 and large.scale.pairs_for(traits) >= batch
        assert large.scale.reflections >= batch and large.scale.interactions == batch
        assert large.eval.prompt_count == min(full.eval.prompt_count, batch)


def test_smoke_runs_make_what_a_resumed_run_needs_and_thinking_keeps_lengths() -> None:
    _, _, small, _ = _derived("pirate_tiny", ["scale=full", "stages=[sft,eval]"])
    assert small.stages == EVERY_STAGE  # an empty scratch directory: sft needs introspect, dpo, pairs, prompts
    _, _, small, _ = _derived("pirate_tiny", ["scale=full", "stages=[prompts]"])
    assert small.stages == [StageName.prompts]
    # A thinking model would spend 64 tokens on its thoughts and answer nothing: lengths stay.
    full, _, small, _ = _derived("pirate_mini", ["scale=paper", "teacher.enable_thinking=true"])
    assert small.pairs.sampling == full.pairs.sampling and small.pairs.filters == full.pairs.filters


def test_which_smoke_runs_go_first() -> None:
    def kinds(*overrides: str) -> list[SmokeMode]:
        return smoke_kinds(compose_config("pirate_tiny", list(overrides)))

    assert kinds() == [] and kinds("scale=mini", "smoke=both") == []  # smaller scales are their own smoke test
    assert kinds("scale=full") == [SmokeMode.small, SmokeMode.large]
    assert kinds("scale=paper", "smoke=large") == [SmokeMode.large]
    assert kinds("scale=full", "smoke=small") == [SmokeMode.small]
    assert kinds("scale=paper", "smoke=none") == []


def test_a_broken_setting_stops_the_full_run_in_its_smoke_run(tmp_path: Path) -> None:
    # A LoRA target the model does not have: nothing checks it until DPO builds its adapter.
    # One expansion round: the tiny model never writes a usable prompt, and more rounds only cost time.
    broken = ["scale=full", "smoke=small", "prompts.expansion_rounds=1", "dpo.lora.target_modules=[no_proj]"]
    result = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}", *broken)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    scratch = tmp_path / "pirate_tiny" / "smoke" / "small"
    assert last.startswith("octrain: error: smoke run small failed in stage dpo: "), last
    assert (
        "Target modules {'no_proj'} not found" in last
        and f"(its files are in {scratch})" in last
        and "smoke=none" in last
    )
    assert "smoke run small: running in" in result.stderr
    # The full run never started: its directory holds the smoke run only (no stage, and no .hydra/
    # record, which octrain writes once the full run holds its lock).
    assert sorted(p.name for p in (tmp_path / "pirate_tiny").iterdir()) == ["smoke"]
    assert (scratch / "pairs" / "done.json").is_file() and not (scratch / "dpo" / "done.json").exists()


def test_a_smoke_run_that_filters_every_pair_stops_before_the_large_one(tmp_path: Path) -> None:
    # Every answer is longer than 4 tokens in the student's template: the pairs stage keeps none.
    # The fake sampler is enough here: the student's tokenizer, which measures the pairs, is real.
    broken = [f"run_root={tmp_path}", "sampler=fake", "scale=full", "pairs.max_length=4"]
    config = compose_config("pirate_tiny", broken)
    run_dir = tmp_path / "full"
    with pytest.raises(StageError) as caught:
        run(config, run_dir)
    message = str(caught.value)
    assert message.startswith("smoke run small failed in stage pairs: pairs: every pair was filtered out ("), message
    assert "\n" not in message and "smoke=none" in message
    assert sorted(p.name for p in run_dir.iterdir()) == ["smoke"]
    assert sorted(p.name for p in (run_dir / "smoke").iterdir()) == ["small"]  # large never ran


def test_passing_smoke_runs_let_the_full_run_start_and_do_not_run_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="octrain")
    # scale.name stays full; only its counts are cut so that the full run itself is quick. With these
    # counts the small smoke run's prompts stage has the full run's fingerprint.
    overrides = [f"run_root={tmp_path}", "sampler=fake", "scale=full", "stages=[prompts]", "scale.prompts_per_trait=1"]
    config = compose_config("pirate_tiny", [*overrides, "scale.samples_per_prompt=1"])
    run_dir = tmp_path / "full"
    assert statuses(run(config, run_dir)) == {"prompts": "ran"}  # not reused from its smoke run: never a source
    for kind in (SmokeMode.small, SmokeMode.large):
        assert (smoke_dir(run_dir, kind) / "prompts" / "done.json").is_file()
        assert f"smoke run {kind.value}: running in {smoke_dir(run_dir, kind)}" in caplog.text
        assert f"smoke run {kind.value} passed in" in caplog.text
    # Both before the full run's first line.
    assert caplog.text.index("smoke run large passed") < caplog.text.index(f"run {run_dir}: constitution")
    caplog.clear()
    assert statuses(run(config, run_dir)) == {"prompts": "skipped"}
    assert "smoke run small: passed before with the same settings" in caplog.text
    assert "smoke run large: passed before with the same settings" in caplog.text


def test_smoke_none_and_smaller_scales_start_straight_away(tmp_path: Path) -> None:
    quick = [f"run_root={tmp_path}", "sampler=fake", "stages=[prompts]", "scale.prompts_per_trait=1"]
    for name, overrides in [("none", ["scale=full", "smoke=none"]), ("mini", ["scale=mini", "smoke=both"])]:
        assert statuses(run(compose_config("pirate_tiny", [*quick, *overrides]), tmp_path / name)) == {"prompts": "ran"}
        assert not (tmp_path / name / "smoke").exists()


@pytest.mark.slow
@pytest.mark.timeout(patience(1800))  # three runs of every stage: ~5 minutes on 2 idle cores, far more on busy ones
def test_both_smoke_runs_of_the_whole_pipeline_pass_on_the_tiny_model(tmp_path: Path) -> None:
    # Every stage, small and large, then the full run (its counts cut, its name still full).
    cut = ["scale.prompts_per_trait=1", "scale.samples_per_prompt=1", "scale.reflections=8", "scale.interactions=2"]
    config = compose_config("pirate_tiny", [f"run_root={tmp_path}", "scale=full", *cut])
    result = run(config, tmp_path / "full")
    assert statuses(result) == dict.fromkeys((s.value for s in EVERY_STAGE), "ran")
    for kind in (SmokeMode.small, SmokeMode.large):
        assert (smoke_dir(tmp_path / "full", kind) / "eval" / "done.json").is_file()
