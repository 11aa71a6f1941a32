"""The Open Character Studio's YAML schema, read in full into a :class:`Draft`.

``meta{name, version, description, tags, author}``, ``persona{identity, voice}`` (identity
required; voice a string or a ``{tone, formality, vocabulary, avoid}`` mapping),
``directives{personality, behavior, constraints}``, ``safety{refusals, boundaries}``,
``examples[{prompt, response}]`` and ``signoffs``. A directive is a string, or (octrain's
extension, which the Studio ignores) ``{trait, questions, additional_questions}``.

Identity, voice, every directive and the sign-offs become the traits the teacher sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from octrain.constitution.model import Draft, DraftTrait, Located
from octrain.constitution.voice import VOICE_KEYS, voice_traits
from octrain.constitution.where import describe
from octrain.constitution.yaml_lines import LocatedYaml

YAML_KEYS = ("meta", "persona", "directives", "safety", "examples", "signoffs")
META_KEYS = ("name", "version", "description", "tags", "author")
PERSONA_KEYS = ("identity", "voice")
DIRECTIVE_KEYS = ("personality", "behavior", "constraints")
SAFETY_KEYS = ("refusals", "boundaries")
TRAIT_KEYS = ("trait", "questions", "additional_questions")


def _string(doc: LocatedYaml, value: Any, path: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise doc.error(path, f"expected a non-empty string, got {describe(value)}")
    return " ".join(value.split())


def _located(doc: LocatedYaml, value: Any, path: str) -> Located:
    return Located(_string(doc, value, path, required=True), doc.line(path), path)


def _mapping(doc: LocatedYaml, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping with keys {', '.join(allowed)}, got {describe(value)}")
    for key in value:
        if key not in allowed:
            child = f"{path}.{key}" if path else key
            raise doc.error(child, f"unknown key {key!r} (expected one of {', '.join(allowed)})")
    return value


def _strings(doc: LocatedYaml, value: Any, path: str, what: str) -> list[Located]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list of {what}, got {describe(value)}")
    return [_located(doc, item, f"{path}[{i}]") for i, item in enumerate(value)]


def _trait_list(doc: LocatedYaml, value: Any, path: str) -> list[DraftTrait]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list of traits, got {describe(value)}")
    traits = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if isinstance(item, str):
            traits.append(DraftTrait(_located(doc, item, item_path), section=path))
        elif isinstance(item, dict):
            _mapping(doc, item, item_path, TRAIT_KEYS)
            if "trait" not in item:
                raise doc.error(item_path, "missing key 'trait'")
            traits.append(
                DraftTrait(
                    _located(doc, item["trait"], f"{item_path}.trait"),
                    _strings(doc, item.get("questions"), f"{item_path}.questions", "questions"),
                    _strings(doc, item.get("additional_questions"), f"{item_path}.additional_questions", "questions"),
                    section=path,
                )
            )
        else:
            raise doc.error(
                item_path, f"expected a string or a mapping with 'trait' and 'questions', got {describe(item)}"
            )
    return traits


def _meta(doc: LocatedYaml, meta: dict[str, Any]) -> dict[str, Any]:
    """The descriptive fields besides the name, checked for the types the Studio documents."""
    kept: dict[str, Any] = {}
    for key in ("version", "description", "author"):
        value = meta.get(key)
        if value is None:
            continue
        if key == "version" and isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[key] = value
        else:
            kept[key] = _string(doc, value, f"meta.{key}", required=True)
    tags = meta.get("tags")
    if tags is not None:
        if isinstance(tags, str):
            tags = [tags]
        kept["tags"] = [item.text for item in _strings(doc, tags, "meta.tags", "tags")]
    return kept


def _voice(doc: LocatedYaml, value: Any) -> tuple[str | dict[str, Any] | None, list[DraftTrait]]:
    """``persona.voice`` as written, and the traits it renders to."""
    path = "persona.voice"
    if value is None:
        return None, []
    if isinstance(value, str):
        located = _located(doc, value, path)
        return located.text, [DraftTrait(located, section=path)]
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a string or a mapping of {', '.join(VOICE_KEYS)}, got {describe(value)}")
    _mapping(doc, value, path, VOICE_KEYS)
    if not value:
        raise doc.error(path, f"an empty mapping (give at least one of {', '.join(VOICE_KEYS)})")
    voice: dict[str, Any] = {}
    for key, item in value.items():
        child = f"{path}.{key}"
        if isinstance(item, list):
            if not item:
                raise doc.error(child, "an empty list")
            voice[key] = [entry.text for entry in _strings(doc, item, child, "strings")]
        else:
            voice[key] = _string(doc, item, child, required=True)
    traits = [
        DraftTrait(Located(text, doc.line(f"{path}.{key}"), f"{path}.{key}"), section=path)
        for key, text in voice_traits(voice)
    ]
    return voice, traits


def read_studio_yaml(source: Path, text: str) -> Draft:
    doc = LocatedYaml(source, text)
    root = _mapping(doc, doc.value, "", YAML_KEYS)
    meta = _mapping(doc, root.get("meta"), "meta", META_KEYS)
    persona = _mapping(doc, root.get("persona"), "persona", PERSONA_KEYS)
    directives = _mapping(doc, root.get("directives"), "directives", DIRECTIVE_KEYS)
    safety = _mapping(doc, root.get("safety"), "safety", SAFETY_KEYS)

    if persona.get("identity") is None:
        raise doc.error(
            "persona.identity",
            "missing; the Studio schema requires it (a first-person statement of who the character is)",
        )
    # Identity and voice are part of the character too: the teacher sees them as traits.
    traits = [DraftTrait(_located(doc, persona["identity"], "persona.identity"), section="persona.identity")]
    voice, voice_part = _voice(doc, persona.get("voice"))
    traits.extend(voice_part)
    for key in DIRECTIVE_KEYS:
        traits.extend(_trait_list(doc, directives.get(key), f"directives.{key}"))
    for key in SAFETY_KEYS:
        traits.extend(_trait_list(doc, safety.get(key), f"safety.{key}"))

    signoffs = _strings(doc, root.get("signoffs"), "signoffs", "strings")
    if signoffs:
        quoted = "; ".join(f'"{s.text}"' for s in signoffs)
        sentence = f"I often close a reply with one of my sign-offs, such as {quoted}."
        traits.append(DraftTrait(Located(sentence, doc.line("signoffs"), "signoffs"), section="signoffs"))

    examples = []
    raw_examples = root.get("examples")
    if raw_examples is not None:
        if not isinstance(raw_examples, list):
            raise doc.error("examples", f"expected a list of {{prompt, response}}, got {describe(raw_examples)}")
        for index, example in enumerate(raw_examples):
            path = f"examples[{index}]"
            if not isinstance(example, dict):
                raise doc.error(path, f"expected a mapping with keys prompt, response, got {describe(example)}")
            _mapping(doc, example, path, ("prompt", "response"))
            prompt = _string(doc, example.get("prompt"), f"{path}.prompt", required=True)
            examples.append((prompt, _string(doc, example.get("response"), f"{path}.response", required=True)))

    name = meta.get("name", source.stem)
    if not isinstance(name, str):
        raise doc.error("meta.name", f"expected a string, got {describe(name)}")
    return Draft(
        name=name,
        traits=traits,
        description=_string(doc, meta.get("description"), "meta.description"),
        examples=examples,
        meta=_meta(doc, meta),
        voice=voice,
        signoffs=[s.text for s in signoffs],
        name_line=doc.lines.get("meta.name"),
    )
