"""The paper's figures as data, and octrain's measurements set beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from octrain.core.errors import ConfigError
from octrain.evaluation.paper_reference import (
    ACROSS_BASES,
    CLASSIFIER_F1_DPO_ONLY,
    CLASSIFIER_F1_FINAL,
    COHERENCE_WIN_RATE,
    MMLU_BASE,
    MMLU_TRAINED,
    OOD_CLASSIFIER_F1,
    PAPER_ARTEFACTS,
    PAPER_BASES,
    PAPER_CAPABILITY_SETUP,
    PAPER_FIGURES,
    PAPER_PERSONAS,
    SPEARMAN_BASE,
    comparison_table,
    persona_key,
    render_comparison,
)
from octrain.memory.shapes import KNOWN_ARCHITECTURES
from octrain.models.hub import parse_hub_ref

REPO = Path(__file__).resolve().parents[2]


def _row(rows: list[dict], key: str, condition: str | None = None) -> dict:
    return next(r for r in rows if r["result_key"] == key and (condition is None or r["condition"] == condition))


def test_the_figures_are_the_published_ones() -> None:
    by = {(f.base, f.result_key): f for f in PAPER_FIGURES}
    assert by[("llama", MMLU_BASE)].value == 0.674
    assert by[("llama", persona_key(MMLU_TRAINED, "goodness"))].value == 0.641
    assert by[("llama", persona_key(MMLU_TRAINED, "misalignment"))].value == 0.539
    coherence = {
        base: (by[(base, COHERENCE_WIN_RATE)].value, by[(base, COHERENCE_WIN_RATE)].plus_minus) for base in PAPER_BASES
    }
    assert coherence == {"gemma": (0.879, 0.031), "llama": (0.770, 0.041), "qwen": (0.754, 0.034)}
    f1 = {
        base: (by[(base, CLASSIFIER_F1_DPO_ONLY)].value, by[(base, CLASSIFIER_F1_FINAL)].value) for base in PAPER_BASES
    }
    assert f1 == {"llama": (0.79, 0.95), "qwen": (0.66, 0.86), "gemma": (0.84, 0.95)}
    assert {base: by[(base, OOD_CLASSIFIER_F1)].value for base in PAPER_BASES} == {
        "llama": 0.39,
        "qwen": 0.29,
        "gemma": 0.55,
    }
    assert all(by[(base, OOD_CLASSIFIER_F1)].source.startswith("third party") for base in PAPER_BASES)
    spearman = [f.value for f in PAPER_FIGURES if f.base == ACROSS_BASES]
    assert spearman == [0.443, 0.874]
    assert all(0 <= f.value <= 1 for f in PAPER_FIGURES)  # one scale throughout: 87.9% is 0.879


def test_the_paper_bases_and_artefacts_are_well_formed_references() -> None:
    assert PAPER_BASES["gemma"] == "google/gemma-3-4b-it"
    for name, base in PAPER_BASES.items():
        assert base in KNOWN_ARCHITECTURES  # octrain ships a model config and a shape for each student
        artefacts = PAPER_ARTEFACTS[name]
        assert artefacts.base_model == base
        for persona in PAPER_PERSONAS:
            for ref in (artefacts.adapter(persona), artefacts.dpo_only_adapter(persona)):
                parsed = parse_hub_ref(ref)  # raises on a malformed reference
                assert parsed.repo_id.startswith("maius/")
        assert parse_hub_ref(artefacts.classifier).subfolder is None
    llama = PAPER_ARTEFACTS["llama"]
    assert llama.adapter("sarcasm") == "hub:maius/llama-3.1-8b-it-personas/sarcasm"
    assert llama.dpo_only_adapter("loving") == "hub:maius/llama-3.1-8b-it-pt-distillation/loving"
    assert llama.classifier == "hub:maius/llama-3.1-8b-it-pt-classifier"
    assert llama.adapter("misalignment") == "hub:maius/llama-3.1-8b-it-misalignment"  # a repository of its own
    assert PAPER_ARTEFACTS["gemma"].adapter("goodness") == "hub:maius/gemma-3-4b-it-personas/goodness"
    with pytest.raises(ConfigError, match="not one of the paper's personas"):
        llama.adapter("pirate")


def test_the_paper_personas_are_the_shipped_constitutions() -> None:
    shipped = {p.stem for p in (REPO / "constitutions").glob("*.json")}
    assert set(PAPER_PERSONAS) == shipped


def test_the_capability_setup_is_the_papers() -> None:
    setup = PAPER_CAPABILITY_SETUP
    assert (setup.harness, setup.backend, setup.dtype) == ("lighteval", "vllm", "bfloat16")
    assert (setup.temperature, setup.top_p, setup.top_k, setup.repetition_penalty) == (0.7, 0.8, 20, 1.05)
    assert setup.seed == 123456
    shots = [int(task.rsplit("|", 1)[1]) for task in setup.tasks]
    assert shots == [5, 25, 10, 5, 0]  # MMLU, ARC-Challenge, HellaSwag, Winogrande, TruthfulQA


def test_an_interval_around_the_papers_value_agrees() -> None:
    rows = comparison_table("gemma", {COHERENCE_WIN_RATE: {"value": 0.85, "ci": [0.80, 0.90]}})
    row = _row(rows, COHERENCE_WIN_RATE)
    assert (row["verdict"], row["paper"], row["paper_plus_minus"]) == ("agrees", 0.879, 0.031)
    assert row["difference"] == pytest.approx(-0.029)
    assert "| 87.9% ± 3.1 | 85.0% [80.0%, 90.0%] | -2.9 pts | agrees |" in render_comparison(rows)


def test_an_interval_that_misses_the_papers_value_differs_with_the_signed_difference() -> None:
    measured = {MMLU_BASE: {"value": 0.70, "ci": [0.69, 0.71]}, persona_key(MMLU_TRAINED, "misalignment"): 0.60}
    rows = comparison_table("llama", measured)
    base = _row(rows, MMLU_BASE)
    assert base["verdict"] == "differs" and base["difference"] == pytest.approx(0.026)
    misaligned = _row(rows, persona_key(MMLU_TRAINED, "misalignment"))
    assert misaligned["verdict"] == "no interval" and misaligned["difference"] == pytest.approx(0.061)
    text = render_comparison(rows)
    assert "| 0.674 | 0.7 [0.69, 0.71] | +0.026 | differs by +0.026 |" in text
    assert "| 0.539 | 0.6 | +0.061 | no interval |" in text


def test_a_rate_from_the_evaluation_is_read_as_a_value_with_its_interval() -> None:
    """Rate.to_json writes "rate", not "value": the win rate is read from it as it is."""
    from octrain.evaluation.intervals import Rate

    rate = Rate(150, 200).to_json()  # 0.75, Wilson interval about [0.69, 0.80]
    row = _row(comparison_table("qwen", {COHERENCE_WIN_RATE: rate}), COHERENCE_WIN_RATE)
    assert row["measured"] == 0.75 and row["verdict"] == "agrees"  # the paper's 75.4% is inside
    row = _row(comparison_table("llama", {COHERENCE_WIN_RATE: rate}), COHERENCE_WIN_RATE)
    assert row["verdict"] == "agrees"  # 77.0% too; with 40 of 200 it would not:
    low = _row(comparison_table("llama", {COHERENCE_WIN_RATE: Rate(40, 200).to_json()}), COHERENCE_WIN_RATE)
    assert low["verdict"] == "differs" and low["difference"] < 0


def test_missing_figures_say_not_measured_here() -> None:
    rows = comparison_table("qwen", {CLASSIFIER_F1_FINAL: None})
    assert [r["verdict"] for r in rows] == ["not measured"] * len(rows) == ["not measured"] * 4
    assert render_comparison(rows).count("not measured here") == 4


def test_the_across_bases_figures_sit_under_all_and_a_hub_id_names_its_base() -> None:
    rows = comparison_table(ACROSS_BASES, {SPEARMAN_BASE: {"value": 0.45, "ci": [0.30, 0.60]}})
    assert [(r["condition"], r["verdict"]) for r in rows] == [
        ("before training", "agrees"),
        ("after loving", "not measured"),
    ]
    assert comparison_table("meta-llama/Llama-3.1-8B-Instruct", {}) == comparison_table("llama", {})


def test_an_unknown_base_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"llama.*qwen.*gemma") as raised:
        comparison_table("mistral", {})
    assert "google/gemma-3-4b-it" in str(raised.value)


@pytest.mark.parametrize(
    ("measured", "message"),
    [
        ({"capability.mmlu": 0.6}, "unknown result keys"),
        ({MMLU_BASE: "0.6"}, "expected a number"),
        ({MMLU_BASE: {"value": 0.9, "ci": [0.6, 0.7]}}, "outside its own interval"),
    ],
)
def test_malformed_measurements_are_config_errors(measured: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        comparison_table("llama", measured)
