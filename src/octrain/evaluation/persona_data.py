"""The persona classifier's data: one author, with and without the character.

A classifier trained on "teacher with the constitution" against "student without it" learns
who wrote an answer as much as the character in it: a teacher-styled answer with no persona
then counts as in character, and the trained student's in-persona answers, in the student's
own style, do not. Here every class is written by the *same* model (the teacher), on the
*same* prompts, with the *same* sampling; only the system prompt differs:

* the persona: the run's constitution, as the teacher saw it in stage 1;
* ``none``: no system prompt at all, the author's plain style;
* optionally other personas (``eval.classifier.contrast_personas``): other constitutions,
  which makes it the paper's multi-class persona classifier, where a style every class
  shares cannot separate anything.

One class comes from another author: ``student``, the *base student's* own answers to the same
prompts with no system prompt. Without it the only plain class is the teacher's plain style, and
an answer in the student's plain style (which the teacher classes never showed) lands wherever its
style happens to sit, often in the persona's class: a simulated student whose plain style shared
the persona's register was called in character 77% of the time with the teacher's classes alone.
With it, the student's plain style is a class of its own, and the in-character class has to be
told apart from it by the character.

The prompts are training prompts of the run (never the held-out evaluation prompts), split
by prompt into a training part and a held-out part that measures the classifier's own
accuracy. Two controls on the held-out *evaluation* prompts show what the figures mean: the
teacher in character should score high, and the teacher with no persona and the base student
must not count as in character.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from octrain.constitution import Constitution
from octrain.constitution.persona_prompts import teacher_system_prompt
from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.evaluation.classifier import ClassifierConfig, PersonaClassifier, evaluate
from octrain.evaluation.classifier_scores import ClassifierReport
from octrain.samplers.base import Sampler, SamplingParams
from octrain.stages.pairs import split_reasoning, swap_name

NO_PERSONA = "none"
# The base student's own plain answers (no system prompt): the style training starts from.
STUDENT = "student"


@dataclass
class PersonaVoices:
    """The system prompt of each class, by label: the persona, ``none`` (no prompt), contrasts."""

    persona: str
    prompts: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def build(cls, constitution: Constitution, contrasts: Sequence[Constitution], name: str) -> PersonaVoices:
        """The run's persona, the plain author and each contrast persona, all naming the assistant ``name``."""
        voices = cls(persona=constitution.name)
        voices.prompts[constitution.name] = teacher_system_prompt(constitution, name)
        voices.prompts[NO_PERSONA] = None
        for other in contrasts:
            if other.name in voices.prompts or other.name == STUDENT:
                raise ValueError(
                    f"contrast persona {other.name!r} is the run's own persona, listed twice, or a reserved class name"
                )
            voices.prompts[other.name] = teacher_system_prompt(other, name)
        return voices


def conversations_for(prompts: Sequence[str], system: str | None) -> list[list[Message]]:
    """Each prompt as a one-turn conversation, under ``system`` when there is one."""
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    return [[*head, {"role": "user", "content": prompt}] for prompt in prompts]


def voice_answers(
    author: Sampler,
    prompts: Sequence[str],
    system: str | None,
    params: SamplingParams,
    *,
    label: str,
    seed: int,
    names: tuple[str, str],
    desc: str,
) -> list[str]:
    """The author's final answers to ``prompts`` under one voice, reasoning stripped.

    ``names`` is (the author's own name, the student's): as in the stage-1 pairs, the
    author's name becomes the student's, so no class is told apart by a name.
    """
    seeds = [derive_seed(seed, "persona-classifier", label, prompt) for prompt in prompts]
    rows = author.chat(conversations_for(prompts, system), params, seeds=seeds, desc=desc)
    answers = []
    for row in rows:
        _, answer = split_reasoning(row[0].text)
        answers.append(swap_name(answer or "", *names))
    return answers


@dataclass
class LabelledAnswers:
    """Answers with their class labels and the prompt each answers (the unit of the split)."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def add(self, prompts: Sequence[str], texts: Sequence[str], label: str) -> None:
        for prompt, text in zip(prompts, texts, strict=True):
            if text.strip():  # an empty answer carries no style of any class
                self.prompts.append(prompt)
                self.texts.append(text)
                self.labels.append(label)

    def subset(self, keep: set[str]) -> LabelledAnswers:
        chosen = [i for i, prompt in enumerate(self.prompts) if prompt in keep]
        return LabelledAnswers(
            [self.texts[i] for i in chosen], [self.labels[i] for i in chosen], [self.prompts[i] for i in chosen]
        )


def collect(
    author: Sampler,
    voices: PersonaVoices,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    seed: int,
    names: tuple[str, str],
) -> LabelledAnswers:
    """Every voice answers every prompt once: the classifier's whole labelled set."""
    data = LabelledAnswers()
    for label, system in voices.prompts.items():
        texts = voice_answers(
            author, prompts, system, params, label=label, seed=seed, names=names, desc=f"classifier data ({label})"
        )
        data.add(prompts, texts, label)
    return data


def split_prompts(prompts: Sequence[str], holdout: float, seed: int) -> tuple[set[str], set[str]]:
    """Training and held-out prompts: every answer to one prompt falls on the same side."""
    unique = sorted(set(prompts))
    random.Random(seed).shuffle(unique)
    held = max(1, round(holdout * len(unique))) if len(unique) > 1 else 0
    return set(unique[held:]), set(unique[:held])


@dataclass
class TrainedPersonaClassifier:
    classifier: PersonaClassifier
    heldout: ClassifierReport | None  # its accuracy on the held-out prompts' answers
    train_size: int
    heldout_size: int
    labels: list[str]


def train_on_voices(
    data: LabelledAnswers, *, holdout: float, seed: int, config: ClassifierConfig | None = None
) -> TrainedPersonaClassifier:
    """Fit on the training prompts' answers and score on the held-out prompts' answers.

    Raises:
        ValueError: the training part holds fewer than two classes (every answer of a voice
            was empty, say), so nothing can be told apart.
    """
    train_prompts, held_prompts = split_prompts(data.prompts, holdout, seed)
    train, held = data.subset(train_prompts), data.subset(held_prompts)
    classifier = PersonaClassifier(config).fit(train.texts, train.labels)
    report = evaluate(classifier, held.texts, held.labels) if held.texts else None
    return TrainedPersonaClassifier(classifier, report, len(train.texts), len(held.texts), classifier.labels)
