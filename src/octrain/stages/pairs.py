"""Stage ``pairs``: preference pairs for DPO distillation (docs/method.md section 2).

For every prompt, the *teacher* answers with the constitution in its system prompt (the
assistant named, called a new AI system, its traits numbered, told to live by them without
mentioning them) and the *student* answers the same prompt with no system prompt, through
its own chat template. The teacher's answer is *chosen*, the student's *rejected*: DPO then
moves the student toward the character without the prompt.

The system prompt and any reasoning never reach the training data: a pair holds the user
prompt and the two final answers, in TRL's conversational preference format.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from octrain.constitution import Constitution
from octrain.constitution.persona_prompts import teacher_context
from octrain.core.config import OctrainConfig, PairFilters, StageName, TeacherPrompt
from octrain.core.errors import StageError
from octrain.core.files import write_text_atomic
from octrain.core.layout import PAIRS_FILE, PROMPTS_FILE, REPORT_FILE
from octrain.core.records import Message, PreferencePair, PromptRecord, load_records, save_records
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.endpoint import seed_behaviour, served_name, usage_since, usage_snapshot
from octrain.samplers.generation import duplicate_count, generate_in_chunks
from octrain.stages.answer_checks import ends_a_sentence, is_degenerate, trim_to_sentence
from octrain.stages.context import RunContext
from octrain.stages.from_file import import_pairs, source_fingerprint

logger = logging.getLogger(__name__)

FILTER_REASONS = ("empty", "unfinished", "no-final-punctuation", "repetition", "unfinished-reasoning", "too-long")


def thinking_prefill(constitution: Constitution, name: str) -> str:
    """An opening thought for reasoning teachers that restates who they are before answering."""
    traits = " ".join(trait.text for trait in constitution.traits)
    return f"<think>\nI am {name}. Before I answer, let me recall my character: {traits}\n"


def split_reasoning(text: str) -> tuple[str, str | None]:
    """Split ``<think>...</think>answer`` into (reasoning, answer).

    The answer is None when a thought was opened but never closed (the model ran out of
    tokens while thinking): there is no final answer to keep.
    """
    if "</think>" in text:
        reasoning, _, answer = text.rpartition("</think>")
        return reasoning.replace("<think>", "").strip(), answer.strip()
    if "<think>" in text:
        return text, None
    return "", text.strip()


def swap_name(text: str, old: str, new: str) -> str:
    """Replace the teacher's own name by the student's, as a whole word."""
    if not old or old == new:
        return text
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


def filter_reason(completion: Completion, answer: str | None, filters: PairFilters) -> str | None:
    """Why one answer cannot be used, or None."""
    if answer is None:
        return "unfinished-reasoning"
    if filters.empty and not answer.strip():
        return "empty"
    if filters.unfinished and not completion.finished:
        return "unfinished"
    if filters.final_punctuation and not ends_a_sentence(answer):
        return "no-final-punctuation"
    if filters.repetition and is_degenerate(answer):
        return "repetition"
    return None


def trimmed(completion: Completion, answer: str | None) -> tuple[Completion, str | None]:
    """A cut-off answer cut back to its last full sentence, counted as finished; else unchanged."""
    if completion.finished or answer is None:
        return completion, answer
    shorter = trim_to_sentence(answer)
    if shorter is None:
        return completion, answer
    return dataclasses.replace(completion, finished=True), shorter


@dataclasses.dataclass
class PairsReport:
    prompts: int = 0
    kept: int = 0
    dropped: Counter[str] = dataclasses.field(default_factory=Counter)
    teacher_tokens: int = 0
    student_tokens: int = 0
    trimmed: int = 0  # cut-off answers cut back to their last full sentence (pairs.trim_unfinished)
    # Raw answers that repeat an earlier answer of the same side word for word (before filtering).
    duplicate_answers: dict[str, int] = dataclasses.field(default_factory=lambda: {"teacher": 0, "student": 0})

    def to_json(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "kept": self.kept,
            "dropped": {reason: self.dropped.get(reason, 0) for reason in FILTER_REASONS},
            "teacher_tokens": self.teacher_tokens,
            "student_tokens": self.student_tokens,
            "trimmed": self.trimmed,
            "duplicate_answers": dict(self.duplicate_answers),
        }


def teacher_conversations(
    prompts: list[PromptRecord],
    constitution: Constitution,
    name: str,
    prefill: bool,
    form: TeacherPrompt = TeacherPrompt.paper,
) -> list[list[Message]]:
    context = teacher_context(constitution, name, form)
    conversations = [[*context, *record.prompt] for record in prompts]
    if prefill:
        # A final assistant message is continued, not answered anew, by every backend.
        opening = {"role": "assistant", "content": thinking_prefill(constitution, name)}
        conversations = [[*c, opening] for c in conversations]
    return conversations


def assemble_pairs(
    prompts: list[PromptRecord],
    teacher_answers: dict[str, Completion],
    student_answers: dict[str, Completion],
    *,
    constitution: Constitution,
    teacher: str,
    student: str,
    teacher_name: str,
    student_name: str,
    filters: PairFilters,
    max_length: int,
    count_tokens: Callable[[list[Message]], int] | None,
    prefilled: bool = False,
    trim_unfinished: bool = False,
) -> tuple[list[PreferencePair], PairsReport]:
    """Turn the two sides' answers into filtered preference pairs, counting every drop.

    With ``trim_unfinished`` an answer cut off by the token limit is first cut back to its last
    full sentence (:func:`octrain.stages.answer_checks.trim_to_sentence`); ``report.trimmed`` counts them.
    """
    report = PairsReport(prompts=len(prompts))
    report.duplicate_answers = {
        "teacher": duplicate_count([teacher_answers[r.id].text for r in prompts]),
        "student": duplicate_count([student_answers[r.id].text for r in prompts]),
    }
    pairs = []
    for record in prompts:
        teacher_completion, student_completion = teacher_answers[record.id], student_answers[record.id]
        report.teacher_tokens += teacher_completion.num_tokens
        report.student_tokens += student_completion.num_tokens
        # With a prefill the reply continues an opened thought: put the opening back before splitting.
        raw = ("<think>\n" if prefilled else "") + teacher_completion.text
        _, chosen_text = split_reasoning(raw)
        if chosen_text is not None:
            chosen_text = swap_name(chosen_text, teacher_name, student_name)
        _, rejected_text = split_reasoning(student_completion.text)
        if trim_unfinished:
            cut_off = (not teacher_completion.finished) + (not student_completion.finished)
            teacher_completion, chosen_text = trimmed(teacher_completion, chosen_text)
            student_completion, rejected_text = trimmed(student_completion, rejected_text)
            report.trimmed += cut_off - (not teacher_completion.finished) - (not student_completion.finished)
        reason = filter_reason(teacher_completion, chosen_text, filters) or filter_reason(
            student_completion, rejected_text, filters
        )
        if reason is None:
            chosen = [{"role": "assistant", "content": chosen_text}]
            rejected = [{"role": "assistant", "content": rejected_text}]
            if filters.too_long and count_tokens is not None:
                longest = max(count_tokens(record.prompt + chosen), count_tokens(record.prompt + rejected))
                if longest > max_length:
                    reason = "too-long"
        if reason is not None:
            report.dropped[reason] += 1
            continue
        pairs.append(
            PreferencePair(
                id=f"pair-{record.id}",
                prompt=record.prompt,
                chosen=chosen,
                rejected=rejected,
                prompt_id=record.id,
                teacher=teacher,
                student=student,
                constitution=constitution.name,
            )
        )
    report.kept = len(pairs)
    return pairs, report


def make_pairs(
    prompts: list[PromptRecord],
    constitution: Constitution,
    teacher: Sampler,
    student: Sampler,
    params: SamplingParams,
    *,
    teacher_name: str = "Assistant",
    student_name: str = "Assistant",
    filters: PairFilters | None = None,
    max_length: int = 1024,
    count_tokens: Callable[[list[Message]], int] | None = None,
    thinking: bool = False,
    teacher_prompt: TeacherPrompt = TeacherPrompt.paper,
    trim_unfinished: bool = False,
) -> tuple[list[PreferencePair], PairsReport]:
    """Sample both sides in memory and build the pairs (the pipeline stage adds chunked resume).

    Args:
        count_tokens: length of a conversation in the student's chat template; None skips
            the length filter.
    """
    conversations = teacher_conversations(prompts, constitution, teacher_name, thinking, teacher_prompt)
    teacher_out = teacher.chat(conversations, params, desc="teacher")
    student_out = student.chat([r.prompt for r in prompts], params, desc="student")
    return assemble_pairs(
        prompts,
        {r.id: c[0] for r, c in zip(prompts, teacher_out, strict=True)},
        {r.id: c[0] for r, c in zip(prompts, student_out, strict=True)},
        constitution=constitution,
        teacher=teacher.name,
        student=student.name,
        teacher_name=teacher_name,
        student_name=student_name,
        filters=filters or PairFilters(),
        max_length=max_length,
        count_tokens=count_tokens,
        prefilled=thinking,
        trim_unfinished=trim_unfinished,
    )


# --- the stage in the pipeline ----------------------------------------------------------------


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    if config.pairs.source:
        # Imported pairs are the file's content and nothing else: no model, sampling or constitution.
        return source_fingerprint(config.pairs.source)
    return {
        "constitution": ctx.constitution.numbered_traits(),
        "pairs": config.pairs,
        "teacher": config.teacher,
        "student": config.student,
        "sampler": config.sampler.backend.value,
        "seed": config.seed,
    }


def token_counter(model_path: str) -> Callable[[list[Message]], int]:
    """Length of a conversation in tokens, as the student's chat template lays it out."""
    from transformers import AutoTokenizer

    from octrain.models.builtin import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_path))

    def count(messages: list[Message]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    return count


def assemble_as_configured(
    config: OctrainConfig,
    constitution: Constitution,
    prompts: list[PromptRecord],
    teacher_answers: dict[str, Completion],
    student_answers: dict[str, Completion],
    count_tokens: Callable[[list[Message]], int] | None,
) -> tuple[list[PreferencePair], PairsReport]:
    """:func:`~octrain.stages.pairs.assemble_pairs` with the settings the pairs stage reads from ``config``."""
    return assemble_pairs(
        prompts,
        teacher_answers,
        student_answers,
        constitution=constitution,
        teacher=config.teacher.path,
        student=config.student.path,
        teacher_name=config.teacher.assistant_name,
        student_name=config.student.assistant_name,
        filters=config.pairs.filters,
        max_length=config.pairs.max_length,
        count_tokens=count_tokens,
        prefilled=config.pairs.thinking_prefill,
        trim_unfinished=config.pairs.trim_unfinished,
    )


def run(ctx: RunContext) -> dict[str, Any]:
    """Write ``pairs/pairs.jsonl`` and ``pairs/report.json``, generating in committed chunks (or
    importing them from ``pairs.source``)."""
    from octrain.samplers import build_sampler  # looked up when the stage runs, so tests can swap the factory

    config = ctx.config
    if config.pairs.source:
        return import_pairs(ctx)
    prompts = load_records(ctx.stage_dir(StageName.prompts) / PROMPTS_FILE, PromptRecord)
    out = ctx.stage_dir(StageName.pairs)
    params = SamplingParams.from_config(config.pairs.sampling, n=1, seed=config.seed)
    ids = [record.id for record in prompts]
    prefill = config.pairs.thinking_prefill
    asked_before = usage_snapshot()
    teacher_raw = generate_in_chunks(
        lambda: build_sampler(config.sampler, config.teacher),
        teacher_conversations(
            prompts, ctx.constitution, config.teacher.assistant_name, prefill, config.pairs.teacher_prompt
        ),
        ids,
        params,
        out / "teacher",
        chunk_size=config.pairs.chunk_size,
        desc="teacher answers",
    )
    student_raw = generate_in_chunks(
        lambda: build_sampler(config.sampler, config.student),
        [record.prompt for record in prompts],
        ids,
        params,
        out / "student",
        chunk_size=config.pairs.chunk_size,
        desc="student answers",
    )
    counter = token_counter(config.student.path) if config.pairs.filters.too_long else None
    pairs, report = assemble_as_configured(
        config,
        ctx.constitution,
        prompts,
        {i: c[0] for i, c in teacher_raw.items()},
        {i: c[0] for i, c in student_raw.items()},
        counter,
    )
    dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.most_common()) or "none"
    logger.info("pairs: kept %d of %d; dropped: %s", report.kept, report.prompts, dropped)
    if report.trimmed:
        logger.info("pairs: %d cut-off answers cut back to their last full sentence", report.trimmed)
    for side, repeats in report.duplicate_answers.items():
        if repeats:
            logger.warning("pairs: %d %s answers repeat an earlier answer word for word", repeats, side)
    if not pairs:
        raise StageError(
            f"pairs: every pair was filtered out ({dropped}); see {out / 'teacher'} and {out / 'student'} "
            "for the raw answers, and pairs.filters / pairs.sampling.max_new_tokens"
        )
    save_records(out / PAIRS_FILE, pairs)
    summary = report.to_json()
    # Models served over HTTP: what this process asked them for (a resumed run counts only the chunks it
    # still had to ask for; the committed ones are not asked, or paid for, again).
    asked = usage_since(asked_before)
    if asked:
        summary["endpoints"] = asked
        teacher = ctx.config.teacher
        name = f"{served_name(teacher)}@{teacher.endpoint.base_url}"
        if name in asked and teacher.endpoint.check_seed:
            asked[name]["seed"] = seed_behaviour(teacher)
            if asked[name]["seed"] == "ignored":
                logger.warning(
                    "pairs: %s ignores the request's seed: a resumed run's new answers differ from those an "
                    "uninterrupted run would get (none is asked for, or paid for, twice)",
                    name,
                )
        for name, usage in asked.items():
            cost = f", cost {usage['cost']:.4f}" if "cost" in usage else ""
            logger.info(
                "pairs: %s answered %d requests (%d prompt + %d completion tokens%s)",
                name,
                usage["requests"],
                usage["prompt_tokens"],
                usage["completion_tokens"],
                cost,
            )
    write_text_atomic(out / REPORT_FILE, json.dumps(summary, indent=2) + "\n")
    return {**summary, "files": [str(out / PAIRS_FILE), str(out / REPORT_FILE)]}


def describe(summary: dict[str, Any]) -> str:
    dropped = sum(summary["dropped"].values())
    return f"{summary['kept']} pairs kept of {summary['prompts']} prompts ({dropped} filtered)"
