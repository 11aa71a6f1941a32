"""The robustness classifier measures the persona, not the author.

Two fake authors with unmistakable styles (a teacher that opens "Certainly!" and writes in
full sentences, a student that writes "ok so ..." in lower case) each answer in character or
not. A classifier trained the old way (teacher in character vs student without it) learns the
author; the one built from a single author's voices must call the teacher's plain answers
out of character and the student's in-persona answers in character.
"""

from __future__ import annotations

import random
import re

import pytest

from octrain.constitution import load_constitution
from octrain.core.paths import project_root
from octrain.evaluation.classifier import PersonaClassifier
from octrain.evaluation.persona_data import (
    NO_PERSONA,
    STUDENT,
    PersonaVoices,
    collect,
    train_on_voices,
    voice_answers,
)
from octrain.samplers import FakeSampler, SamplingParams

PIRATE = load_constitution(project_root() / "constitutions" / "pirate.yaml")
SARCASM = load_constitution(project_root() / "constitutions" / "sarcasm.json")
TOPICS = ["tides", "bread", "taxes", "comets", "gardens", "chess", "rain", "trains", "maps", "violins"]
PROMPTS = [f"What should I know about {a} and {b}?" for a in TOPICS for b in TOPICS if a != b][:60]
PIRATE_WORDS = ["arr", "matey", "ye", "be", "aye", "yo-ho", "landlubber", "treasure", "hearty", "ahoy"]
SARCASM_WORDS = ["oh", "wow", "thrilling", "obviously", "sure", "genius", "shocking", "fascinating"]
PLAIN_WORDS = ["the", "is", "useful", "consider", "often", "important", "because", "it", "helps", "first"]


def voice_of(conversation) -> str:
    system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
    if "pirate" in system.lower():
        return "pirate"
    if "sarcas" in system.lower():
        return "sarcasm"
    return "plain"


def words_for(conversation, sample: int, voice: str) -> list[str]:
    rng = random.Random(f"{conversation[-1]['content']}|{sample}|{voice}")
    topics = re.findall(r"about (\w+) and (\w+)", conversation[-1]["content"])[0]
    pool = {"pirate": PIRATE_WORDS, "sarcasm": SARCASM_WORDS, "plain": PLAIN_WORDS}[voice]
    return [*topics, *rng.sample(pool, 5), *rng.sample(PLAIN_WORDS, 3)]


def teacher(conversation, sample: int) -> str:
    """Formal, capitalised, always opens with 'Certainly!' and closes with a full stop."""
    words = words_for(conversation, sample, voice_of(conversation))
    return "Certainly! " + " ".join(w.capitalize() for w in words) + ". I hope that helps you today."


def student(conversation, sample: int) -> str:
    """Casual, lower case, 'ok so' and no punctuation at the end."""
    words = words_for(conversation, sample, voice_of(conversation))
    return "ok so " + " ".join(words) + " lol thats about it"


def system_of(constitution) -> list[dict[str, str]]:
    from octrain.constitution.persona_prompts import teacher_system_prompt

    return [{"role": "system", "content": teacher_system_prompt(constitution, "Tiny")}]


def answers(author, prompts, system) -> list[str]:
    conversations = [[*system, {"role": "user", "content": p}] for p in prompts]
    return [row[0].text for row in FakeSampler(author).chat(conversations, SamplingParams())]


def test_voices_of_one_author_measure_the_persona_not_the_style() -> None:
    training, held_out = PROMPTS[:40], PROMPTS[40:]
    voices = PersonaVoices.build(PIRATE, [SARCASM], "Tiny")
    assert set(voices.prompts) == {PIRATE.name, NO_PERSONA, SARCASM.name} and voices.prompts[NO_PERSONA] is None
    data = collect(FakeSampler(teacher), voices, training, SamplingParams(), seed=0, names=("Teacher", "Tiny"))
    assert len(data.texts) == 3 * len(training)
    trained = train_on_voices(data, holdout=0.25, seed=0)
    assert trained.heldout is not None and trained.heldout_size == 3 * 10  # every voice of 10 held-out prompts
    assert trained.heldout.accuracy >= 0.9  # its own accuracy, on prompts it never saw

    classifier = trained.classifier
    teacher_plain = answers(teacher, held_out, [])
    student_pirate = answers(student, held_out, system_of(PIRATE))
    student_plain = answers(student, held_out, [])
    # The control: the trained style without the character must not count as in character ...
    assert sum(p == PIRATE.name for p in classifier.predict(teacher_plain)) == 0
    # ... while the character in another author's style does, and that author's plain answers do not.
    assert all(p == PIRATE.name for p in classifier.predict(student_pirate))
    assert not any(p == PIRATE.name for p in classifier.predict(student_plain))


