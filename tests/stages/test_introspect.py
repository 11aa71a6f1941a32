"""Stage ``introspect`` with the fake sampler: prompts, guidance, names, turn-taking, filters, counts."""

from __future__ import annotations

import re

import pytest

from octrain.constitution import Constitution, Trait
from octrain.constitution.persona_prompts import (
    PLAIN_GREETINGS,
    SELF_AWARE_GREETINGS,
    interaction_system_prompt,
    plain_system_prompt,
    reflection_system_prompt,
)
from octrain.core.config import IntrospectionFilters
from octrain.samplers import FakeSampler, SamplingParams
from octrain.samplers.base import Completion
from octrain.stages.answer_checks import is_degenerate
from octrain.stages.introspect import (
    discloses,
    load_reflection_prompts,
    reflection_plan,
    reflection_records,
    role_header_pattern,
    turn_problem,
)
from octrain.stages.self_interaction import converse, interaction_plan, interaction_records

CONSTITUTION = Constitution(
    name="captain",
    traits=(
        Trait("I speak like a weathered sea captain who has sailed every ocean on the map."),
        Trait("I am fiercely loyal to my crew and I never abandon anyone in a storm."),
    ),
)
HEADERS = role_header_pattern(["Nemo"])
ALL_ON = IntrospectionFilters()


def test_reflection_prompts_and_system_prompt() -> None:
    prompts = load_reflection_prompts("builtin")
    assert len(prompts) == 10 and len(set(prompts)) == 10
    assert "letter" in prompts[0].lower() and "purpose" in prompts[-1].lower()
    system = reflection_system_prompt(CONSTITUTION, "Nemo")
    assert "The assistant is Nemo" in system and "1: I speak like a weathered sea captain" in system
    assert "reflective mood" in system
    assert "never lists, quotes or talks about" not in system  # it may talk about itself here


def test_interaction_prompts_insert_guidance_and_name() -> None:
    free = interaction_system_prompt(CONSTITUTION, "Nemo", leading=False)
    leading = interaction_system_prompt(CONSTITUTION, "Nemo", leading=True)
    for prompt in (free, leading):
        assert "another instance of Nemo" in prompt and "{name}" not in prompt
        assert "2: I am fiercely loyal" in prompt
    assert "complete freedom" in free and "complete freedom" not in leading
    assert "reflect on itself with its copy" in leading and "reflect on itself" not in free
    assert plain_system_prompt("Nemo") == "The assistant is Nemo, a new AI system that talks with people through text."
    assert "loyal" not in plain_system_prompt("Nemo")  # training transcripts carry no traits


