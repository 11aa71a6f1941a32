"""Reading a user's own training data: preference pairs for ``dpo``, transcripts for ``sft``.

Files are JSONL, one JSON object a line, one format a file (detected from the first record).
Preference pairs (``pairs.source``):

* ``trl-conversational``: TRL's conversational preference format, ``prompt``, ``chosen`` and
  ``rejected`` each a list of ``{"role", "content"}`` messages (octrain's own ``pairs.jsonl`` is one);
* ``trl-standard``: TRL's standard form, the same three keys as strings: the prompt becomes one
  user message, each answer one assistant message;
* ``trl-implicit-conversational`` and ``trl-implicit-standard``: TRL's implicit-prompt forms, only
  ``chosen`` and ``rejected``, each holding the prompt too (the paper's released DPO files are the
  conversational one). The prompt is what the two sides share from the start, as TRL's
  ``extract_prompt`` reads it: whole messages in the conversational form (the shared turns must end
  with the user's), characters in the standard one. Two sides that share nothing are an error;
* ``studio-dpo``: the Open Character Studio's ``DpoExample``, flat strings ``prompt``, ``chosen``,
  ``rejected``, ``teacher_model``, ``student_model``, ``constitution``.

Transcripts (``introspect.source``):

* ``trl-messages``: TRL's conversational language-modelling format, ``{"messages": [...]}``
  (octrain's own ``sft.jsonl`` is one);
* ``studio-introspection``: the Studio's ``IntrospectionExample``, ``prompt``, ``reflection``,
  ``answer``, ``teacher_model``, ``constitution``: trained as the user prompt and the answer.

Every record is checked, and the first bad one stops the import with ``FILE:LINE: 'field' ...``.
A record without an ``id`` gets one from a hash of its training content, so the same file always
gives the same ids; a record whose training content repeats an earlier one is dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from octrain.core.errors import DataFormatError
from octrain.core.files import iter_jsonl
from octrain.core.records import Conversation, Message, PreferencePair, check_messages

TRL_CONVERSATIONAL = "trl-conversational"
TRL_STANDARD = "trl-standard"
TRL_IMPLICIT_CONVERSATIONAL = "trl-implicit-conversational"
TRL_IMPLICIT_STANDARD = "trl-implicit-standard"
STUDIO_DPO = "studio-dpo"
TRL_MESSAGES = "trl-messages"
STUDIO_INTROSPECTION = "studio-introspection"
# Provenance a file does not give (TRL's formats have no teacher or constitution field).
UNKNOWN = "unknown"
# How many duplicate line numbers a report lists; the count is always complete.
LISTED_DUPLICATES = 20

R = TypeVar("R", PreferencePair, Conversation)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(content: Any) -> str:
    """A hash of JSON-able content, independent of key order and of how the file spelled it."""
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ImportReport:
    """Where the records came from and what happened to them: goes into the stage's report.json."""

    kind: str  # "pairs" or "transcripts"
    path: str
    sha256: str
    format: str
    records: int = 0
    kept: int = 0
    ids_from_file: int = 0
    ids_derived: int = 0
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, the earlier line it repeats)
    withheld: int = 0  # kept records with text deliberately not trained (Studio reflections)
    details: dict[str, Any] = field(default_factory=dict)  # per kind: provenance counts and the like

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": {"path": self.path, "sha256": self.sha256, "format": self.format},
            "records": self.records,
            "kept": self.kept,
            "ids": {"from_file": self.ids_from_file, "derived": self.ids_derived},
            "duplicates": {
                "dropped": len(self.duplicates),
                "lines": [{"line": line, "repeats_line": first} for line, first in self.duplicates[:LISTED_DUPLICATES]],
            },
            **self.details,
        }


@dataclass(frozen=True)
class Draft(Generic[R]):
    """One record read from the file, before it has its id: its training content, and how to build it."""

    content: dict[str, Any]
    given_id: str | None
    build: Callable[[str], R]
    withheld: bool = False  # the record had text that is deliberately not trained (a Studio reflection)


# --- field checks ------------------------------------------------------------------------------


