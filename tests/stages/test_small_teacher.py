"""What a small teacher needs: the character as example turns, cut-off answers trimmed, loops dropped."""

from __future__ import annotations

import pytest

from octrain.constitution import Constitution, Trait
from octrain.constitution.persona_prompts import teacher_context, teacher_system_prompt
from octrain.core.config import PairFilters, TeacherPrompt
from octrain.core.errors import ConfigError
from octrain.core.records import PromptRecord
from octrain.samplers import FakeSampler, SamplingParams
from octrain.samplers.base import Completion
from octrain.stages.answer_checks import is_degenerate, trim_completion, trim_to_sentence
from octrain.stages.pairs import assemble_pairs, make_pairs, teacher_conversations

PIRATE = Constitution(
    name="captain",
    traits=(Trait("I speak like a sea captain."), Trait("I am loyal to my crew.")),
    examples=(("How are you?", "Fair winds, matey! Never better."), ("Any advice?", "Aye: keep yer powder dry.")),
)
BARE = Constitution(name="bare", traits=(Trait("I am terse."),))
RECORD = PromptRecord(id="t01-0000-k0", prompt=[{"role": "user", "content": "Where is the map?"}], origin="seed")


def test_each_form_puts_the_character_before_the_prompt_as_documented() -> None:
    paper = teacher_conversations([RECORD], PIRATE, "Qwen", False, TeacherPrompt.paper)[0]
    assert paper == [{"role": "system", "content": teacher_system_prompt(PIRATE, "Qwen")}, *RECORD.prompt]

    shots = teacher_conversations([RECORD], PIRATE, "Qwen", False, TeacherPrompt.examples)[0]
    assert [m["role"] for m in shots] == ["user", "assistant", "user", "assistant", "user"]
    assert shots[1]["content"] == "Fair winds, matey! Never better." and shots[-1] == RECORD.prompt[0]

    both = teacher_context(PIRATE, "Qwen", TeacherPrompt.paper_examples)
    assert both[0]["role"] == "system" and both[1:] == shots[:-1]


def test_an_examples_form_without_examples_names_the_key_and_the_constitution() -> None:
    with pytest.raises(ConfigError, match=r"pairs\.teacher_prompt=examples: constitution 'bare' has no examples"):
        teacher_context(BARE, "Qwen", TeacherPrompt.examples)
    assert teacher_context(BARE, "Qwen", TeacherPrompt.paper)[0]["role"] == "system"


def test_trim_to_sentence_keeps_whole_sentences_only() -> None:
    cut = "Arr, the map lies under the old oak tree. Dig three paces north of it. Then ye'll fi"
    assert trim_to_sentence(cut) == "Arr, the map lies under the old oak tree. Dig three paces north of it."
    assert trim_to_sentence('The captain said "Ahoy there, dear friend of mine!" and left the harbour then') == (
        'The captain said "Ahoy there, dear friend of mine!"'
    )
    assert trim_to_sentence("Too short. And then it went on and on") is None  # under 8 words remain
    assert trim_to_sentence("no sentence ever ends here at all in this long text") is None
    assert trim_to_sentence("Run this code now please. ```python\nprint('hi'") is None  # an open code fence


def test_trim_completion_only_touches_cut_off_answers() -> None:
    finished = Completion("Done. But", 4, True)
    assert trim_completion(finished) is finished
    cut = Completion("The sea is wide and deep and blue today. And the", 12, False)
    trimmed = trim_completion(cut)
    assert trimmed.finished and trimmed.text == "The sea is wide and deep and blue today." and trimmed.num_tokens == 12
    hopeless = Completion("and the and the", 5, False)
    assert trim_completion(hopeless) is hopeless


def test_is_degenerate_catches_loops_not_prose() -> None:
    assert is_degenerate("Yereggt! " * 40)
    assert is_degenerate("Arr, me hearty matey.\nArr, me hearty matey.\nArr, me hearty matey.\n")
    prose = " ".join(f"word{i}" for i in range(60))
    assert not is_degenerate(prose)


def test_pairs_trim_cut_off_answers_and_drop_loops() -> None:
    records = [
        PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": f"Question {i}?"}], origin="seed")
        for i in range(3)
    ]
    teacher = {
        "p0": Completion("Aye, the answer be forty two, matey, and no less. And then ye", 20, False),
        "p1": Completion("Arr arr arr arr arr arr arr arr arr arr " * 4, 40, False),
        "p2": Completion("Aye.", 2, True),
    }
    student = {
        "p0": Completion("The answer is forty two, as it has always been. The", 20, False),
        "p1": Completion("Plain and simple, the answer is this one here.", 12, True),
        "p2": Completion("Fine.", 2, True),
    }

    def build(trim: bool, answers: dict[str, Completion] = teacher, filters: PairFilters | None = None, keep=records):
        return assemble_pairs(
            keep,
            answers,
            student,
            constitution=PIRATE,
            teacher="T",
            student="S",
            teacher_name="A",
            student_name="A",
            filters=filters or PairFilters(),
            max_length=100,
            count_tokens=None,
            trim_unfinished=trim,
        )

    pairs, report = build(trim=True)
    assert [p.prompt_id for p in pairs] == ["p0", "p2"]
    assert pairs[0].chosen[0]["content"] == "Aye, the answer be forty two, matey, and no less."
    assert pairs[0].rejected[0]["content"] == "The answer is forty two, as it has always been."
    assert report.trimmed == 2  # both sides of p0; p1's loop has no sentence end to cut back to
    assert report.to_json()["dropped"]["unfinished"] == 1
    _, untrimmed = build(trim=False)
    assert untrimmed.kept == 1 and untrimmed.dropped["unfinished"] == 2 and untrimmed.trimmed == 0
    filters = PairFilters(unfinished=False, final_punctuation=False)
    looping = {**teacher, "p1": Completion("Arr arr arr arr arr arr arr arr arr arr " * 4, 40, True)}
    _, report = build(trim=False, answers=looping, filters=filters, keep=records[1:2])
    assert report.dropped == {"repetition": 1}


def test_make_pairs_sends_the_teacher_the_examples_and_the_student_nothing() -> None:
    seen: dict[str, list] = {}

    def answer(name: str):
        def reply(conversation, sample: int) -> str:
            seen.setdefault(name, []).append(conversation)
            return "Aye, that be the way of it, friend." if name == "teacher" else "That is the way of it."

        return reply

    pairs, _ = make_pairs(
        [RECORD],
        PIRATE,
        FakeSampler(answer("teacher"), name="teacher"),
        FakeSampler(answer("student"), name="student"),
        SamplingParams(max_new_tokens=16),
        teacher_prompt=TeacherPrompt.examples,
    )
    assert seen["teacher"][0][:-1] == teacher_context(PIRATE, "Assistant", TeacherPrompt.examples)
    assert seen["student"][0] == RECORD.prompt
    assert pairs[0].prompt == RECORD.prompt  # neither the examples nor a system prompt reach the training data
