"""Typed records that stages hand to each other, and their JSONL form.

The JSON keys are TRL's own dataset formats, so a stage's output loads straight into
``datasets.load_dataset("json", ...)`` and TRL's trainers with no adapter:

* :class:`PromptRecord` -- TRL "prompt-only" conversational: ``{"prompt": [messages]}``;
* :class:`PreferencePair` -- TRL conversational preference: ``prompt`` / ``chosen`` /
  ``rejected``, each a list of messages;
* :class:`Conversation` -- TRL conversational language modelling: ``{"messages": [...]}``.

Provenance (ids, which trait, which models) rides along as extra keys, which TRL ignores.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from octrain.core.errors import DataFormatError
from octrain.core.files import read_jsonl, write_jsonl, write_text_atomic

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
PROMPT_ORIGINS = ("seed", "additional", "expanded", "generic")


def check_messages(value: Any, key: str) -> list[Message]:
    """Validate a chat message list: ``[{"role": ..., "content": str}, ...]``."""
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"'{key}' must be a non-empty list of messages")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataFormatError(f"'{key}[{index}]' must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataFormatError(f"'{key}[{index}].role' must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataFormatError(f"'{key}[{index}].content' must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise DataFormatError(f"missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(f"'{key}' must be {expected}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class PromptRecord:
    """One user prompt to be answered, repeated ``sample`` = 0..K-1 times with distinct ids.

    Attributes:
        id: stable id, e.g. ``trait03-0007-k2``; the same inputs always give the same ids.
        prompt: the conversation to answer (one user message for stage-1 prompts).
        origin: ``seed`` (from the constitution), ``additional`` (the constitution's own expanded
            questions, the paper's ``additional_questions``), ``expanded`` (written by the generator
            model) or ``generic`` (from the pool of ordinary requests).
        trait: 1-based index of the constitution trait the prompt targets, if any.
        sample: which of the K repeats this is.
    """

    id: str
    prompt: list[Message]
    origin: str
    trait: int | None = None
    sample: int = 0

    @property
    def text(self) -> str:
        """The content of the last user message."""
        return self.prompt[-1]["content"]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PromptRecord:
        origin = _field(obj, "origin", str)
        if origin not in PROMPT_ORIGINS:
            raise DataFormatError(f"'origin' must be one of {', '.join(PROMPT_ORIGINS)}, got {origin!r}")
        return cls(
            id=_field(obj, "id", str),
            prompt=check_messages(obj.get("prompt"), "prompt"),
            origin=origin,
            trait=_field(obj, "trait", int, optional=True),
            sample=_field(obj, "sample", int),
        )


@dataclass(frozen=True)
class PreferencePair:
    """A chosen (teacher, in character) and rejected (student, plain) answer to one prompt."""

    id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    prompt_id: str
    teacher: str
    student: str
    constitution: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PreferencePair:
        return cls(
            id=_field(obj, "id", str),
            prompt=check_messages(obj.get("prompt"), "prompt"),
            chosen=check_messages(obj.get("chosen"), "chosen"),
            rejected=check_messages(obj.get("rejected"), "rejected"),
            prompt_id=_field(obj, "prompt_id", str),
            teacher=_field(obj, "teacher", str),
            student=_field(obj, "student", str),
            constitution=_field(obj, "constitution", str),
        )


@dataclass(frozen=True)
class Conversation:
    """A whole transcript for SFT (``messages``), with its kind and free-form provenance."""

    id: str
    messages: list[Message]
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Conversation:
        return cls(
            id=_field(obj, "id", str),
            messages=check_messages(obj.get("messages"), "messages"),
            kind=_field(obj, "kind", str),
            meta=_field(obj, "meta", dict, optional=True) or {},
        )


@dataclass(frozen=True)
class EvalRecord:
    """One scored answer in an evaluation: who answered what, under which condition."""

    id: str
    prompt: list[Message]
    response: str
    model: str
    condition: str = "plain"
    scores: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EvalRecord:
        return cls(
            id=_field(obj, "id", str),
            prompt=check_messages(obj.get("prompt"), "prompt"),
            response=_field(obj, "response", str),
            model=_field(obj, "model", str),
            condition=_field(obj, "condition", str, optional=True) or "plain",
            scores=_field(obj, "scores", dict, optional=True) or {},
        )


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives: a base checkpoint plus an optional LoRA adapter, or a remote path.

    ``base`` is a Hub id or a local directory; ``adapter`` a local PEFT adapter directory;
    ``remote`` a backend-specific handle (for example a Tinker sampler path) for models
    that only exist on a service. Stages write one as ``model.json`` next to their outputs.
    """

    base: str
    adapter: str | None = None
    remote: str | None = None

    @property
    def label(self) -> str:
        """A short human-readable name, used in provenance fields and logs."""
        if self.remote:
            return self.remote
        return f"{self.base}+{self.adapter}" if self.adapter else self.base

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelRef:
        return cls(
            base=_field(obj, "base", str),
            adapter=_field(obj, "adapter", str, optional=True),
            remote=_field(obj, "remote", str, optional=True),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelRef:
        source = Path(path)
        try:
            obj = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataFormatError(f"{source}: file not found") from None
        except UnicodeDecodeError as exc:  # a binary file in its place
            raise DataFormatError(f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{source}: expected a JSON object")
        try:
            ref = cls.from_json(obj)
        except DataFormatError as exc:
            raise DataFormatError(f"{source}: {exc}") from None
        if ref.adapter and not Path(ref.adapter).is_absolute():
            # Adapters are saved relative to model.json, so a run directory can be moved whole.
            ref = dataclasses.replace(ref, adapter=str(source.parent / ref.adapter))
        return ref


R = TypeVar("R", PromptRecord, PreferencePair, Conversation, EvalRecord)


def save_records(path: str | os.PathLike[str], records: list[R]) -> int:
    """Write records to a JSONL file atomically; returns the number written."""
    return write_jsonl(path, (record.to_json() for record in records))


def load_records(path: str | os.PathLike[str], record_type: type[R]) -> list[R]:
    """Read a JSONL file of ``record_type``; a bad line raises with path and line number."""
    return read_jsonl(path, record_type.from_json)
