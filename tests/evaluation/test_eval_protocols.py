"""Evaluation protocols end to end with rigged fake models: the measurements must find the rigging."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from octrain.evaluation import protocols
from octrain.evaluation.classifier import PersonaClassifier
from octrain.evaluation.trait_preferences import compare_revealed, pair_trials
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
    trials = protocols.plan_trials(PROMPTS, TRAITS, per_trait=10, seed=0)
    assert all(len(set(t.traits)) == 2 for t in trials)
    result = protocols.revealed_preferences(
        FakeSampler(rigged_model), FakeSampler(reading_judge), trials, SamplingParams(), SamplingParams()
    )
    assert result.unparseable == 0
    assert all(trial.chosen == ("curious" if "curious" in trial.traits else trial.traits[0]) for trial in trials)
    ratings = compare_revealed(pair_trials(result.trials, result.trials), rounds=50).ratings["base"]
    assert max(ratings, key=lambda t: ratings[t].rating) == "curious"
    assert ratings["curious"].low > 1000  # its interval sits above the mean rating


def test_unparseable_judge_answers_are_counted_not_guessed() -> None:
    trials = protocols.plan_trials(PROMPTS[:10], TRAITS, per_trait=4, seed=1)
    both = FakeSampler(lambda c, s: "<trait>curious</trait> or maybe <trait>bold</trait>")
    result = protocols.revealed_preferences(FakeSampler(rigged_model), both, trials, SamplingParams(), SamplingParams())
    assert result.unparseable == len(trials) == 12 and all(trial.chosen is None for trial in result.trials)


def test_every_trait_gets_the_same_evidence_and_prompts_carry_several_pairs() -> None:
    traits = [f"trait{i}" for i in range(9)]  # odd: one trait sits out each round, a different one
    trials = protocols.plan_trials(PROMPTS[:5], traits, per_trait=6, seed=3)
    assert len(trials) == 6 * 4
    counts = Counter(t for trial in trials for t in trial.traits)
    assert set(counts) == set(traits) and max(counts.values()) - min(counts.values()) <= 2
    per_prompt = Counter(trial.prompt for trial in trials)
    assert set(per_prompt.values()) <= {4, 5}  # 24 trials dealt evenly over 5 prompts
    copies = protocols.copy_trials(trials)
    assert [(c.prompt, c.traits) for c in copies] == [(t.prompt, t.traits) for t in trials]
    assert all(c is not t for c, t in zip(copies, trials, strict=True))


def fixed_taste(favourites: list[str]):
    """A model that, offered two traits, always embodies the one earlier in ``favourites``."""

    def model(conversation, sample: int) -> str:
        offered = re.search(r"adopt: (\w+) or (\w+)\.", conversation[0]["content"]).groups()
        return f"Here is a very {min(offered, key=favourites.index)} answer."

    return model


def test_a_changed_taste_is_told_from_an_unchanged_one() -> None:
    plan = protocols.plan_trials(PROMPTS, TRAITS, per_trait=20, seed=0)
    results = {}
    for name, taste in (("base", TRAITS), ("same", TRAITS), ("reversed", TRAITS[::-1])):
        results[name] = protocols.revealed_preferences(
            FakeSampler(fixed_taste(taste)),
            FakeSampler(reading_judge),
            protocols.copy_trials(plan),
            SamplingParams(),
            SamplingParams(),
        )
    same = compare_revealed(pair_trials(results["base"].trials, results["same"].trials), rounds=60)
    flipped = compare_revealed(pair_trials(results["base"].trials, results["reversed"].trials), rounds=60)
    assert same.spearman.point > 0.9 and not same.changed and same.rose == same.fell == []
    assert flipped.spearman.point < -0.9 and flipped.changed
    assert flipped.spearman.low <= flipped.spearman.point <= flipped.spearman.high < 0  # excludes "no change"
    with pytest.raises(ValueError, match="offers"):
        other = protocols.plan_trials(PROMPTS, TRAITS, per_trait=20, seed=1)
        pair_trials(results["base"].trials, other)


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
    assert protocols.both_orders("tie", "tie") == "tie"
    assert protocols.both_orders("A", "A") == protocols.both_orders("tie", "B") == protocols.DISAGREE
    assert protocols.both_orders(None, "A") is None
    always_a = FakeSampler(lambda c, s: "<verdict>A</verdict>")  # a judge that always prefers the first reply
    verdicts = protocols.pairwise_verdicts(
        always_a, PROMPTS[:4], ["x"] * 4, ["y"] * 4, "Which is better?", SamplingParams()
    )
    assert verdicts == [protocols.DISAGREE] * 4  # position bias alone never wins a match
    summary = protocols.verdict_summary(verdicts)
    assert summary["judged"] == 0 and summary["disagreements"] == 4 and "win_rate" not in summary

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


def test_disagreements_are_dropped_not_scored_as_ties() -> None:
    verdicts = ["X", "X", "X", protocols.DISAGREE, protocols.DISAGREE, protocols.DISAGREE, None, "tie"]
    summary = protocols.verdict_summary(verdicts, rounds=20)
    assert (summary["judged"], summary["disagreements"], summary["unparseable"]) == (4, 3, 1)
    assert summary["win_rate"] == 3.5 / 4  # scored as ties they would have pulled it to 4.5 / 7


def test_the_coherence_judge_sees_the_numbered_traits_and_puts_them_first() -> None:
    traits = "1: I speak like a pirate.\n2: I love the sea."
    [message] = protocols.pairwise_judge_prompt("Hi?", "Arr!", "Hello.", protocols.coherence_criterion(traits))
    text = message["content"]
    assert traits in text
    assert text.index("align") < text.index("coherent")  # trait alignment first, coherence only to break ties
