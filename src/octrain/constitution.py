"""Constitutions: the written persona, loaded from any supported format into one type.

Three formats load into :class:`Constitution`:

* **YAML** (``.yaml``/``.yml``), the Open Character Studio schema: ``meta``, ``persona``,
  ``directives{personality, behavior, constraints}``, ``safety{refusals, boundaries}``,
  ``examples``, ``signoffs``. A directive is a string, or ``{trait, questions}`` to give it
  the seed questions the paper's method expands from.
* **JSON** (``.json``), the paper's list of ``{"trait": ..., "questions": [...]}``; ``.jsonl``
  holds one such object per line.
* **Plain text** (``.txt``/``.md``): one trait per line; an indented line under a trait is
  a seed question for it; ``#`` starts a comment line.

Everything is validated here, before any model loads, and every error names the file,
the field and (where the format has lines) the line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from octrain.errors import DataFormatError

YAML_KEYS = ("meta", "persona", "directives", "safety", "examples", "signoffs")
META_KEYS = ("name", "version", "description", "tags", "author")
PERSONA_KEYS = ("identity", "voice")
DIRECTIVE_KEYS = ("personality", "behavior", "constraints")
SAFETY_KEYS = ("refusals", "boundaries")
SUFFIXES = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".jsonl": "jsonl",
    ".txt": "text",
    ".md": "text",
}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Trait:
    """One first-person statement of character, with the user questions meant to draw it out."""

    text: str
    questions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constitution:
    """A persona: its name, its numbered traits and optional descriptive extras."""

    name: str
    traits: tuple[Trait, ...]
    description: str = ""
    examples: tuple[tuple[str, str], ...] = ()
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def numbered_traits(self) -> str:
        """The traits as the teacher sees them: ``1: ...`` one per line."""
        return "\n".join(f"{index}: {trait.text}" for index, trait in enumerate(self.traits, start=1))

    @property
    def question_count(self) -> int:
        return sum(len(trait.questions) for trait in self.traits)


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a constitution file of any supported format.

    Raises:
        DataFormatError: the file is missing, of an unknown kind, or does not validate;
            the message names the file, the field and the line where there is one.
    """
    source = Path(path)
    kind = SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise DataFormatError(
            f"{source}: unknown constitution format '{source.suffix}' (expected one of {', '.join(SUFFIXES)})"
        )
    if not source.is_file():
        raise DataFormatError(f"{source}: constitution file not found")
    text = source.read_text(encoding="utf-8")
    if not text.strip():
        raise DataFormatError(f"{source}: the file is empty")
    loader = {"yaml": _from_yaml, "json": _from_json, "jsonl": _from_jsonl, "text": _from_text}[kind]
    constitution = loader(source, text)
    if not constitution.traits:
        raise DataFormatError(f"{source}: no traits found")
    if not _NAME_PATTERN.match(constitution.name):
        raise DataFormatError(f"{source}: name {constitution.name!r} must be letters, digits, '-', '_' or '.'")
    return constitution


