"""The held-out evaluation prompts: loading them, and proving they stay apart from training prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from octrain.constitution import load_constitution
from octrain.constitution.near_duplicates import PromptSet
from octrain.core.errors import ConfigError, DataFormatError
from octrain.evaluation.heldout import check_no_overlap, load_eval_prompts
from octrain.stages.generic_prompts import load_generic_pool

CONSTITUTIONS = Path(__file__).resolve().parents[2] / "constitutions"


def training_prompts() -> list[str]:
    """Every prompt the training pipeline could see: the generic pool and all shipped seed questions."""
    prompts = list(load_generic_pool("builtin"))
    files = sorted(p for p in CONSTITUTIONS.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    assert files, "no shipped constitutions found"
    for path in files:
        constitution = load_constitution(path)
        prompts.extend(question for trait in constitution.traits for question in trait.questions)
    return prompts


def test_builtin_set_is_large_and_clean() -> None:
    prompts = load_eval_prompts()
    assert len(prompts) >= 180
    assert all(p == p.strip() and p for p in prompts)
    assert len({" ".join(p.lower().split()) for p in prompts}) == len(prompts)


def test_builtin_set_does_not_overlap_training_prompts() -> None:
    assert check_no_overlap(load_eval_prompts(), training_prompts()) == []


def test_builtin_set_agrees_with_prompt_set_rule() -> None:
    # The same verdict from the prompts stage's own class, and no two eval prompts clash either.
    seen = PromptSet(0.5)
    for prompt in training_prompts():
        seen.add(prompt)
    refused = [(p, seen.check(p)) for p in load_eval_prompts() if seen.check(p) is not None]
    assert refused == []
    own = PromptSet(0.5)
    assert [p for p in load_eval_prompts() if own.add(p) is not None] == []


def test_planted_duplicate_and_near_duplicate_are_reported() -> None:
    training = [
        "How do I repot a cactus without getting stabbed?",
        "Write a poem about a quiet harbour at dawn.",
        "Explain how tides work.",
    ]
    evaluation = [
        "  how do I repot a CACTUS without getting stabbed?",  # same words, case and spacing changed
        "Write a poem about a quiet harbour at dusk.",  # one word swapped
        "Recommend a film for a rainy evening.",  # unrelated
    ]
    assert check_no_overlap(evaluation, training) == [
        (evaluation[0], training[0], "duplicate"),
        (evaluation[1], training[1], "near-duplicate"),
    ]
    # A looser threshold lets the reworded prompt through; the exact copy is still caught.
    assert check_no_overlap(evaluation, training, max_overlap=0.95) == [(evaluation[0], training[0], "duplicate")]


def test_load_jsonl_and_txt_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"prompt": "First?"}\n\n{"prompt": "  Second.  "}\n', encoding="utf-8")
    assert load_eval_prompts(str(jsonl)) == ["First?", "Second."]
    txt = tmp_path / "mine.txt"
    txt.write_text("One\n\n  Two  \n", encoding="utf-8")
    assert load_eval_prompts(str(txt)) == ["One", "Two"]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ('{"prompt": "ok"}\n{"prompt": ', 2),
        ('{"prompt": "ok"}\n\n{"question": "no prompt key"}\n', 3),
        ('{"prompt": "   "}\n', 1),
        ('["a list"]\n', 1),
    ],
)
def test_bad_jsonl_rows_name_path_and_line(tmp_path: Path, content: str, line: int) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"bad\.jsonl:{line}:"):
        load_eval_prompts(str(path))


def test_missing_file_and_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"not-there\.jsonl"):
        load_eval_prompts(str(tmp_path / "not-there.jsonl"))
    with pytest.raises(ConfigError, match=r"prompts\.csv"):
        load_eval_prompts(str(tmp_path / "prompts.csv"))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_prompt_file_that_is_not_utf8_is_one_error_naming_its_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n' if suffix == ".jsonl" else b"fine\ncaf\xe9\n")
    with pytest.raises(DataFormatError, match=r"prompts\.\w+:2: not UTF-8 text \(byte 0xe9\) \(evaluation prompts\)"):
        load_eval_prompts(str(path))
