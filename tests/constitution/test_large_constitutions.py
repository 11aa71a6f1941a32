"""Large constitutions: loading, the quality score and the prompts stage grow linearly with the traits.

A constitution of 20,000 traits once took longer than anyone waited: the near-duplicate rule
(:class:`~octrain.constitution.near_duplicates.PromptSet`, used by the quality score and the
prompts stage) compared every new prompt with every kept one that shared a common word with it.
These tests build constitutions of ``n`` and ``2n`` traits in the shape of real ones (each trait
about its own subject, the questions full of common words) and check the growth:

* the near-duplicate rule's work is counted (index entries read, prompts compared), which is
  exact and does not depend on the machine: doubling the traits may at most triple it (linear
  work doubles, quadratic work quadruples);
* loading times are not asserted (a test asserts no timing): ``benchmarks/constitution_load.py``
  measures them, and its figures are linear.

The rule must still refuse what it refused before: it is checked against a plain comparison
with every kept prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import ClassVar

import pytest

from octrain.constitution import Constitution, load_constitution, quality
from octrain.constitution.near_duplicates import PromptSet, word_set
from octrain.stages.prompts import given_prompts

# The most common English words, which nearly every question holds.
COMMON_WORDS = "i you the a to and of my what how do is in it that for your me can should with be are on this about"
COMMON = tuple(COMMON_WORDS.split())
GROWTH_BOUND = 3.0  # linear work doubles with the traits, quadratic work quadruples


def _subject(trait: int, part: int) -> str:
    """A word of one trait's own: what a real constitution's traits are about, each its own thing."""
    return f"topic{trait}x{part}"


def _trait(index: int) -> tuple[str, list[str]]:
    """A trait of six words of its own among common ones, and five questions of four words of
    their own among three common ones; every 25th trait's first question rewords the previous
    trait's (one word changed), which the prompts stage must refuse as a near duplicate."""
    rng = random.Random(index)
    own = [_subject(index, part) for part in range(6)]
    text = f"I am {rng.choice(COMMON)} {' '.join(own[:3])} {rng.choice(COMMON)} {' '.join(own[3:])}."
    questions = []
    for number in range(5):
        common = rng.sample(COMMON, 3)
        words = [_subject(index, 10 + 4 * number + part) for part in range(4)]
        questions.append(f"{common[0]} {common[1]} {words[0]} {words[1]} {common[2]} {words[2]} {words[3]}?")
    if index % 25 == 24:
        earlier = _trait(index - 1)[1][0]
        questions[0] = earlier.replace(_subject(index - 1, 10), _subject(index, 99))
    return text, questions


def studio_yaml(traits: int) -> str:
    """A Studio YAML constitution of ``traits`` directives with five questions each."""
    lines = [
        "meta:",
        "  name: large",
        "persona:",
        "  identity: I am a character of very many interests, each of which I take seriously.",
        "directives:",
        "  personality:",
    ]
    for index in range(traits):
        text, questions = _trait(index)
        lines += [f"    - trait: {json.dumps(text)}", "      questions:"]
        lines += [f"        - {json.dumps(question)}" for question in questions]
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class _CountedPromptSet(PromptSet):
    """The real rule, remembering every instance made, so that a test can read their work after."""

    made: ClassVar[list[PromptSet]] = []

    def __init__(self, max_overlap: float = 0.5) -> None:
        super().__init__(max_overlap)
        _CountedPromptSet.made.append(self)


def _rule_work(constitution: Constitution, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """The near-duplicate rule's work (entries read + comparisons) in the quality score and in the
    prompts stage's use of the constitution's own questions."""
    _CountedPromptSet.made = []
    monkeypatch.setattr(quality, "PromptSet", _CountedPromptSet)
    quality.score_constitution(constitution)
    [scored] = _CountedPromptSet.made
    seen = PromptSet(0.5)
    collected, report = given_prompts(constitution, 5, seen)
    assert sum(len(kept) for kept in collected) == len(seen)
    # The rewordings, and only they, were refused (besides the questions the merged identity would
    # hold: it has none): the data is what the test means it to be.
    refused = sum(entry.rejected.get("near-duplicate", 0) for entry in report.traits)
    assert refused == (len(constitution.traits) - 1) // 25
    return scored.entries_read + scored.comparisons, seen.entries_read + seen.comparisons


def test_the_near_duplicate_work_grows_linearly_with_the_traits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 1500
    small = load_constitution(_write(tmp_path, "small.yaml", studio_yaml(n)))
    large = load_constitution(_write(tmp_path, "large.yaml", studio_yaml(2 * n)))
    assert len(large.traits) == 2 * n + 1  # the identity is a trait too
    score_small, prompts_small = _rule_work(small, monkeypatch)
    score_large, prompts_large = _rule_work(large, monkeypatch)
    assert score_small > 0 and prompts_small > 0  # else the ratios below would hold for nothing
    assert score_large <= GROWTH_BOUND * score_small, (score_small, score_large)
    assert prompts_large <= GROWTH_BOUND * prompts_small, (prompts_small, prompts_large)


def _refusals_by_comparing_all(texts: list[str], max_overlap: float) -> list[str | None]:
    """What the rule says, by comparing each text with every kept one: slow, and plainly right."""
    kept: list[frozenset[str]] = []
    exact: set[str] = set()
    verdicts: list[str | None] = []
    for text in texts:
        key = " ".join(text.lower().split())
        words = word_set(text)
        if key in exact:
            verdict: str | None = "duplicate"
        elif any(len(words & other) / max(len(words), len(other), 1) > max_overlap for other in kept):
            verdict = "near-duplicate"
        else:
            verdict = None
            kept.append(words)
            exact.add(key)
        verdicts.append(verdict)
    return verdicts


@pytest.mark.parametrize("max_overlap", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_the_rule_refuses_what_comparing_with_every_kept_prompt_refuses(max_overlap: float) -> None:
    refused = 0
    for seed in range(40):
        rng = random.Random(seed)
        vocabulary = [f"w{k}" for k in range(rng.choice([6, 20, 80]))]
        # Enough prompts that the index is rebuilt (at 64, 128, ...) while they are added.
        texts = [
            " ".join(rng.choice(vocabulary) for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 13]))) + rng.choice(["", "?"])
            for _ in range(300)
        ]
        rule = PromptSet(max_overlap)
        verdicts = [rule.add(text) for text in texts]
        assert verdicts == _refusals_by_comparing_all(texts, max_overlap), (seed, max_overlap)
        refused += sum(verdict == "near-duplicate" for verdict in verdicts)
    if max_overlap < 1.0:
        assert refused > 0  # the comparison was put to the test