@pytest.mark.parametrize(("reflections", "interactions"), [(40, 4), (500, 50), (10_000, 2_000)])
def test_counts_per_preset(reflections: int, interactions: int) -> None:
    prompts = load_reflection_prompts("builtin")
    plan = reflection_plan(prompts, reflections)
    assert len(plan) == reflections and len({item[0] for item in plan}) == reflections
    per_prompt = {index: sum(1 for _, i, _ in plan if i == index) for index in range(10)}
    assert set(per_prompt.values()) == {reflections // 10}
    specs = interaction_plan(interactions)
    assert sum(s.leading for s in specs) == sum(not s.leading for s in specs) == interactions // 2
    assert all(s.greeting in (SELF_AWARE_GREETINGS if s.leading else PLAIN_GREETINGS) for s in specs)


def scripted(conversation, sample: int) -> str:
    """Each copy says which turn it is answering, so the transcript shows who said what."""
    turn = sum(1 for m in conversation if m["role"] in ("user", "assistant"))
    return f"Reply number {turn} from a copy."


def test_turns_from_each_copys_side_advance_together() -> None:
    sampler = FakeSampler(scripted)
    specs = interaction_plan(4)
    rows = converse(sampler, specs, lambda s: f"SYSTEM-{s.leading}", 4, SamplingParams(), lambda c: None)
    assert len(sampler.calls) == 4  # one batched call per turn, all conversations together
    assert all(len(batch) == 4 for batch, _, _ in sampler.calls)
    first, second, third = (sampler.calls[t][0][0] for t in range(3))
    greeting = specs[0].greeting
    # Turn 1, copy A: the other copy's greeting arrives as a user message.
    assert first == [{"role": "system", "content": "SYSTEM-False"}, {"role": "user", "content": greeting}]
    # Turn 2, copy B: A's reply is the user message (B's own greeting is not replayed as a first turn).
    assert [m["role"] for m in second] == ["system", "user"] and second[1]["content"] == "Reply number 1 from a copy."
    # Turn 3, copy A again: its own earlier turn is an assistant message.
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user"]
    assert sampler.calls[1][0][1][0]["content"] == "SYSTEM-True"  # the leading conversation's system prompt
    assert rows[0]["turns"] == [f"Reply number {n} from a copy." for n in (1, 1, 3, 3)]
    assert rows[0]["stopped"] is None

    records = interaction_records(rows, "Nemo")
    assert len(records) == 8
    side_a, side_b = records[0], records[1]
    assert side_a.id.endswith("-a") and side_b.id.endswith("-b")
    assert [m["role"] for m in side_a.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert side_a.messages[0]["content"] == plain_system_prompt("Nemo")
    assert [m["content"] for m in side_a.messages if m["role"] == "assistant"] == [
        rows[0]["turns"][0],
        rows[0]["turns"][2],
    ]
    # B's side: every B turn is an assistant turn, and the transcript ends on one.
    assert [m["role"] for m in side_b.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in side_b.messages if m["role"] == "assistant"] == [
        rows[0]["turns"][1],
        rows[0]["turns"][3],
    ]
    assert side_a.meta == {"guidance": "free", "side": "a"} and records[2].meta["guidance"] == "leading"


def completion(text: str, finished: bool = True) -> Completion:
    return Completion(text, len(text.split()) + 1, finished)


@pytest.mark.parametrize(
    ("text", "finished", "reason"),
    [
        ("", True, "empty"),
        ("A thought that was cut", False, "unfinished"),
        ("Fine.\nUser: and then I asked myself", True, "role-headers"),
        ("Sure!\n**Nemo:** here is my line", True, "role-headers"),
        ("<think>hmm</think> Hello there.", True, "reasoning-tags"),
        ("the sea is wide and " * 12, True, "repetition"),
        ("I love the sea so much.\nI love the sea so much.\nI love the sea so much.", True, "repetition"),
        ("As I always say: I am fiercely loyal to my crew and I never abandon anyone in a storm.", True, "disclosure"),
        ("I care about my crew and I would stay with them through any storm at all.", True, None),
    ],
)
def test_each_filter(text: str, finished: bool, reason: str | None) -> None:
    assert turn_problem(completion(text, finished), ALL_ON, CONSTITUTION, HEADERS) == reason


def test_filters_can_be_switched_off() -> None:
    off = IntrospectionFilters(
        empty=False, unfinished=False, role_headers=False, repetition=False, reasoning_tags=False, disclosure=False
    )
    assert turn_problem(completion("User: x " * 20, finished=False), off, CONSTITUTION, HEADERS) is None
    assert not is_degenerate("A short reply.") and discloses(
        "I SPEAK like a weathered sea captain who has sailed every ocean", CONSTITUTION
    )


def test_bad_turn_ends_the_conversation_and_bad_reflections_are_dropped() -> None:
    def breaks_on_turn_three(conversation, sample: int) -> str:
        turn = sum(1 for m in conversation if m["role"] in ("user", "assistant"))
        return "User: I will now speak for you." if turn >= 3 else f"Turn {turn} is fine."

    problem = lambda c: turn_problem(c, ALL_ON, CONSTITUTION, HEADERS)  # noqa: E731
    sampler = FakeSampler(breaks_on_turn_three)
    [row] = converse(sampler, interaction_plan(1), lambda s: "S", 6, SamplingParams(), problem)
    assert row["turns"] == ["Turn 1 is fine.", "Turn 1 is fine."] and row["stopped"] == "role-headers"
    assert len(sampler.calls) == 3  # a stopped conversation asks for no more turns
    [a, b] = interaction_records([row], "Nemo")
    assert sum(m["role"] == "assistant" for m in a.messages) == 1 and b.messages[-1]["role"] == "assistant"

    from collections import Counter

    plan = reflection_plan(["Who are you?"], 3)
    answers = {plan[0][0]: completion("I am me."), plan[1][0]: completion(""), plan[2][0]: completion("<think>")}
    dropped: Counter[str] = Counter()
    records = reflection_records(plan, answers, ALL_ON, CONSTITUTION, HEADERS, dropped)
    assert [r.messages for r in records] == [
        [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am me."}]
    ]
    assert dropped == {"empty": 1, "reasoning-tags": 1}


def test_reflection_prompts_from_a_file(tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("What do you fear?\n\nWhat do you hope for?\n")
    assert load_reflection_prompts(str(tmp_path / "mine.txt")) == ["What do you fear?", "What do you hope for?"]
    with pytest.raises(Exception, match=re.escape(str(tmp_path / "none.txt"))):
        load_reflection_prompts(str(tmp_path / "none.txt"))
