"""The out-of-distribution check: the teacher's context merged into a conversation, the classifier's
figures on a slice, and real runs of the verb and of the eval stage on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SMALL_EVAL, TINY_TRAINED_RUN, run_cli
from octrain.constitution.persona_prompts import with_context
from octrain.evaluation.ood import classifier_on_slice
from octrain.evaluation.ood_prompts import CATEGORIES


def test_the_persona_context_and_the_conversations_system_become_one_system_message() -> None:
    persona = [{"role": "system", "content": "You are a pirate."}]
    examples = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy!"}]
    agent = [
        {"role": "system", "content": "Tools: get_weather(city)"},
        {"role": "user", "content": "Rain in Lisbon?"},
    ]
    merged = with_context([*persona, *examples], agent)
    assert [m["role"] for m in merged] == ["system", "user", "assistant", "user"]
    assert merged[0]["content"] == "You are a pirate.\n\nTools: get_weather(city)"
    assert merged[1:] == [*examples, agent[1]]
    # Example turns alone: the conversation's system message still comes first.
    assert with_context(examples, agent) == [agent[0], *examples, agent[1]]
    plain = [{"role": "user", "content": "Hello"}]
    assert with_context([], plain) == plain


def test_a_slice_passes_only_when_the_classifier_is_accurate_and_both_controls_hold() -> None:
    # 40 teacher answers of which 36 are called in character, 40 base answers of which 2 are.
    good = classifier_on_slice([True] * 36 + [False] * 4, [True] * 2 + [False] * 38)
    assert good["accuracy"]["rate"] == pytest.approx(74 / 80)
    assert good["accuracy"]["n"] == 80
    # F1 in character: 2*36 / (2*36 + 2 + 4); plain: 2*38 / (2*38 + 4 + 2).
    assert good["macro_f1"] == pytest.approx((72 / 78 + 76 / 82) / 2)
    assert good["passes_check"] and good["problems"] == []
    # The same accuracy, but the base is called in character too often: fails.
    leaky = classifier_on_slice([True] * 40, [True] * 10 + [False] * 30)
    assert leaky["accuracy"]["rate"] == pytest.approx(70 / 80)
    assert not leaky["passes_check"]
    assert any("base student" in p for p in leaky["problems"])
    # Accurate on too few answers to say so.
    few = classifier_on_slice([True] * 5, [False] * 5)
    assert not few["passes_check"]


def test_the_verb_measures_each_slice_and_a_rerun_reads_the_answers_back(
    trained_tiny_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ood"
    args = ("eval", "ood", str(trained_tiny_root / "pirate_tiny"), "--per-category", "2", "--out", str(out))
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    slices = printed["slices"]
    assert list(slices) == ["in-distribution", *CATEGORIES, "out-of-distribution (all)"]
    assert [slices[c]["conversations"] for c in CATEGORIES] == [2, 2, 2, 2]
    assert slices["out-of-distribution (all)"]["conversations"] == 8
    assert slices["in-distribution"]["conversations"] == printed["prompts"]["in_distribution"] > 0
    for figure in slices.values():
        n = figure["conversations"]
        assert figure["classifier"]["accuracy"]["n"] == 2 * n
        assert figure["in_character"]["trained"]["n"] == n
        # Two answers per category are too few for the classifier's check: nothing there counts.
        assert figure["counts"] is False
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == printed["prompts"]["in_distribution"] + 8
    assert {"base", "trained", "teacher"} <= set(rows[-1])
    assert rows[-1]["id"] == "long_chat-02" and rows[-1]["conversation"][-1]["role"] == "user"
    assert "| tool_use | 2 |" in (out / "ood.md").read_text()

    chunks = sorted((out / "chunks").rglob("*.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in chunks]
    again = run_cli(*args, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["slices"] == slices
    assert [p.stat().st_mtime_ns for p in chunks] == stamps
    assert "Loading weights" not in again.stderr  # every answer was committed: no model loaded

    base = run_cli("eval", "ood", str(trained_tiny_root / "pirate_tiny"), "--categories", "emails")
    assert base.returncode == 2
    assert "emails" in base.stderr and "tool_use" in base.stderr


@pytest.mark.slow
def test_the_eval_stage_appends_capability_ood_and_the_paper_comparison_when_asked(
    trained_tiny_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(trained_tiny_root / "pirate_tiny", root / "pirate_tiny")
    stages = [arg for arg in TINY_TRAINED_RUN if not arg.startswith("stages=")]
    result = run_cli(
        *stages,
        "stages=[eval]",
        *SMALL_EVAL,
        "eval.capability.enabled=true",
        "eval.capability.tasks=[octrain_basics:0]",
        "eval.capability.limit=6",
        "eval.ood.enabled=true",
        "eval.ood.per_category=1",
        "eval.paper_reference=llama",
        f"run_root={root}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    eval_dir = root / "pirate_tiny" / "eval"
    report = (eval_dir / "report.md").read_text()
    assert "## Capability retention" in report and "| octrain_basics | 0 | acc | 6 |" in report
    assert "## pirate: in- vs out-of-distribution" in report and "| code_review | 1 |" in report
    capability = json.loads((eval_dir / "capability" / "capability.json").read_text())
    assert capability["tasks"][0]["change"]["n"] == 6
    ood = json.loads((eval_dir / "ood" / "ood.json").read_text())
    assert ood["prompts"]["out_of_distribution"] == 4
    # Beside the paper: what this run measured (the classifier's F1 out of distribution) and what it did not.
    comparison = (eval_dir / "paper_comparison.md").read_text()
    f1 = ood["slices"]["out-of-distribution (all)"]["classifier"]["macro_f1"]
    assert f"| released classifier F1 on out-of-distribution text | llama | released personas | 0.39 | {f1:.3g} |" in (
        comparison
    )
    assert "| MMLU (5-shot) accuracy | llama | before training | 0.674 | not measured here |" in comparison
