"""Writing a loaded constitution out in another format, and saying what that format cannot hold.

* **yaml** (the Studio schema) holds everything octrain reads. A constitution from a flat
  format gets its first trait as ``persona.identity`` (which the Studio requires) and the
  rest as ``directives.personality``.
* **json** / **jsonl** (the paper's) hold the traits in order with their ``questions`` and
  ``additional_questions``; the Studio's sections, meta fields, examples and the voice
  mapping are not kept (the traits they render to are).
* **text** holds the traits and their seed questions only.

The result loads back into the same numbered traits the teacher sees.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from octrain.constitution.model import Constitution, Trait
from octrain.constitution.studio import DIRECTIVE_KEYS, META_KEYS, SAFETY_KEYS

FORMATS = ("yaml", "json", "jsonl", "text")
EXTENSION_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".jsonl": "jsonl", ".txt": "text", ".md": "text"}
_SECTIONS = tuple(f"directives.{k}" for k in DIRECTIVE_KEYS) + tuple(f"safety.{k}" for k in SAFETY_KEYS)


def _entry(trait: Trait) -> str | dict[str, Any]:
    if not trait.questions and not trait.additional:
        return trait.text
    entry: dict[str, Any] = {"trait": trait.text}
    if trait.questions:
        entry["questions"] = list(trait.questions)
    if trait.additional:
        entry["additional_questions"] = list(trait.additional)
    return entry


def to_yaml(constitution: Constitution) -> str:
    traits = list(constitution.traits)
    identity = next((t for t in traits if t.section == "persona.identity"), traits[0])
    sections: dict[str, list[str | dict[str, Any]]] = {key: [] for key in _SECTIONS}
    if identity.questions or identity.additional:
        # persona.identity is a bare string in the Studio schema; a directive repeating it
        # carries its questions, and the loader merges the two back into one trait.
        sections["directives.personality"].append(_entry(identity))
    for trait in traits:
        if trait is identity:
            continue
        if trait.section == "persona.voice" and constitution.voice is not None:
            continue  # rendered again from persona.voice on loading
        if trait.section == "signoffs" and constitution.signoffs:
            continue  # rendered again from signoffs on loading
        section = trait.section if trait.section in sections else "directives.personality"
        sections[section].append(_entry(trait))

    meta: dict[str, Any] = {"name": constitution.name}
    meta.update({key: constitution.meta[key] for key in META_KEYS if key in constitution.meta and key != "name"})
    if constitution.description and "description" not in meta:
        meta["description"] = constitution.description
    persona: dict[str, Any] = {"identity": identity.text}
    if constitution.voice is not None:
        persona["voice"] = constitution.voice
    document: dict[str, Any] = {"meta": meta, "persona": persona}
    for group, keys in (("directives", DIRECTIVE_KEYS), ("safety", SAFETY_KEYS)):
        filled = {key: sections[f"{group}.{key}"] for key in keys if sections[f"{group}.{key}"]}
        if filled:
            document[group] = filled
    if constitution.examples:
        document["examples"] = [{"prompt": p, "response": r} for p, r in constitution.examples]
    if constitution.signoffs:
        document["signoffs"] = list(constitution.signoffs)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def _objects(constitution: Constitution) -> list[dict[str, Any]]:
    rows = []
    for trait in constitution.traits:
        row: dict[str, Any] = {"trait": trait.text, "questions": list(trait.questions)}
        if trait.additional:
            row["additional_questions"] = list(trait.additional)
        rows.append(row)
    return rows


def to_json(constitution: Constitution) -> str:
    return json.dumps(_objects(constitution), indent=2, ensure_ascii=False) + "\n"


def to_jsonl(constitution: Constitution) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in _objects(constitution))


def to_text(constitution: Constitution) -> str:
    lines = []
    for trait in constitution.traits:
        lines.append(trait.text)
        lines.extend(f"    {question}" for question in trait.questions)
    return "\n".join(lines) + "\n"


def not_kept(constitution: Constitution, target: str, out_stem: str) -> list[str]:
    """What writing ``constitution`` as ``target`` loses, one phrase each; empty for YAML."""
    if target == "yaml":
        return []
    lost = []
    if constitution.name != out_stem:
        lost.append(f"the name {constitution.name!r} (a {target} constitution is named by its file: {out_stem!r})")
    lost.extend(f"meta.{key}" for key in META_KEYS if key in constitution.meta and key != "name")
    if constitution.examples:
        lost.append(f"examples ({len(constitution.examples)} prompt/response pairs)")
    if isinstance(constitution.voice, dict):
        lost.append("persona.voice as a mapping (kept as the traits it renders to)")
    if constitution.signoffs:
        lost.append("signoffs as a list (kept as the trait that quotes them)")
    if any(t.section for t in constitution.traits):
        lost.append("the Studio section of each trait (the traits keep their text and order)")
    if target == "text" and constitution.additional_count:
        carriers = sum(1 for t in constitution.traits if t.additional)
        lost.append(f"additional_questions ({constitution.additional_count} on {carriers} traits)")
    return lost


def render(constitution: Constitution, target: str) -> str:
    writers = {"yaml": to_yaml, "json": to_json, "jsonl": to_jsonl, "text": to_text}
    return writers[target](constitution)