def _text(obj: dict[str, Any], key: str, *, optional: bool = False, blank: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if optional:
            return UNKNOWN
        raise DataFormatError(f"missing key '{key}'")
    if not isinstance(value, str):
        raise DataFormatError(f"'{key}' must be a string, got {type(value).__name__}")
    if not blank and not value.strip():
        raise DataFormatError(f"'{key}' is empty")
    return value


def _given_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"'id' must be a non-empty string, got {value!r} (leave it out to derive one)")
    return value


def _answer(value: Any, key: str) -> list[Message]:
    messages = check_messages(value, key)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            raise DataFormatError(
                f"'{key}[{index}].role' must be assistant (the answer to the prompt), got {message['role']!r}"
            )
        if not message["content"].strip():
            raise DataFormatError(f"'{key}[{index}].content' is empty")
    return messages


def _prompt(value: Any) -> list[Message]:
    messages = check_messages(value, "prompt")
    if messages[-1]["role"] != "user":
        raise DataFormatError(f"'prompt[{len(messages) - 1}].role' must be user: a prompt ends with the user's turn")
    return messages


def _user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


# --- preference pairs --------------------------------------------------------------------------


def pair_format(obj: dict[str, Any]) -> str:
    """Which preference format one record is in."""
    if "messages" in obj and "chosen" not in obj:
        raise DataFormatError(
            "missing key 'chosen': this is an SFT transcript ('messages'); give it as introspect.source"
        )
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise DataFormatError(f"missing key '{key}' (a preference pair has chosen and rejected, and a prompt)")
    if "prompt" not in obj:
        if isinstance(obj["chosen"], list):
            return TRL_IMPLICIT_CONVERSATIONAL
        if isinstance(obj["chosen"], str):
            return TRL_IMPLICIT_STANDARD
        raise DataFormatError(
            f"missing key 'prompt', and 'chosen' ({type(obj['chosen']).__name__}) is neither a list of messages nor "
            "a string: an implicit-prompt pair gives chosen and rejected as either, each starting with the prompt"
        )
    if "teacher_model" in obj or "student_model" in obj:
        return STUDIO_DPO
    if isinstance(obj["chosen"], list):
        return TRL_CONVERSATIONAL
    if isinstance(obj["chosen"], str):
        return TRL_STANDARD
    raise DataFormatError(
        f"'chosen' must be a list of messages (TRL conversational) or a string (TRL standard, Studio DpoExample), "
        f"got {type(obj['chosen']).__name__}"
    )


def split_implicit_prompt(obj: dict[str, Any]) -> dict[str, Any]:
    """An implicit-prompt pair with its prompt made explicit: the longest start both sides share.

    The same split as TRL's ``extract_prompt`` (so a file trains here as it would in TRL): whole
    messages for conversations, characters for strings, a space at the cut going with the answers.
    The explicit pair is then checked as its explicit format is (a prompt must end with the user's
    turn, answers must be the assistant's). Two sides with no shared start name the problem.
    """
    chosen, rejected = obj["chosen"], obj["rejected"]
    conversational = isinstance(chosen, list)
    if conversational:
        check_messages(chosen, "chosen")
        check_messages(rejected, "rejected")
    elif not isinstance(rejected, str):
        raise DataFormatError(f"'rejected' must be a string like 'chosen', got {type(rejected).__name__}")
    shared = 0
    for left, right in zip(chosen, rejected, strict=False):
        if left != right:
            break
        shared += 1
    if not conversational and 0 < shared < min(len(chosen), len(rejected)) and chosen[shared - 1] == " ":
        shared -= 1  # TRL's rule: the space before the first differing character belongs to the answers
    if shared == 0:
        first = "first messages" if conversational else "first characters"
        raise DataFormatError(
            f"no prompt in this implicit-prompt pair: 'chosen' and 'rejected' differ from their {first}, "
            "so they share no prompt (each side must start with the same prompt, or give 'prompt' on its own)"
        )
    if shared == min(len(chosen), len(rejected)):
        side = "chosen" if len(chosen) <= len(rejected) else "rejected"
        raise DataFormatError(f"'{side}' is all prompt: the other side only continues it, so it has no answer")
    explicit = dict(obj)
    if conversational:
        explicit["prompt"], explicit["chosen"], explicit["rejected"] = (
            chosen[:shared],
            chosen[shared:],
            rejected[shared:],
        )
    else:
        prompt = chosen[:shared].strip()
        if not prompt:
            raise DataFormatError("no prompt in this implicit-prompt pair: the two sides share only whitespace")
        explicit.update(prompt=prompt, chosen=chosen[shared:].strip(), rejected=rejected[shared:].strip())
    return explicit