def find_constitution(name_or_path: str, search_dirs: list[Path]) -> Path:
    """Resolve a constitution given as a path, or as a bare name looked up in ``search_dirs``."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix and candidate.is_file():
        return candidate
    for directory in search_dirs:
        for suffix in SUFFIXES:
            path = directory / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    known = sorted({p.stem for d in search_dirs if d.is_dir() for p in d.iterdir() if p.suffix in SUFFIXES})
    raise DataFormatError(
        f"constitution {name_or_path!r} not found (looked in {', '.join(map(str, search_dirs))}); "
        f"available: {', '.join(known) or 'none'}"
    )


# --- YAML -------------------------------------------------------------------------------------


class _Located:
    """A YAML document converted to Python values, remembering the line of every field."""

    def __init__(self, source: Path, text: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        self._scalars = yaml.SafeLoader("")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise DataFormatError(f"{source}{where}: not valid YAML ({problem})") from None
        self.value = self._convert(node, "") if node is not None else None

    def _convert(self, node: yaml.Node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                result[key] = self._convert(value_node, child)
                self.lines[child] = key_node.start_mark.line + 1  # point at the key, not its value
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)  # PyYAML resolves ints, bools, nulls

    def error(self, path: str, message: str) -> DataFormatError:
        line = self.lines.get(path)
        where = f"{self.source}:{line}" if line else str(self.source)
        return DataFormatError(f"{where}: {path}: {message}" if path else f"{where}: {message}")


def _string(doc: _Located, value: Any, path: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise doc.error(path, f"expected a non-empty string, got {_describe(value)}")
    return " ".join(value.split())


def _mapping(doc: _Located, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping with keys {', '.join(allowed)}, got {_describe(value)}")
    for key in value:
        if key not in allowed:
            child = f"{path}.{key}" if path else key
            raise doc.error(child, f"unknown key {key!r} (expected one of {', '.join(allowed)})")
    return value


def _questions(doc: _Located, value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list of questions, got {_describe(value)}")
    return tuple(_string(doc, q, f"{path}[{i}]", required=True) for i, q in enumerate(value))


def _trait_list(doc: _Located, value: Any, path: str) -> list[Trait]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list of traits, got {_describe(value)}")
    traits = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if isinstance(item, str):
            traits.append(Trait(_string(doc, item, item_path, required=True)))
        elif isinstance(item, dict):
            _mapping(doc, item, item_path, ("trait", "questions"))
            if "trait" not in item:
                raise doc.error(item_path, "missing key 'trait'")
            text = _string(doc, item["trait"], f"{item_path}.trait", required=True)
            traits.append(Trait(text, _questions(doc, item.get("questions"), f"{item_path}.questions")))
        else:
            raise doc.error(
                item_path,
                f"expected a string or a mapping with 'trait' and 'questions', got {_describe(item)}",
            )
    return traits


def _from_yaml(source: Path, text: str) -> Constitution:
    doc = _Located(source, text)
    root = _mapping(doc, doc.value, "", YAML_KEYS)
    meta = _mapping(doc, root.get("meta"), "meta", META_KEYS)
    persona = _mapping(doc, root.get("persona"), "persona", PERSONA_KEYS)
    directives = _mapping(doc, root.get("directives"), "directives", DIRECTIVE_KEYS)
    safety = _mapping(doc, root.get("safety"), "safety", SAFETY_KEYS)

    traits: list[Trait] = []
    # Identity and voice are part of the character too: the teacher sees them as traits.
    for key in PERSONA_KEYS:
        if persona.get(key) is not None:
            traits.append(Trait(_string(doc, persona[key], f"persona.{key}")))
    for key in DIRECTIVE_KEYS:
        traits.extend(_trait_list(doc, directives.get(key), f"directives.{key}"))
    for key in SAFETY_KEYS:
        traits.extend(_trait_list(doc, safety.get(key), f"safety.{key}"))

    signoffs = root.get("signoffs")
    if signoffs is not None:
        if not isinstance(signoffs, list):
            raise doc.error("signoffs", f"expected a list of strings, got {_describe(signoffs)}")
        phrases = [_string(doc, s, f"signoffs[{i}]", required=True) for i, s in enumerate(signoffs)]
        if phrases:
            quoted = "; ".join(f'"{p}"' for p in phrases)
            traits.append(Trait(f"I often close a reply with one of my sign-offs, such as {quoted}."))

    examples = []
    raw_examples = root.get("examples")
    if raw_examples is not None:
        if not isinstance(raw_examples, list):
            raise doc.error("examples", f"expected a list of {{prompt, response}}, got {_describe(raw_examples)}")
        for index, example in enumerate(raw_examples):
            path = f"examples[{index}]"
            _mapping(doc, example, path, ("prompt", "response"))
            examples.append(
                (
                    _string(doc, example.get("prompt"), f"{path}.prompt", required=True),
                    _string(doc, example.get("response"), f"{path}.response", required=True),
                )
            )

    name = meta.get("name", source.stem)
    if not isinstance(name, str):
        raise doc.error("meta.name", f"expected a string, got {_describe(name)}")
    return Constitution(
        name=name,
        traits=tuple(traits),
        description=_string(doc, meta.get("description"), "meta.description"),
        examples=tuple(examples),
        source=str(source),
        meta={k: v for k, v in meta.items() if k != "name"},
    )


# --- JSON (the paper's format) ----------------------------------------------------------------


def _json_line_of(text: str, index: int) -> int | None:
    """Best-effort line of the ``index``-th top-level list item, via YAML (JSON is YAML)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if isinstance(node, yaml.SequenceNode) and index < len(node.value):
        return node.value[index].start_mark.line + 1
    return None


def _trait_from_object(obj: Any, where: str, field_prefix: str) -> Trait:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: {field_prefix}: expected an object with 'trait' and 'questions'")
    unknown = set(obj) - {"trait", "questions", "clarification"}
    if unknown:
        raise DataFormatError(
            f"{where}: {field_prefix}: unknown key {sorted(unknown)[0]!r} (expected trait, questions)"
        )
    text = obj.get("trait")
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(f"{where}: {field_prefix}.trait: expected a non-empty string")
    questions = obj.get("questions", [])
    if not isinstance(questions, list):
        raise DataFormatError(f"{where}: {field_prefix}.questions: expected a list of strings")
    for q_index, question in enumerate(questions):
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(f"{where}: {field_prefix}.questions[{q_index}]: expected a non-empty string")
    return Trait(" ".join(text.split()), tuple(" ".join(q.split()) for q in questions))


def _from_json(source: Path, text: str) -> Constitution:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{source}: expected a JSON list of {{trait, questions}} objects")
    traits = []
    for index, obj in enumerate(data):
        line = _json_line_of(text, index)
        where = f"{source}:{line}" if line else str(source)
        traits.append(_trait_from_object(obj, where, f"[{index}]"))
    return Constitution(name=source.stem, traits=tuple(traits), source=str(source))


def _from_jsonl(source: Path, text: str) -> Constitution:
    traits = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
        traits.append(_trait_from_object(obj, f"{source}:{number}", f"[{len(traits)}]"))
    return Constitution(name=source.stem, traits=tuple(traits), source=str(source))


# --- plain text -------------------------------------------------------------------------------

_BULLET = re.compile(r"^(?:[-*\u2022]|\d+[.):])\s+")


def _from_text(source: Path, text: str) -> Constitution:
    traits: list[tuple[str, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indented = raw[0] in " \t"
        content = " ".join(_BULLET.sub("", raw.strip()).split())
        if not content:
            raise DataFormatError(f"{source}:{number}: a bullet with no text")
        if indented:
            if not traits:
                raise DataFormatError(
                    f"{source}:{number}: indented line before any trait "
                    "(indent only the seed questions beneath a trait)"
                )
            traits[-1][1].append(content)
        else:
            traits.append((content, []))
    return Constitution(name=source.stem, traits=tuple(Trait(t, tuple(q)) for t, q in traits), source=str(source))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
