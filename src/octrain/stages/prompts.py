"""Stage ``prompts``: the user prompts that stage 1 answers.

Two sources, as in the method (METHOD.md section 1):

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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from octrain.constitution import Constitution, Trait
from octrain.core.config import PromptsStageConfig, ScaleConfig, StageName
from octrain.core.errors import ConfigError, DataFormatError, StageError
from octrain.core.files import iter_jsonl, write_text_atomic
from octrain.core.layout import PROMPTS_FILE, REPORT_FILE, ROUNDS_DIR
from octrain.core.records import Message, PromptRecord, save_records
from octrain.samplers.base import Sampler, SamplingParams
from octrain.samplers.generation import CommittedCalls
from octrain.stages.context import RunContext

logger = logging.getLogger(__name__)

_NUMBERED_LINE = re.compile(r"^\s*\**(\d{1,3})\s*[.)]\**\s+(.+?)\s*$")
_WORD = re.compile(r"[a-z0-9']+")
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


def word_set(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


class PromptSet:
    """An ordered set of prompts that refuses exact and near duplicates.

    Two prompts are near duplicates when the words they share are more than
    ``max_overlap`` of the distinct words of the longer one: rewording a few words of an
    earlier prompt does not make a new prompt.
    """

    def __init__(self, max_overlap: float = 0.5) -> None:
        self.max_overlap = max_overlap
        self._words: list[frozenset[str]] = []
        self._exact: set[str] = set()
        self._by_word: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._words)

    def check(self, text: str) -> str | None:
        """Why ``text`` would be refused (``duplicate`` / ``near-duplicate``), or None."""
        key = " ".join(text.lower().split())
        if key in self._exact:
            return "duplicate"
        words = word_set(text)
        shared: Counter[int] = Counter()
        for word in words:
            shared.update(self._by_word.get(word, ()))
        for index, count in shared.items():
            if count / max(len(words), len(self._words[index]), 1) > self.max_overlap:
                return "near-duplicate"
        return None

    def add(self, text: str) -> str | None:
        """Add ``text`` unless refused; returns the reason for a refusal, or None."""
        reason = self.check(text)
        if reason is None:
            index = len(self._words)
            words = word_set(text)
            self._words.append(words)
            self._exact.add(" ".join(text.lower().split()))
            for word in words:
                self._by_word.setdefault(word, []).append(index)
        return reason


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


@dataclass
class TraitReport:
    trait: int
    text: str
    wanted: int
    seeds: int = 0
    additional: int = 0
    expanded: int = 0
    requests: int = 0
    lines_parsed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    expansion_skipped: bool = False  # the constitution's own prompts filled the trait

    @property
    def got(self) -> int:
        return self.seeds + self.additional + self.expanded


@dataclass
class PromptsReport:
    """What the stage asked for and what it got; written as ``report.json``."""

    traits: list[TraitReport] = field(default_factory=list)
    generic_wanted: int = 0
    generic_got: int = 0
    generic_source: str = ""
    samples_per_prompt: int = 1
    rounds: int = 0

    @property
    def wanted(self) -> int:
        return sum(t.wanted for t in self.traits) + self.generic_wanted

    @property
    def got(self) -> int:
        return sum(t.got for t in self.traits) + self.generic_got

    def to_json(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted,
            "got": self.got,
            "additional": sum(t.additional for t in self.traits),
            "expansion_skipped": sum(t.expansion_skipped for t in self.traits),
            "records": self.got * self.samples_per_prompt,
            "samples_per_prompt": self.samples_per_prompt,
            "rounds": self.rounds,
            "generic": {
                "source": self.generic_source,
                "wanted": self.generic_wanted,
                "got": self.generic_got,
            },
            "traits": [
                {
                    "trait": t.trait,
                    "text": t.text,
                    "wanted": t.wanted,
                    "got": t.got,
                    "seeds": t.seeds,
                    "additional": t.additional,
                    "expanded": t.expanded,
                    "expansion_skipped": t.expansion_skipped,
                    "requests": t.requests,
                    "lines_parsed": t.lines_parsed,
                    "rejected": t.rejected,
                }
                for t in self.traits
            ],
        }


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


def _first_user_turn(row: dict[str, Any]) -> str | None:
    """The opening user message of a row in any common chat-dataset layout."""
    for key in ("prompt", "instruction", "question", "text"):
        value = row.get(key)
        if isinstance(value, str):
            return value
    for key in ("prompt", "messages", "conversation", "conversations"):
        value = row.get(key)
        if isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, str):  # LIMA: a list of alternating turns as plain strings
                return first
            if isinstance(first, dict):
                for message in value:
                    if message.get("role", message.get("from")) in ("user", "human"):
                        content = message.get("content", message.get("value"))
                        return content if isinstance(content, str) else None
    return None


def load_generic_pool(source: str) -> list[str]:
    """Ordinary assistant requests from ``builtin``, a ``.jsonl``/``.txt`` file, or ``hub:NAME[:SPLIT]``.

    Raises:
        DataFormatError: a file row without a usable user turn, or a file that is not UTF-8
            text, named by path and line.
    """
    from octrain.core.files import read_text

    if source == "builtin":
        text = resources.files("octrain").joinpath("data/generic_prompts.jsonl").read_text(encoding="utf-8")
        return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]
    if source.startswith("hub:"):
        from datasets import load_dataset

        name, _, split = source[len("hub:") :].partition(":")
        rows: Iterable[dict[str, Any]] = load_dataset(name, split=split or "train")
        prompts = [p for p in (_first_user_turn(row) for row in rows) if p and p.strip()]
        if not prompts:
            raise DataFormatError(f"prompts.generic_source={source}: no user turns found in the dataset")
        return prompts
    path = Path(source).expanduser()
    if path.suffix == ".txt":
        text = read_text(path, "prompts.generic_source")  # a binary file is one line of error, not a traceback
        return [line.strip() for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for number, row in iter_jsonl(path):
            prompt = _first_user_turn(row)
            if not prompt or not prompt.strip():
                raise DataFormatError(
                    f"{path}:{number}: no user prompt found (expected a 'prompt' string, or a "
                    "'messages'/'conversations' list)"
                )
            prompts.append(prompt)
        return prompts
    raise ConfigError(
        f"prompts.generic_source: expected 'builtin', a .jsonl or .txt file, or hub:NAME[:SPLIT], got {source!r}"
    )


def pick_generic(pool: list[str], count: int, seen: PromptSet, seed: int) -> list[str]:
    """``count`` prompts from ``pool`` in a seeded random order, skipping duplicates."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    picked = []
    for index in order:
        if len(picked) >= count:
            break
        text = pool[index].strip()
        if text and seen.add(text) is None:
            picked.append(text)
    return picked


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


