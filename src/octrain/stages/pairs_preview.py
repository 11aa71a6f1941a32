"""A preview of the pairs stage: a few prompts, both sides' answers, and the stage's verdict on each pair.

Before anyone commits to a run, a front end (the studio's data preview page) shows what the pairs
stage would make of a config. :func:`preview_pairs` does what the stage does, on a handful of
prompts:

* the prompts are the prompts stage's own (:func:`octrain.stages.prompts.make_prompts`), one a
  trait, spread over the traits (or the prompts a caller passes);
* the teacher reads its constitution prompt (:func:`octrain.stages.pairs.teacher_conversations`),
  the student only the prompt, both through :func:`octrain.samplers.build_sampler` with the
  stage's sampling and the seed the stage gives each prompt's id
  (:func:`octrain.samplers.generation.item_seeds`): a preview draws what a run of the config draws;
* each pair goes through the stage's filters (:func:`octrain.stages.pairs.assemble_as_configured`, the
  stage's own call), the length filter
  included, with the student's tokenizer. Each prompt is assembled on its own, so that it keeps
  its own verdict: "kept", or the filter that drops it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from octrain.constitution import Constitution
from octrain.constitution.catalog import resolve_constitution_name
from octrain.core.config import OctrainConfig
from octrain.core.records import Message, PreferencePair, PromptRecord
from octrain.samplers.base import Completion, SamplingParams
from octrain.samplers.generation import item_seeds
from octrain.stages.pairs import assemble_as_configured, teacher_conversations, token_counter
from octrain.stages.prompts import make_prompts

# Told (units done, units in all) after each unit of work: the prompts, each side's model load,
# each answer, and the student's tokenizer when the length filter is on.
ProgressCallback = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class PairPreview:
    """One previewed prompt: both answers, the filters' verdict, and the pair the stage would write."""

    prompt_id: str
    prompt: str  # the user's message
    trait: int | None  # the trait the prompt was written for (1-based), None for a generic prompt
    teacher: str  # the teacher's answer as it wrote it
    student: str  # the student's answer as it wrote it
    verdict: str  # "kept", or the reasons the filters drop the pair
    pair: PreferencePair | None = None  # None when the filters drop it


def preview_prompts(
    config: OctrainConfig, constitution: Constitution, count: int, report: Callable[[str], None]
) -> list[PromptRecord]:
    """Up to ``count`` prompts as the prompts stage writes them, one a trait, spread over the traits.

    A trait's prompt is its seed question where it has one; a trait with none (the identity, the
    voice) gets one from the stage's own generator model (``prompts.generator``).
    """
    from octrain.samplers import build_sampler  # the samplers' backends load only when a preview runs

    generator = config.model(config.prompts.generator)
    report(f"loading the prompt generator ({generator.path})...")
    scale = dataclasses.replace(config.scale, prompts_per_trait=1, generic_prompts=0, samples_per_prompt=1)
    writer = build_sampler(config.sampler, generator, show_progress=False)
    records, _ = make_prompts(constitution, writer, scale, config.prompts, seed=config.seed)
    # Every step-th trait's prompt: spread over the traits rather than the first few only.
    step = max(1, len(records) // max(1, count))
    return records[::step][:count]


def preview_pairs(
    config: OctrainConfig,
    count: int = 4,
    *,
    prompts: Sequence[PromptRecord] | None = None,
    constitution: Constitution | None = None,
    report: Callable[[str], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[PairPreview]:
    """``count`` prompts answered by the config's teacher and student, each with the pairs filters' verdict.

    Args:
        config: the run's config; its teacher, student, sampler and ``pairs`` settings apply.
        count: how many prompts (see :func:`preview_prompts`); ignored when ``prompts`` is given.
        prompts: preview these prompts instead (as the prompts stage wrote them).
        constitution: the persona (default: the one ``config.constitution`` names).
        report: hears a line per step ("loading the teacher ...").
        on_progress: hears (units done, units in all) after each unit of work.
    """
    from octrain.samplers import build_sampler  # the samplers' backends load only when a preview runs

    constitution = constitution or resolve_constitution_name(config.constitution)
    say = report or (lambda _line: None)
    planned = count if prompts is None else len(prompts)
    too_long = config.pairs.filters.too_long
    done, total = 0, 1 + 2 * (1 + planned) + (1 if too_long else 0)

    def advance() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    records = list(prompts) if prompts is not None else preview_prompts(config, constitution, count, say)
    total -= 2 * (planned - len(records))  # fewer traits than prompts asked for
    advance()
    params = SamplingParams.from_config(config.pairs.sampling, n=1, seed=config.seed)

    def answer(side: str, model: Any, conversations: list[list[Message]]) -> dict[str, Completion]:
        say(f"loading the {side} ({model.path})...")
        # Not closed here: the engine pool keeps one model loaded, and the caller releases it.
        sampler = build_sampler(config.sampler, model, show_progress=False)
        advance()
        say(f"the {side} answers {len(records)} prompts...")
        answers = {}
        for record, conversation in zip(records, conversations, strict=True):
            # One prompt a call, for the progress; its seed is the one the stage gives that id.
            seeds = item_seeds(params, [record.id])
            answers[record.id] = sampler.chat([conversation], params, seeds=seeds, progress=False)[0][0]
            advance()
        return answers

    conversations = teacher_conversations(
        records, constitution, config.teacher.assistant_name, config.pairs.thinking_prefill, config.pairs.teacher_prompt
    )
    teacher = answer("teacher", config.teacher, conversations)
    student = answer("student", config.student, [record.prompt for record in records])
    counter = None
    if too_long:
        say(f"loading the student's tokenizer for the length filter ({config.student.path})...")
        counter = token_counter(config.student.path)
        advance()
    previews = []
    for record in records:
        pairs, pair_report = assemble_as_configured(
            config, constitution, [record], {record.id: teacher[record.id]}, {record.id: student[record.id]}, counter
        )
        verdict = "kept" if pairs else ", ".join(pair_report.dropped) or "dropped"
        previews.append(
            PairPreview(
                prompt_id=record.id,
                prompt=record.prompt[-1]["content"],
                trait=record.trait,
                teacher=teacher[record.id].text,
                student=student[record.id].text,
                verdict=verdict,
                pair=pairs[0] if pairs else None,
            )
        )
    return previews
