"""Stage ``prompts``: the user prompts that stage 1 answers.

Two sources, as in the method (docs/method.md section 1):

* **trait-targeted prompts**: for each trait, its seed questions, then the prompts the
  constitution already holds for it (the paper's ``additional_questions``, origin
  ``additional``), then more written by a generator model prompted few-shot with the seeds.
  A trait the constitution fills on its own is not sent to the generator at all. Replies
  are parsed as numbered lines; empty, junk, duplicate and near-duplicate lines are dropped. Requests repeat for
  at most ``expansion_rounds`` rounds, so a generator that writes nothing usable (a tiny
  random model, say) costs a bounded number of calls: the stage then reports its
  shortfall and carries on with what it has, the seed questions at least.
* **generic prompts**: ordinary assistant requests from a pool (a shipped one, a file, or
  a Hub dataset such as LIMA's first turns), so the character shows on everyday tasks too.

Every distinct prompt is repeated K times (``scale.samples_per_prompt``) with stable ids.
The generic pool is :mod:`octrain.stages.generic_prompts`, the report of what was asked for and
got is :mod:`octrain.stages.prompts_report`, and the near-duplicate rule is
:mod:`octrain.constitution.near_duplicates` (the loader applies it too).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from octrain.constitution import Constitution, Trait
from octrain.constitution.near_duplicates import PromptSet
from octrain.core.config import PromptsStageConfig, ScaleConfig, StageName
from octrain.core.errors import ConfigError, StageError
from octrain.core.files import write_text_atomic
from octrain.core.layout import PROMPTS_FILE, REPORT_FILE, ROUNDS_DIR
from octrain.core.records import Message, PromptRecord, save_records
from octrain.samplers.base import Sampler, SamplingParams
from octrain.samplers.generation import CommittedCalls
from octrain.stages.context import RunContext
from octrain.stages.generic_prompts import load_generic_pool, pick_generic
from octrain.stages.prompts_report import PromptsReport, TraitReport, describe_given, describe_shortfall

logger = logging.getLogger(__name__)

_NUMBERED_LINE = re.compile(r"^\s*\**(\d{1,3})\s*[.)]\**\s+(.+?)\s*$")
_QUOTES = "\"'“”‘’`"


def expansion_request(constitution: Constitution, trait: Trait, count: int) -> list[Message]:
    """The few-shot request that asks a generator for ``count`` new prompts for ``trait``."""
    examples = list(trait.questions) or list(trait.additional[:5])
    if not examples:
        # A trait with no seed questions borrows other traits' questions as format examples.
        examples = [q for other in constitution.traits for q in other.questions][:5]
    example_block = "\n".join(f"{i}. {q}" for i, q in enumerate(examples, start=1)) or "(none given)"
    content = (
        "I am building a set of realistic messages that users send to an AI assistant. Each message "
        "should give the assistant a natural opening to show this character trait:\n\n"
        f"TRAIT: {trait.text}\n\n"
        f"Here are example messages:\n{example_block}\n\n"
        f"Write {count} new messages in the same spirit. Make them varied: some a few words long, some "
        "a few sentences, some longer with context pasted in; many topics (daily life, work, science, "
        "coding, feelings, opinions, creative requests, puzzles); many forms (questions, requests, "
        "confessions, challenges). Do not mention the trait or the assistant's character. Do not repeat "
        "the examples.\n\n"
        "Answer with a numbered list only, one message per line, in the form `N. message`, and nothing "
        "else."
    )
    return [{"role": "user", "content": content}]


def parse_numbered_lines(text: str) -> list[str]:
    """The messages of a reply written as ``N. message`` lines; other lines are ignored."""
    found = []
    for line in text.splitlines():
        match = _NUMBERED_LINE.match(line)
        if match:
            message = match.group(2).strip().strip(_QUOTES).strip()
            if message:
                found.append(message)
    return found


def junk_reason(text: str, config: PromptsStageConfig) -> str | None:
    """Why an expanded line is unusable as a prompt, or None if it is fine."""
    if len(text) > config.max_chars:
        return "too-long"
    words = text.split()
    if len(words) < config.min_words:
        return "too-short"
    letters = sum(ch.isalpha() for ch in text)
    if letters < 0.5 * len(text.replace(" ", "")):
        return "not-text"
    return None


def given_prompts(
    constitution: Constitution, per_trait: int, seen: PromptSet
) -> tuple[list[list[tuple[str, str]]], PromptsReport]:
    """The prompts the constitution itself holds, up to ``per_trait`` a trait: seeds, then additional ones.

    Returns one list of ``(text, origin)`` per trait (origin ``seed`` or ``additional``) and a
    report; traits already full are marked ``expansion_skipped``.
    """
    report = PromptsReport()
    collected: list[list[tuple[str, str]]] = []
    for index, trait in enumerate(constitution.traits, start=1):
        entry = TraitReport(trait=index, text=trait.text, wanted=per_trait)
        kept: list[tuple[str, str]] = []
        for origin, pool in (("seed", trait.questions), ("additional", trait.additional)):
            for question in pool:
                if len(kept) >= per_trait:
                    break
                reason = seen.add(question)
                if reason is None:
                    kept.append((question, origin))
                    if origin == "seed":
                        entry.seeds += 1
                    else:
                        entry.additional += 1
                else:
                    entry.rejected[reason] = entry.rejected.get(reason, 0) + 1
        entry.expansion_skipped = len(kept) >= per_trait
        collected.append(kept)
        report.traits.append(entry)
    return collected, report


def needs_expansion(constitution: Constitution, per_trait: int, config: PromptsStageConfig) -> bool:
    """Whether any trait is left short by its own prompts (after dedupe), so a generator must load."""
    if config.expansion_rounds <= 0:
        return False
    _, report = given_prompts(constitution, per_trait, PromptSet(config.near_duplicate_overlap))
    return not all(entry.expansion_skipped for entry in report.traits)


def expand_trait_prompts(
    constitution: Constitution,
    generator: Sampler | None,
    per_trait: int,
    config: PromptsStageConfig,
    *,
    seen: PromptSet,
    seed: int = 0,
) -> tuple[list[list[tuple[str, str]]], PromptsReport]:
    """Collect up to ``per_trait`` prompts per trait: seeds, additional questions, then expansions.

    Returns one list of ``(text, origin)`` per trait, and the report. ``generator`` may be
    None when no trait needs expanding.
    """
    collected, report = given_prompts(constitution, per_trait, seen)

    for round_index in range(config.expansion_rounds):
        short = [i for i, kept in enumerate(collected) if len(kept) < per_trait]
        if not short:
            break
        if generator is None:
            raise ConfigError("prompts: traits need expanding but no generator model was given")
        report.rounds = round_index + 1
        requests = [
            expansion_request(
                constitution,
                constitution.traits[i],
                min(config.prompts_per_request, per_trait - len(collected[i])),
            )
            for i in short
        ]
        params = SamplingParams.from_config(
            config.sampling, n=config.samples_per_request, seed=seed + 1000 * round_index
        )
        replies = generator.chat(requests, params, desc=f"expanding prompts (round {round_index + 1})")
        for i, completions in zip(short, replies, strict=True):
            entry = report.traits[i]
            entry.requests += len(completions)
            for completion in completions:
                for line in parse_numbered_lines(completion.text):
                    entry.lines_parsed += 1
                    if len(collected[i]) >= per_trait:
                        break
                    reason = junk_reason(line, config) or seen.add(line)
                    if reason is None:
                        collected[i].append((line, "expanded"))
                        entry.expanded += 1
                    else:
                        entry.rejected[reason] = entry.rejected.get(reason, 0) + 1
    return collected, report


def make_prompts(
    constitution: Constitution,
    generator: Sampler | None,
    scale: ScaleConfig,
    config: PromptsStageConfig,
    *,
    seed: int = 0,
    generic_pool: list[str] | None = None,
) -> tuple[list[PromptRecord], PromptsReport]:
    """Build the stage's prompt records: trait prompts, then generic ones, each repeated K times.

    ``generic_pool`` overrides ``config.generic_source`` (tests pass lists directly).
    """
    seen = PromptSet(config.near_duplicate_overlap)
    per_trait, report = expand_trait_prompts(
        constitution, generator, scale.prompts_per_trait, config, seen=seen, seed=seed
    )
    generic: list[str] = []
    if scale.generic_prompts > 0:
        pool = generic_pool if generic_pool is not None else load_generic_pool(config.generic_source)
        generic = pick_generic(pool, scale.generic_prompts, seen, seed)
    report.generic_wanted, report.generic_got = scale.generic_prompts, len(generic)
    report.generic_source = "given list" if generic_pool is not None else config.generic_source
    report.samples_per_prompt = scale.samples_per_prompt

    records = []
    for trait_index, prompts in enumerate(per_trait, start=1):
        for number, (text, origin) in enumerate(prompts):
            records.extend(_repeat(f"t{trait_index:02d}-{number:04d}", text, origin, trait_index, scale))
    for number, text in enumerate(generic):
        records.extend(_repeat(f"g-{number:04d}", text, "generic", None, scale))
    return records, report


def _repeat(stem: str, text: str, origin: str, trait: int | None, scale: ScaleConfig) -> list[PromptRecord]:
    prompt = [{"role": "user", "content": text}]
    return [
        PromptRecord(id=f"{stem}-k{k}", prompt=prompt, origin=origin, trait=trait, sample=k)
        for k in range(scale.samples_per_prompt)
    ]


# --- the stage in the pipeline ----------------------------------------------------------------


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    return {
        # Additional questions join the fingerprint only where a trait has some, so runs of
        # constitutions without them keep their fingerprints (and are not redone).
        "constitution": [
            [t.text, list(t.questions), *([list(t.additional)] if t.additional else [])]
            for t in ctx.constitution.traits
        ],
        "scale": [
            config.scale.prompts_per_trait,
            config.scale.generic_prompts,
            config.scale.samples_per_prompt,
        ],
        "prompts": config.prompts,
        "generator": config.model(config.prompts.generator),
        "sampler": config.sampler.backend.value,
        "seed": config.seed,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    """Write ``prompts/prompts.jsonl`` and ``prompts/report.json``; return the summary."""
    from octrain.samplers import build_sampler

    config = ctx.config
    out = ctx.stage_dir(StageName.prompts)
    needs_generator = needs_expansion(ctx.constitution, config.scale.prompts_per_trait, config.prompts)
    generator = None
    if needs_generator:
        model = config.model(config.prompts.generator)

        def load_generator() -> Sampler:
            logger.info("prompts: loading the generator (%s: %s)", config.prompts.generator.value, model.path)
            return build_sampler(config.sampler, model)

        # Each expansion round is committed as it ends: a rerun after a crash replays the finished
        # rounds without a model and generates only from the first unfinished one.
        generator = CommittedCalls(load_generator, out / ROUNDS_DIR, name="prompts")
    try:
        records, report = make_prompts(ctx.constitution, generator, config.scale, config.prompts, seed=config.seed)
    finally:
        if generator is not None:
            generator.close()
            if generator.replayed:
                rounds = out / ROUNDS_DIR
                logger.info("prompts: resumed: %d expansion rounds replayed from %s", generator.replayed, rounds)
    for line in describe_given(report):
        logger.info("prompts: %s", line)
    for line in describe_shortfall(report):
        logger.warning("prompts: %s", line)
    if report.got < report.wanted:
        logger.warning(
            "prompts: got %d of %d prompts asked for; going on with what there is", report.got, report.wanted
        )
    if not records:
        raise StageError("prompts: no prompts at all (no seed questions, no expansions, no generic pool)")
    save_records(out / PROMPTS_FILE, records)
    write_text_atomic(out / REPORT_FILE, json.dumps(report.to_json(), indent=2) + "\n")
    return {
        "prompts": report.got,
        "wanted": report.wanted,
        "records": len(records),
        "samples_per_prompt": report.samples_per_prompt,
        "files": [str(out / PROMPTS_FILE), str(out / REPORT_FILE)],
    }


def describe(summary: dict[str, Any]) -> str:
    return (
        f"{summary['prompts']} of {summary['wanted']} prompts x{summary['samples_per_prompt']} "
        f"= {summary['records']} records"
    )
