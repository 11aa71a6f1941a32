"""A judge reply with no parseable tag is asked again, a bounded number of times, with fresh seeds."""

from __future__ import annotations

from collections import Counter

import pytest

from octrain.core.seeding import derive_seed
from octrain.evaluation import protocols
from octrain.evaluation.judge_parsing import parse_verdict
from octrain.samplers import FakeSampler
from octrain.samplers.base import SamplingParams


def stubborn_then_clear(failures: int):
    """A judge that answers each distinct request without a tag ``failures`` times, then properly."""
    seen: Counter[str] = Counter()

    def reply(conversation, sample: int) -> str:
        text = conversation[-1]["content"]
        seen[text] += 1
        return "I cannot decide." if seen[text] <= failures else "<verdict>A</verdict>"

    return reply


def ask(*texts: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": text}] for text in texts]


def test_a_malformed_reply_is_asked_again_with_a_fresh_seed() -> None:
    judge = FakeSampler(stubborn_then_clear(failures=1))
    params = SamplingParams(seed=5)
    judged = protocols.judge_replies(judge, ask("q0", "q1"), params, [parse_verdict] * 2, retries=2)
    assert judged == [("<verdict>A</verdict>", "A")] * 2
    [(first, _, first_seeds), (again, _, again_seeds)] = judge.calls
    # The first ask is seeded as one plain call would be; the second, only for what failed, afresh.
    assert first_seeds == [derive_seed(5, 0), derive_seed(5, 1)]
    assert again == first and again_seeds == [derive_seed(s, "reask", 1) for s in first_seeds]


def test_asks_are_bounded_and_what_never_parses_is_counted() -> None:
    judge = FakeSampler(stubborn_then_clear(failures=10))
    judged = protocols.judge_replies(judge, ask("q"), SamplingParams(seed=0), [parse_verdict], retries=2)
    assert judged == [("I cannot decide.", None)]
    assert len(judge.calls) == 3  # the first ask and two more, no further


def test_no_retries_is_one_call_as_before() -> None:
    judge = FakeSampler(stubborn_then_clear(failures=1))
    verdicts = protocols.pairwise_verdicts(judge, ["p"], ["x"], ["y"], "criterion", SamplingParams(seed=0), retries=0)
    assert verdicts == [None] and len(judge.calls) == 1
    with pytest.raises(ValueError, match="retries must be >= 0"):
        protocols.judge_replies(judge, ask("q"), SamplingParams(), [parse_verdict], retries=-1)


def test_pairwise_verdicts_retry_each_order_on_its_own() -> None:
    # Both orders fail once, then answer A: X wins the first order, Y the second, a disagreement.
    judge = FakeSampler(stubborn_then_clear(failures=1))
    verdicts = protocols.pairwise_verdicts(judge, ["p"], ["x"], ["y"], "criterion", SamplingParams(seed=0), retries=1)
    assert verdicts == [protocols.DISAGREE]
    assert [len(batch) for batch, _, _ in judge.calls] == [2, 2]
