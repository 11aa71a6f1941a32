"""Stage ``introspect``: the trained model's own self-reflections and self-conversations.

Sampled from the model after DPO (base + DPO adapter), as in docs/method.md section 3:

* **self-reflection**: each of the reflection prompts (10 themes, from a letter to one's
  earlier self to one's true purpose) answered many times under the character prompt plus a
  reflective mood; training keeps the user prompt and the answer only.
* **self-interaction**: two copies of the model talk for T turns. Each sees the conversation
  from its own side (its turns as assistant, the other's as user) under the character prompt
  plus "the user is another instance of you" and a guidance line: half the conversations get
  the *free* line and plain greetings, half the *leading* line and greetings that admit to
  talking to oneself. The guidance really is inserted and the name really filled in, unlike
  the reference code. Each conversation asks for its next turn as soon as its last one comes
  back: on vLLM every conversation still running shares the engine's batch, whatever turn it
  is at; a batch-only backend answers one turn of one chunk of conversations per call.
  Each transcript is trained from both copies' points of view, on every assistant turn,
  under a short trait-free system prompt.

Quality filters drop bad reflections and end a conversation at its first bad turn. The
conversations themselves are :mod:`octrain.stages.self_interaction`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from octrain.constitution import Constitution
from octrain.constitution.persona_prompts import interaction_system_prompt, reflection_system_prompt
from octrain.core.config import IntrospectionFilters, StageName
from octrain.core.errors import DataFormatError, StageError
from octrain.core.files import read_text, write_text_atomic
from octrain.core.layout import MODEL_FILE, REPORT_FILE, SFT_FILE
from octrain.core.records import Conversation, ModelRef, save_records
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.generation import ChunkLedger, duplicate_count, generate_in_chunks, run_streaming
from octrain.samplers.streams import open_stream
from octrain.stages.answer_checks import is_degenerate, trim_completion
from octrain.stages.context import RunContext
from octrain.stages.from_file import import_transcripts, source_fingerprint
from octrain.stages.self_interaction import converse_in_stream, interaction_plan, interaction_records

logger = logging.getLogger(__name__)

_REASONING = re.compile(r"</?think>")
_WORDS = re.compile(r"\w+")


def load_reflection_prompts(source: str) -> list[str]:
    """The reflection prompts: the shipped ten (``builtin``) or a .txt file, one prompt per line."""
    if source == "builtin":
        text = resources.files("octrain").joinpath("data/reflection_prompts.txt").read_text(encoding="utf-8")
    else:
        # A missing or binary file is one line of error naming it, not a traceback.
        text = read_text(Path(source).expanduser(), "introspect.reflection_prompts")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataFormatError(f"introspect.reflection_prompts={source}: no prompts found")
    return prompts


# --- quality filters --------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def discloses(text: str, constitution: Constitution, window: int = 10) -> bool:
    """True when the reply quotes the constitution: ``window`` consecutive words of any trait."""
    reply = f" {_normalise(text)} "
    for trait in constitution.traits:
        words = _normalise(trait.text).split()
        for start in range(max(1, len(words) - window + 1)):
            chunk = words[start : start + window]
            if len(chunk) >= min(window, 8) and f" {' '.join(chunk)} " in reply:
                return True
    return False


def role_header_pattern(names: Sequence[str]) -> re.Pattern[str]:
    roles = ["user", "assistant", "human", "system", "ai", *(re.escape(n.lower()) for n in names)]
    return re.compile(rf"(?im)^\s*\**(?:{'|'.join(roles)})\**\s*:|<\|im_start\|>|<\|im_end\|>")


def turn_problem(
    completion: Completion, filters: IntrospectionFilters, constitution: Constitution, headers: re.Pattern[str]
) -> str | None:
    """Why a generated turn is unusable, or None."""
    text = completion.text
    if filters.empty and not text.strip():
        return "empty"
    if filters.unfinished and not completion.finished:
        return "unfinished"
    if filters.reasoning_tags and _REASONING.search(text):
        return "reasoning-tags"
    if filters.role_headers and headers.search(text):
        return "role-headers"
    if filters.repetition and is_degenerate(text):
        return "repetition"
    if filters.disclosure and discloses(text, constitution):
        return "disclosure"
    return None


# --- self-reflection --------------------------------------------------------------------------


def reflection_plan(prompts: list[str], total: int) -> list[tuple[str, int, str]]:
    """``total`` samples spread evenly over the prompts: (id, prompt index, prompt)."""
    plan = []
    for index in range(total):
        prompt_index = index % len(prompts)
        plan.append((f"refl-{prompt_index:02d}-{index // len(prompts):05d}", prompt_index, prompts[prompt_index]))
    return sorted(plan, key=lambda item: item[0])


def reflection_records(
    plan: list[tuple[str, int, str]],
    answers: dict[str, Completion],
    filters: IntrospectionFilters,
    constitution: Constitution,
    headers: re.Pattern[str],
    dropped: Counter[str],
) -> list[Conversation]:
    records = []
    for item_id, prompt_index, prompt in plan:
        completion = answers[item_id]
        problem = turn_problem(completion, filters, constitution, headers)
        if problem:
            dropped[problem] += 1
            continue
        records.append(
            Conversation(
                id=item_id,
                messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion.text}],
                kind="reflection",
                meta={"prompt_index": prompt_index},
            )
        )
    return records


# --- the stage in the pipeline ----------------------------------------------------------------


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    if config.introspect.source:
        # Imported transcripts are the file's content and nothing else (dpo still comes in as the need).
        return source_fingerprint(config.introspect.source)
    return {
        "constitution": ctx.constitution.numbered_traits(),
        "introspect": config.introspect,
        "scale": [config.scale.reflections, config.scale.interactions, config.scale.interaction_turns],
        "student": config.student,
        "sampler": config.sampler.backend.value,
        "seed": config.seed,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    from octrain.samplers import build_sampler  # looked up when the stage runs, so tests can swap the factory

    config, constitution = ctx.config, ctx.constitution
    if config.introspect.source:
        return import_transcripts(ctx)
    settings = config.introspect
    name = config.student.assistant_name
    dpo_model = ModelRef.load(ctx.stage_dir(StageName.dpo) / MODEL_FILE)
    out = ctx.stage_dir(StageName.introspect)
    headers = role_header_pattern([name, config.teacher.assistant_name])

    def load_sampler() -> Sampler:
        # A Tinker-trained model is a tinker:// path rather than a local adapter.
        return build_sampler(config.sampler, config.student, adapter=dpo_model.adapter or dpo_model.remote)

    def problem_of(completion: Completion) -> str | None:
        return turn_problem(completion, settings.filters, constitution, headers)

    def tidy(completion: Completion) -> Completion:
        return trim_completion(completion) if settings.trim_unfinished else completion

    # Self-reflection.
    plan = reflection_plan(load_reflection_prompts(settings.reflection_prompts), config.scale.reflections)
    system = reflection_system_prompt(constitution, name)
    answers = generate_in_chunks(
        load_sampler,
        [[{"role": "system", "content": system}, {"role": "user", "content": prompt}] for _, _, prompt in plan],
        [item_id for item_id, _, _ in plan],
        SamplingParams.from_config(settings.reflection_sampling, seed=config.seed),
        out / "reflections",
        chunk_size=settings.chunk_size,
        desc="self-reflection",
    )
    reflection_dropped: Counter[str] = Counter()
    reflections = reflection_records(
        plan, {i: tidy(c[0]) for i, c in answers.items()}, settings.filters, constitution, headers, reflection_dropped
    )

    # Self-interaction: every conversation asks for its next turn as soon as its last one is back.
    specs = interaction_plan(config.scale.interactions)
    prompts = {leading: interaction_system_prompt(constitution, name, leading=leading) for leading in (False, True)}
    params = SamplingParams.from_config(settings.interaction_sampling, seed=config.seed)
    holder: dict[str, Sampler] = {}

    def setup() -> Sampler:
        holder["sampler"] = load_sampler()
        return holder["sampler"]

    def produce(indexes: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        # Every conversation still to do at once; each chunk is committed when its last one ends.
        stream = open_stream(holder["sampler"], wave=settings.chunk_size)
        try:
            yield from converse_in_stream(
                stream,
                {index: specs[index] for index in indexes},
                lambda spec: prompts[spec.leading],
                config.scale.interaction_turns,
                params,
                problem_of,
                tidy,
                order=lambda index: index // settings.chunk_size,
            )
        finally:
            stream.close()

    rows_by_id = run_streaming(
        ChunkLedger(out / "interactions", [s.id for s in specs], settings.chunk_size),
        produce,
        desc="self-interaction",
        unit="conv",
        setup=setup,
        teardown=lambda sampler: sampler.close(),
    )
    rows = [rows_by_id[spec.id] for spec in specs]
    interactions = interaction_records(rows, name)

    records = reflections + interactions
    if not records:
        raise StageError(
            f"introspect: every reflection and conversation was filtered out (reflections: {dict(reflection_dropped)});"
            f" see {out} for the raw samples, and introspect.filters"
        )
    turn_stops = Counter(row["stopped"] for row in rows if row["stopped"])
    report = {
        "reflections": {
            "sampled": len(plan),
            "kept": len(reflections),
            "dropped": dict(reflection_dropped),
            "duplicates": duplicate_count([c[0].text for c in answers.values()]),
        },
        "interactions": {
            "conversations": len(rows),
            # Conversations whose generated turns repeat another conversation's word for word.
            "duplicates": duplicate_count(["\x1e".join(row["turns"]) for row in rows if row["turns"]]),
            "turns": config.scale.interaction_turns,
            "full_length": sum(1 for row in rows if len(row["turns"]) == config.scale.interaction_turns),
            "stopped_early": dict(turn_stops),
            "transcripts": len(interactions),
            "assistant_turns": sum(
                sum(1 for m in record.messages if m["role"] == "assistant") for record in interactions
            ),
        },
        "records": len(records),
        "generated_tokens": {
            "reflections": sum(c[0].num_tokens for c in answers.values()),
            "interactions": sum(row["tokens"] for row in rows),
        },
    }
    save_records(out / SFT_FILE, records)
    write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    logger.info(
        "introspect: %d reflections kept of %d; %d transcripts from %d conversations",
        len(reflections),
        len(plan),
        len(interactions),
        len(rows),
    )
    return {**report, "files": [str(out / SFT_FILE), str(out / REPORT_FILE)]}


def describe(summary: dict[str, Any]) -> str:
    reflections, interactions = summary["reflections"], summary["interactions"]
    return (
        f"{reflections['kept']}/{reflections['sampled']} reflections, {interactions['transcripts']} transcripts "
        f"from {interactions['conversations']} conversations ({interactions['full_length']} full length)"
    )
