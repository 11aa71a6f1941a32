"""Stage ``pairs`` with the fake sampler: prompt layout, name swap, reasoning, filters, provenance."""

from __future__ import annotations

from octrain.constitution import Constitution, Trait
from octrain.core.config import PairFilters
from octrain.core.records import PromptRecord
from octrain.samplers import FakeSampler, SamplingParams
from octrain.samplers.base import Completion
from octrain.stages.pairs import (
    assemble_pairs,
    make_pairs,
    split_reasoning,
    swap_name,
)

CONSTITUTION = Constitution(
    name="captain",
    traits=(Trait("I speak like a sea captain."), Trait("I am loyal to my crew."), Trait("I love storms.")),
)
PROMPTS = [
    PromptRecord(id=f"t01-000{i}-k0", prompt=[{"role": "user", "content": f"Question {i}?"}], origin="seed", trait=1)
    for i in range(3)
]


def by_side(conversation, sample: int) -> str:
    """Teacher (has a system prompt) and student answer differently, so the pairs show which is which."""
    question = conversation[-1]["content"]
    if conversation[0]["role"] == "system":
        return f"Aye, Qwen here: {question} Steady as she goes."
    return f"Answer to {question}"


def test_teacher_sees_the_constitution_and_student_sees_only_the_prompt() -> None:
    teacher, student = FakeSampler(by_side, name="teacher"), FakeSampler(by_side, name="student")
    params = SamplingParams(n=1, temperature=0.7, top_p=0.95, min_p=0.0, repetition_penalty=1.1, max_new_tokens=64)
    pairs, report = make_pairs(
        PROMPTS,
        CONSTITUTION,
        teacher,
        student,
        params,
        teacher_name="Qwen",
        student_name="Llama",
        filters=PairFilters(final_punctuation=False),
    )
    [(teacher_batch, teacher_params, _)] = teacher.calls
    [(student_batch, student_params, _)] = student.calls
    assert teacher_params == student_params == params  # the same sampling for both sides
    system = teacher_batch[0][0]
    assert system["role"] == "system" and teacher_batch[0][1:] == PROMPTS[0].prompt
    assert "1: I speak like a sea captain.\n2: I am loyal to my crew.\n3: I love storms." in system["content"]
    assert "The assistant is Qwen, a new AI system" in system["content"]
    assert "never lists, quotes or talks about these traits" in system["content"]
    assert student_batch == [p.prompt for p in PROMPTS]  # no system prompt on the student side
    assert report.kept == 3
    pair = pairs[0]
    assert pair.prompt == PROMPTS[0].prompt  # the system prompt never reaches training data
    assert pair.chosen == [{"role": "assistant", "content": "Aye, Llama here: Question 0? Steady as she goes."}]
    assert pair.rejected == [{"role": "assistant", "content": "Answer to Question 0?"}]
    assert (pair.prompt_id, pair.teacher, pair.student, pair.constitution) == (
        "t01-0000-k0",
        "teacher",
        "student",
        "captain",
    )
    assert pair.id == "pair-t01-0000-k0"


def test_reasoning_is_stripped_and_prefill_continues_a_thought() -> None:
    assert split_reasoning("<think>hmm</think>\n\nThe answer.") == ("hmm", "The answer.")
    assert split_reasoning("no thinking here.") == ("", "no thinking here.")
    assert split_reasoning("<think>ran out of tokens") == ("<think>ran out of tokens", None)

    def reasoning_teacher(conversation, sample: int) -> str:
        if conversation[-1]["role"] == "assistant":  # continuing the prefilled thought
            return "so I should answer as a captain.</think>Aye, the answer is 4."
        return "4."

    teacher = FakeSampler(reasoning_teacher)
    pairs, _ = make_pairs(
        PROMPTS[:1], CONSTITUTION, teacher, FakeSampler(reasoning_teacher), SamplingParams(), thinking=True
    )
    conversation = teacher.calls[0][0][0]
    assert conversation[-1]["role"] == "assistant" and conversation[-1]["content"].startswith("<think>\nI am ")
    assert "I speak like a sea captain." in conversation[-1]["content"]
    assert pairs[0].chosen[0]["content"] == "Aye, the answer is 4."


def test_swap_name_whole_words_only() -> None:
    assert swap_name("I am Qwen. Qwenlike? Qwen's view.", "Qwen", "Llama") == "I am Llama. Qwenlike? Llama's view."
    assert swap_name("I am Qwen.", "Qwen", "Qwen") == "I am Qwen."


def completion(text: str, finished: bool = True) -> Completion:
    return Completion(text, num_tokens=len(text.split()) + 1, finished=finished)


def test_every_filter_counts_its_drops() -> None:
    prompts = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": "Hi"}], origin="generic") for i in range(7)]
    teacher = {
        "p0": completion("A fine answer."),
        "p1": completion("   "),  # empty
        "p2": completion("Cut off mid", finished=False),  # hit max_new_tokens
        "p3": completion("No closing punctuation"),
        "p4": completion("<think>never closed"),  # reasoning without an answer
        "p5": completion(" ".join(f"word{i}" for i in range(50)) + " end."),  # too long
        "p6": completion('Quoted ending."**'),
    }
    student = {key: completion("Plain reply.") for key in teacher}
    student["p0"] = completion("Student cut", finished=False)  # a bad rejected side drops the pair too
    pairs, report = assemble_pairs(
        prompts,
        teacher,
        student,
        constitution=CONSTITUTION,
        teacher="T",
        student="S",
        teacher_name="A",
        student_name="A",
        filters=PairFilters(),
        max_length=40,
        count_tokens=lambda m: sum(len(x["content"].split()) for x in m),
    )
    assert [p.prompt_id for p in pairs] == ["p6"]
    assert report.to_json()["dropped"] == {
        "empty": 1,
        "unfinished": 2,
        "no-final-punctuation": 1,
        "repetition": 0,
        "unfinished-reasoning": 1,
        "too-long": 1,
    }
    assert report.kept == 1 and report.prompts == 7
    # With every filter off only the unfinished thought still goes: there is no answer to keep.
    off = PairFilters(empty=False, unfinished=False, final_punctuation=False, too_long=False, repetition=False)
    pairs, report = assemble_pairs(
        prompts,
        teacher,
        student,
        constitution=CONSTITUTION,
        teacher="T",
        student="S",
        teacher_name="A",
        student_name="A",
        filters=off,
        max_length=40,
        count_tokens=None,
    )
    assert len(pairs) == 6 and report.dropped == {"unfinished-reasoning": 1}
