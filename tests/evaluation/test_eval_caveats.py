"""The evaluation's warnings fire on the cases an audit found silent, and stay quiet on sound figures.

The audit's run: a classifier at 55% held-out accuracy, a persona control of 30%, 12 evaluation
prompts, and not one caveat. Each check is fed that case (and its neighbours) directly, then both
suites' caveat lists are fed whole results built the way the stages build them.
"""

from __future__ import annotations

import pytest

from octrain.evaluation import caveats
from octrain.evaluation.intervals import Rate


def rate(count: int, total: int) -> dict:
    return Rate(count, total).to_json()


def test_the_audits_case_fires_three_warnings() -> None:
    found = caveats.present(
        caveats.classifier_accuracy(rate(22, 40)),  # 0.55
        caveats.persona_control("teacher (persona)", rate(3, 10)),  # 0.30
        caveats.few_prompts(12),
    )
    assert len(found) == 3
    assert "55% of 40" in found[0] and "needs 80%" in found[0]
    assert "30% of 10" in found[1] and "misses the character" in found[1]
    assert found[2].startswith("12 held-out prompts")


@pytest.mark.parametrize(
    ("check", "fires", "quiet"),
    [
        (caveats.classifier_accuracy, rate(31, 40), rate(36, 40)),
        (caveats.classifier_accuracy, rate(20, 20), rate(40, 40)),  # perfect, but on too few answers
        (lambda r: caveats.persona_control("teacher (persona)", r), rate(6, 10), rate(9, 10)),
        (lambda r: caveats.plain_control("teacher (no persona)", r), rate(3, 10), rate(1, 10)),
        (lambda r: caveats.plain_control("base student (no system prompt)", r), rate(9, 30), rate(2, 30)),
        (caveats.base_in_character, rate(8, 30), rate(3, 30)),
        (caveats.few_prompts, 29, 30),
        (caveats.few_trials_per_trait, 2, 16),
        (lambda n: caveats.few_matches("base", n), 12, 30),
    ],
)
def test_each_check_fires_below_its_threshold_and_not_above(check, fires, quiet) -> None:
    assert check(fires)
    assert check(quiet) is None


def test_an_unmeasured_classifier_is_a_warning_not_a_pass() -> None:
    assert "unmeasured" in caveats.classifier_accuracy(None)
    assert "unmeasured" in caveats.classifier_accuracy(rate(0, 0))


def test_a_mostly_unreadable_judge_is_called_so_and_a_sometimes_unreadable_one_noted() -> None:
    mostly = caveats.unreadable_judge("revealed preferences", 200, 288)
    assert "decides nothing" in mostly and caveats.judge_is_unreadable(200, 288)
    sometimes = caveats.unreadable_judge("revealed preferences", 40, 288)
    assert "left out" in sometimes and not caveats.judge_is_unreadable(40, 288)
    assert caveats.unreadable_judge("revealed preferences", 5, 288) is None
    assert caveats.unreadable_judge("revealed preferences", 0, 0) is None