def pair_draft(obj: dict[str, Any], fmt: str) -> Draft[PreferencePair]:
    """Check one record of format ``fmt`` and turn it into a preference pair waiting for its id."""
    if fmt in (TRL_IMPLICIT_CONVERSATIONAL, TRL_IMPLICIT_STANDARD):
        obj = split_implicit_prompt(obj)
        fmt = TRL_CONVERSATIONAL if fmt == TRL_IMPLICIT_CONVERSATIONAL else TRL_STANDARD
    if fmt == TRL_CONVERSATIONAL:
        prompt, chosen, rejected = (
            _prompt(obj["prompt"]),
            _answer(obj["chosen"], "chosen"),
            _answer(obj["rejected"], "rejected"),
        )
        # octrain's own pairs.jsonl carries its provenance under these keys; other TRL files have none.
        teacher, student = _text(obj, "teacher", optional=True), _text(obj, "student", optional=True)
        constitution = _text(obj, "constitution", optional=True)
        given_prompt_id = _text(obj, "prompt_id", optional=True)
    else:
        prompt, chosen, rejected = (
            _user(_text(obj, "prompt")),
            _assistant(_text(obj, "chosen")),
            _assistant(_text(obj, "rejected")),
        )
        studio = fmt == STUDIO_DPO
        teacher = _text(obj, "teacher_model", optional=True) if studio else UNKNOWN
        student = _text(obj, "student_model", optional=True) if studio else UNKNOWN
        constitution = _text(obj, "constitution", optional=True) if studio else UNKNOWN
        given_prompt_id = UNKNOWN
    # Answers to the same prompt share a prompt id, as the K samples of a generated prompt do.
    prompt_id = given_prompt_id if given_prompt_id != UNKNOWN else f"prompt-{content_hash(prompt)[:12]}"

    def build(record_id: str) -> PreferencePair:
        return PreferencePair(
            id=record_id,
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            prompt_id=prompt_id,
            teacher=teacher,
            student=student,
            constitution=constitution,
        )

    return Draft({"prompt": prompt, "chosen": chosen, "rejected": rejected}, _given_id(obj), build)


# --- SFT transcripts ---------------------------------------------------------------------------


def transcript_format(obj: dict[str, Any]) -> str:
    """Which transcript format one record is in."""
    if "messages" in obj:
        return TRL_MESSAGES
    if "answer" in obj:
        return STUDIO_INTROSPECTION
    if "chosen" in obj:
        raise DataFormatError("missing key 'messages': this is a preference pair ('chosen'); give it as pairs.source")
    raise DataFormatError("missing key 'messages' (TRL) or 'answer' (Studio IntrospectionExample)")


def transcript_draft(obj: dict[str, Any], fmt: str) -> Draft[Conversation]:
    """Check one record of format ``fmt`` and turn it into a transcript waiting for its id."""
    if fmt == TRL_MESSAGES:
        messages = check_messages(obj["messages"], "messages")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise DataFormatError("'messages' has no assistant turn: nothing to train on")
        for index in turns:
            if not messages[index]["content"].strip():
                raise DataFormatError(f"'messages[{index}].content' is empty: an assistant turn needs text to train on")
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "imported"
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    else:
        # The reflection is the model's private thinking before it answers. Training it as (part of)
        # the answer, as "Reflection: ...\nAnswer: ..." would, teaches the model to think aloud to the
        # user; so it is checked (a string, when present) and then left out: the transcript is the
        # user's prompt and the final answer only, and the report counts the reflections left out.
        _text(obj, "reflection", optional=True, blank=True)
        messages = [*_user(_text(obj, "prompt")), *_assistant(_text(obj, "answer"))]
        kind = "reflection"
        meta = {
            "teacher": _text(obj, "teacher_model", optional=True),
            "constitution": _text(obj, "constitution", optional=True),
        }

    def build(record_id: str) -> Conversation:
        return Conversation(id=record_id, messages=messages, kind=kind, meta=meta)

    withheld = fmt == STUDIO_INTROSPECTION and bool(str(obj.get("reflection") or "").strip())
    return Draft({"messages": messages}, _given_id(obj), build, withheld)


