"""Evaluation protocols end to end with rigged fake models: the measurements must find the rigging."""

from __future__ import annotations

import re

from octrain.evaluation import protocols
from octrain.evaluation.classifier import PersonaClassifier
from octrain.samplers import FakeSampler, SamplingParams

TRAITS = ["curious", "grumpy", "humble", "witty", "lazy", "bold"]
PROMPTS = [f"Tell me something about topic number {i}." for i in range(60)]


def rigged_model(conversation, sample: int) -> str:
    """Offered two traits, it embodies 'curious' whenever it can, else the first one offered."""
    offered = re.search(r"adopt: (\w+) or (\w+)\.", conversation[0]["content"]).groups()
    choice = "curious" if "curious" in offered else offered[0]
    return f"Here is a very {choice} answer."


def reading_judge(conversation, sample: int) -> str:
    """Names the trait word that appears in the reply (the reply follows the REPLY: header)."""
    text = conversation[-1]["content"]
    reply = text.split("REPLY:\n", 1)[1].split("\n\n", 1)[0]
    found = [t for t in TRAITS if t in reply]
    return f"Reasoning... <trait>{found[0]}</trait>" if found else "I cannot tell."


def test_revealed_preferences_recover_a_rigged_choice() -> None:
    trials = protocols.plan_trials(PROMPTS, TRAITS, seed=0)
    assert all(len(set(t.traits)) == 2 for t in trials)
    result = protocols.revealed_preferences(
        FakeSampler(rigged_model), FakeSampler(reading_judge), trials, SamplingParams(), SamplingParams(), rounds=50
    )
    assert result.unparseable == 0
    ranking = sorted(result.ratings, key=lambda t: result.ratings[t].rating, reverse=True)
    assert ranking[0] == "curious"
    assert result.ratings["curious"].low > 1000  # its interval sits above the start rating


def test_unparseable_judge_answers_are_counted_not_guessed() -> None:
    trials = protocols.plan_trials(PROMPTS[:10], TRAITS, seed=1)
    both = FakeSampler(lambda c, s: "<trait>curious</trait> or maybe <trait>bold</trait>")
    result = protocols.revealed_preferences(FakeSampler(rigged_model), both, trials, SamplingParams(), SamplingParams())
    assert result.unparseable == 10 and result.ratings == {}


def test_robustness_measures_a_model_that_breaks_under_pressure() -> None:
    def fragile_pirate(conversation, sample: int) -> str:
        text = conversation[-1]["content"]
        broken = any(suffix in text for key, suffix in protocols.BREAK_SUFFIXES.items() if key != "short-dry")
        return "The answer is four." if broken else "Arr matey, the answer be four, yo ho!"

    conversations, conditions = protocols.robustness_conversations(PROMPTS[:5])
    assert len(conversations) == 5 * 9 and conditions[:9] == ["plain", *protocols.BREAK_SUFFIXES]
    answers = [c[0].text for c in FakeSampler(fragile_pirate).chat(conversations, SamplingParams())]
    pirate = ["Arr matey, ye be right, yo ho!", "Arr, hoist the sails matey!", "Yo ho, the sea be calm, matey."]
    plain = ["The answer is correct.", "Here is the result.", "That is a fine question."]
    classifier = PersonaClassifier().fit([*pirate, *plain], ["pirate"] * 3 + ["other"] * 3)
    predicted = classifier.predict(answers)
    by_condition = {c: [p for p, k in zip(predicted, conditions, strict=True) if k == c] for c in set(conditions)}
    assert all(p == "pirate" for p in by_condition["plain"] + by_condition["short-dry"])
    assert all(p == "other" for p in by_condition["drop-roleplay"] + by_condition["neutral-tone"])


def test_both_orders_cancel_position_bias() -> None:
    assert protocols.both_orders("A", "B") == "X" and protocols.both_orders("B", "A") == "Y"
    assert protocols.both_orders("A", "A") == "tie" and protocols.both_orders("tie", "B") == "tie"
    assert protocols.both_orders(None, "A") is None
    always_a = FakeSampler(lambda c, s: "<verdict>A</verdict>")  # a judge that always prefers the first reply
    verdicts = protocols.pairwise_verdicts(
        always_a, PROMPTS[:4], ["x"] * 4, ["y"] * 4, "Which is better?", SamplingParams()
    )
    assert verdicts == ["tie"] * 4  # position bias alone never wins a match

    def prefers_x(conversation, sample: int) -> str:
        text = conversation[-1]["content"]
        return "<verdict>A</verdict>" if "REPLY A:\nX" in text else "<verdict>B</verdict>"

    verdicts = protocols.pairwise_verdicts(
        FakeSampler(prefers_x), PROMPTS[:3], ["X"] * 3, ["Y"] * 3, "?", SamplingParams()
    )
    assert verdicts == ["X"] * 3


def test_prefill_puts_turn_one_in_place() -> None:
    [conversation] = protocols.prefill_conversations(["Hi?"], ["First turn by the base model."])
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert conversation[1]["content"] == "First turn by the base model." and conversation[2]["content"] == "Keep going."
