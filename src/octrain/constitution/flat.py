"""The paper's formats: a JSON list of traits, or JSON lines (the few-shot files), one trait an object.

Each object is ``{"trait": "I ...", "questions": [...], "additional_questions": [...]}``:
``questions`` are the hand-written seeds, ``additional_questions`` the prompts the paper
expanded from them and trained on. ``clarification`` (a note some of the paper's files carry
for the people writing them) is accepted and not used.

Which of the two a file holds is decided by its content, not its name: the paper keeps JSON
lists in ``.txt`` files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from octrain.constitution.model import Draft, DraftTrait, Located
from octrain.constitution.where import describe, located_error
from octrain.constitution.yaml_lines import LocatedYaml
from octrain.core.errors import DataFormatError

OBJECT_KEYS = ("trait", "questions", "additional_questions")
IGNORED_KEYS = ("clarification",)


class NotJson(ValueError):
    """The text parses neither as one JSON value nor as JSON lines; says where it first fails."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


def looks_like_json(text: str) -> bool:
    """Whether the text could be a JSON list or JSON lines: it opens with ``[`` or ``{``."""
    return text.lstrip()[:1] in ("[", "{")


def parse_json_or_lines(text: str) -> tuple[Any, list[tuple[int, Any]] | None]:
    """``(value, None)`` for a whole JSON document, or ``(None, [(line, object), ...])`` for JSON lines.

    Raises:
        NotJson: neither parses; the position is the JSON error's for text opening with
            ``[`` (a list broken somewhere), the first bad line's for text opening with ``{``.
    """
    try:
        return json.loads(text), None
    except json.JSONDecodeError as whole:
        if text.lstrip()[:1] != "{":
            raise NotJson(whole.lineno, whole.colno, whole.msg) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise NotJson(number, exc.colno, exc.msg) from None
    return None, rows


def _strings(source: Path, value: Any, field: str, line_of: dict[str, int], line: int | None) -> list[Located]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise located_error(
            source, line_of.get(field, line), field, f"expected a list of strings, got {describe(value)}"
        )
    found = []
    for index, item in enumerate(value):
        child = f"{field}[{index}]"
        where = line_of.get(child, line)
        if not isinstance(item, str) or not item.strip():
            raise located_error(source, where, child, f"expected a non-empty string, got {describe(item)}")
        found.append(Located(" ".join(item.split()), where, child))
    return found


def _trait(source: Path, obj: Any, index: int, line: int | None, line_of: dict[str, int]) -> DraftTrait:
    field = f"[{index}]"
    if not isinstance(obj, dict):
        raise located_error(
            source, line, field, f"expected an object with 'trait' and 'questions', got {describe(obj)}"
        )
    for key in obj:
        if key not in OBJECT_KEYS and key not in IGNORED_KEYS:
            where = line_of.get(f"{field}.{key}", line)
            raise located_error(source, where, field, f"unknown key {key!r} (expected one of {', '.join(OBJECT_KEYS)})")
    text = obj.get("trait")
    trait_line = line_of.get(f"{field}.trait", line)
    if not isinstance(text, str) or not text.strip():
        raise located_error(source, trait_line, f"{field}.trait", f"expected a non-empty string, got {describe(text)}")
    return DraftTrait(
        Located(" ".join(text.split()), trait_line, f"{field}.trait"),
        _strings(source, obj.get("questions"), f"{field}.questions", line_of, line),
        _strings(source, obj.get("additional_questions"), f"{field}.additional_questions", line_of, line),
    )


def _field_lines(source: Path, text: str) -> dict[str, int]:
    """The line of every field of a JSON document (JSON is YAML, so PyYAML can say); {} if it cannot."""
    try:
        return LocatedYaml(source, text).lines
    except DataFormatError:
        return {}  # JSON that YAML refuses (a tab in the indentation, say): fall back to item lines


def draft_from_list(source: Path, text: str, data: list[Any]) -> Draft:
    line_of = _field_lines(source, text)
    traits = [_trait(source, obj, i, line_of.get(f"[{i}]"), line_of) for i, obj in enumerate(data)]
    return Draft(name=source.stem, traits=traits)


def draft_from_lines(source: Path, rows: list[tuple[int, Any]]) -> Draft:
    # On a JSON line, every field of the object is on that line.
    traits = [_trait(source, obj, i, number, {}) for i, (number, obj) in enumerate(rows)]
    return Draft(name=source.stem, traits=traits)