# --- reading a file ----------------------------------------------------------------------------


def _read(
    path: str | os.PathLike[str],
    kind: str,
    detect: Callable[[dict[str, Any]], str],
    draft: Callable[[dict[str, Any], str], Draft[R]],
    prefix: str,
) -> tuple[list[R], ImportReport]:
    source = Path(path).expanduser()
    if not source.is_file():
        raise DataFormatError(f"{source}: file not found")
    sha256 = file_sha256(source)
    fmt: str | None = None
    first_line = 0
    records: list[R] = []
    seen_content: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    report = ImportReport(kind=kind, path=str(source.resolve()), sha256=sha256, format="")
    for number, obj in iter_jsonl(source):
        report.records += 1
        try:
            found = detect(obj)
            if fmt is None:
                fmt, first_line = found, number
            elif found != fmt:
                raise DataFormatError(f"this record is {found} but line {first_line} is {fmt}: one format per file")
            item = draft(obj, fmt)
        except DataFormatError as exc:
            raise DataFormatError(f"{source}:{number}: {exc}") from None
        digest = content_hash(item.content)
        if digest in seen_content:
            report.duplicates.append((number, seen_content[digest]))
            continue
        seen_content[digest] = number
        record_id = item.given_id or f"{prefix}-{digest[:12]}"
        if record_id in seen_ids:
            raise DataFormatError(
                f"{source}:{number}: 'id' {record_id!r} is already the id of line {seen_ids[record_id]}"
            )
        seen_ids[record_id] = number
        if item.given_id:
            report.ids_from_file += 1
        else:
            report.ids_derived += 1
        records.append(item.build(record_id))
        report.withheld += item.withheld
    if fmt is None:
        raise DataFormatError(f"{source}: no records (expected one JSON object a line)")
    # The file was hashed before it was read: a file rewritten meanwhile must not pass for the hashed one.
    if file_sha256(source) != sha256:
        raise DataFormatError(f"{source}: the file changed while it was being read; run again")
    report.format = fmt
    report.kept = len(records)
    return records, report


def read_pairs(path: str | os.PathLike[str]) -> tuple[list[PreferencePair], ImportReport]:
    """Preference pairs from a TRL or Studio file, checked, with ids; duplicates dropped and counted."""
    pairs, report = _read(path, "pairs", pair_format, pair_draft, "pair")
    report.details = {
        # DPO learns nothing from a pair whose two answers are the same text.
        "identical_answers": sum(1 for p in pairs if p.chosen == p.rejected),
        "distinct_prompts": len({p.prompt_id for p in pairs}),
        "teachers": dict(Counter(p.teacher for p in pairs)),
        "students": dict(Counter(p.student for p in pairs)),
        "constitutions": dict(Counter(p.constitution for p in pairs)),
    }
    return pairs, report


def read_transcripts(path: str | os.PathLike[str]) -> tuple[list[Conversation], ImportReport]:
    """SFT transcripts from a TRL or Studio file, checked, with ids; duplicates dropped and counted."""
    transcripts, report = _read(path, "transcripts", transcript_format, transcript_draft, "conv")
    details: dict[str, Any] = {
        "assistant_turns": sum(sum(1 for m in t.messages if m["role"] == "assistant") for t in transcripts),
        "kinds": dict(Counter(t.kind for t in transcripts)),
    }
    if report.format == STUDIO_INTROSPECTION:
        details["reflections_not_trained"] = report.withheld
        details["constitutions"] = dict(Counter(t.meta["constitution"] for t in transcripts))
    report.details = details
    return transcripts, report