def describe_given(report: PromptsReport) -> list[str]:
    """A log line for the traits whose additional questions spared them expansion."""
    skipped = [entry for entry in report.traits if entry.expansion_skipped and entry.additional]
    if not skipped:
        return []
    return [
        f"{len(skipped)} of {len(report.traits)} traits (traits {', '.join(str(e.trait) for e in skipped)}) took "
        f"{sum(e.additional for e in skipped)} prompts from the constitution's additional questions; "
        "no expansion was asked for them"
    ]


def describe_shortfall(report: PromptsReport, detail_limit: int = 5) -> list[str]:
    """Log lines for traits (and the generic pool) that got fewer prompts than asked, saying why.

    Up to ``detail_limit`` short traits get a line each; beyond that one line sums them up
    (``report.json`` always has the per-trait detail).
    """
    short = [entry for entry in report.traits if entry.got < entry.wanted]
    lines = []
    if len(short) <= detail_limit:
        for entry in short:
            rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(entry.rejected.items())) or "none"
            additional = f"{entry.additional} additional, " if entry.additional else ""
            lines.append(
                f"trait {entry.trait}: got {entry.got} of {entry.wanted} prompts ({entry.seeds} seed, {additional}"
                f"{entry.expanded} expanded) from {entry.requests} generator replies; "
                f"{entry.lines_parsed} numbered lines parsed; rejected: {rejected}"
            )
    else:
        rejected_total: Counter[str] = Counter()
        for entry in short:
            rejected_total.update(entry.rejected)
        rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected_total.items())) or "none"
        lines.append(
            f"{len(short)} of {len(report.traits)} traits fell short (traits "
            f"{', '.join(str(e.trait) for e in short)}): {sum(e.got for e in short)} of "
            f"{sum(e.wanted for e in short)} prompts, {sum(e.expanded for e in short)} of them expanded, from "
            f"{sum(e.requests for e in short)} generator replies; {sum(e.lines_parsed for e in short)} "
            f"numbered lines parsed; rejected: {rejected}"
        )
    if report.generic_got < report.generic_wanted:
        lines.append(
            f"generic: got {report.generic_got} of {report.generic_wanted} prompts from {report.generic_source}"
        )
    return lines


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
        "prompts": dataclasses.asdict(config.prompts),
        "generator": dataclasses.asdict(config.model(config.prompts.generator)),
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