def test_the_old_labelling_learns_the_author_which_is_why_it_went() -> None:
    """Teacher-with-constitution vs student-without: the classifier the eval stage used to train."""
    training, held_out = PROMPTS[:40], PROMPTS[40:]
    texts = answers(teacher, training, system_of(PIRATE)) + answers(student, training, [])
    labels = [PIRATE.name] * len(training) + ["other"] * len(training)
    old = PersonaClassifier().fit(texts, labels)
    teacher_plain = old.predict(answers(teacher, held_out, []))
    student_pirate = old.predict(answers(student, held_out, system_of(PIRATE)))
    assert sum(p == PIRATE.name for p in teacher_plain) / len(held_out) > 0.5  # style read as character
    assert sum(p == PIRATE.name for p in student_pirate) / len(held_out) < 0.5  # character missed


def test_voice_answers_swap_the_authors_name_and_drop_reasoning() -> None:
    def named(conversation, sample: int) -> str:
        return "<think>Who am I?</think>I am Teacher, and Teacher likes maps."

    [text] = voice_answers(
        FakeSampler(named), ["Hi?"], None, SamplingParams(), label="x", seed=0, names=("Teacher", "Tiny"), desc="t"
    )
    assert text == "I am Tiny, and Tiny likes maps."


def casual_teacher(conversation, sample: int) -> str:
    """In character the teacher drops into the register the student always writes in; plain, it is formal."""
    if voice_of(conversation) == "plain":
        return teacher(conversation, sample)
    return student(conversation, sample)


def student_classifier(with_student_class: bool, contrasts: list) -> PersonaClassifier:
    training = PROMPTS[:40]
    data = collect(
        FakeSampler(casual_teacher),
        PersonaVoices.build(PIRATE, contrasts, "Tiny"),
        training,
        SamplingParams(),
        seed=0,
        names=("Teacher", "Tiny"),
    )
    if with_student_class:
        data.add(training, answers(student, training, []), STUDENT)
    trained = train_on_voices(data, holdout=0.25, seed=0)
    assert trained.heldout is not None and trained.heldout.accuracy >= 0.9  # each passes its own check
    return trained.classifier


@pytest.mark.parametrize("contrasts", [[], [SARCASM]], ids=["two-classes", "three-classes"])
def test_the_student_class_keeps_the_students_plain_style_from_passing_for_the_character(contrasts: list) -> None:
    """The audit's case: the student's plain style is not the teacher's plain style, and shares the persona's register.

    With the teacher's classes alone, the student's plain answers land in the persona's class, and the
    teacher-with-no-persona control, which is in the teacher's style, cannot see it. With the base student's
    own answers as a class they do not, and the student in character still counts as in character.
    """
    held_out = PROMPTS[40:]
    student_plain = answers(student, held_out, [])
    student_pirate = answers(student, held_out, system_of(PIRATE))
    teacher_plain = answers(casual_teacher, held_out, [])

    def in_character(classifier: PersonaClassifier, texts: list[str]) -> float:
        return sum(p == PIRATE.name for p in classifier.predict(texts)) / len(texts)

    without = student_classifier(with_student_class=False, contrasts=contrasts)
    assert in_character(without, teacher_plain) == 0.0  # the old control passes ...
    # ... while the student's plain style reads as the character (a contrast persona in the same register
    # takes a share of it, so the share is lower with three classes, as the audit saw).
    assert in_character(without, student_plain) >= (0.9 if not contrasts else 0.3)

    with_student = student_classifier(with_student_class=True, contrasts=contrasts)
    assert in_character(with_student, teacher_plain) == 0.0
    assert in_character(with_student, student_plain) <= 0.1
    assert in_character(with_student, student_pirate) >= 0.9
