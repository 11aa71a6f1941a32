"""Checks every format shares, run on a reader's draft before it becomes a :class:`Constitution`.

A file can be well-formed and still not be what its author meant: a JSON file whose
brackets broke, read line by line, yields "traits" like ``{`` and ``"trait": "I ...",``.
Those stop the load with the line at fault. Other oddities may be meant and are logged:
a question shared by two traits (the prompts stage keeps it once), an identity the
directives repeat (merged into one trait, so the teacher does not read it twice).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from octrain.constitution.model import Constitution, Draft, DraftTrait, Located, Trait
from octrain.constitution.near_duplicates import PromptSet, word_set
from octrain.constitution.where import located_error, place

logger = logging.getLogger("octrain.constitution")

MIN_TRAITS = 2
NEAR_DUPLICATE_OVERLAP = 0.5
MIN_NEAR_DUPLICATE_WORDS = 6  # the prompts stage's default rule: more than half the words shared
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A JSON key (`"trait": ...`) or a list item with its comma (`"How do I ...?",`).
_JSON_FRAGMENT = re.compile(r'^[\[{]?\s*"[^"]*"\s*(?::|,\s*$)')


def _check_text(source: Path, item: Located) -> None:
    if not any(ch.isalnum() for ch in item.text):
        raise located_error(source, item.line, item.field, f"{item.text!r} has no letters or digits")
    if _JSON_FRAGMENT.match(item.text) or item.text.endswith(("{", "[")):
        raise located_error(
            source,
            item.line,
            item.field,
            f"{item.text!r} looks like a line of JSON, not text; a JSON file must parse as a whole "
            "(check its brackets, quotes and commas)",
        )


def _merge_identity(source: Path, traits: list[DraftTrait]) -> list[DraftTrait]:
    """Fold directives that nearly repeat the identity into the identity trait."""
    identity = next((t for t in traits if t.section == "persona.identity"), None)
    if identity is None:
        return traits
    kept = []
    for trait in traits:
        if trait is not identity and trait.section.startswith("directives."):
            rule = PromptSet(NEAR_DUPLICATE_OVERLAP)
            rule.add(identity.text.text)
            verdict = rule.check(trait.text.text)
            # In a sentence of a few words "I am" alone is half of it: short directives
            # count as repeats only when they repeat the identity exactly.
            if verdict == "duplicate" or (verdict and len(word_set(trait.text.text)) >= MIN_NEAR_DUPLICATE_WORDS):
                logger.info(
                    "%s: near-duplicate of persona.identity (line %s); merged into it, keeping the identity's wording",
                    place(source, trait.text.line, trait.text.field),
                    identity.text.line,
                )
                identity.questions.extend(trait.questions)
                identity.additional.extend(trait.additional)
                continue
        kept.append(trait)
    return kept


def _warn_repeated_questions(source: Path, traits: list[DraftTrait]) -> None:
    first_seen: dict[str, tuple[int, Located]] = {}
    for index, trait in enumerate(traits):
        for question in [*trait.questions, *trait.additional]:
            key = " ".join(question.text.lower().split())
            if key in first_seen and first_seen[key][0] != index:
                earlier = first_seen[key][1]
                logger.warning(
                    "%s: the same question as %s (line %s) of another trait; the prompts stage keeps it once",
                    place(source, question.line, question.field),
                    earlier.field,
                    earlier.line,
                )
            first_seen.setdefault(key, (index, question))


def finish(source: Path, draft: Draft) -> Constitution:
    """Run the shared checks on ``draft`` and build the constitution.

    Raises:
        DataFormatError: text that is not a trait (punctuation, JSON fragments), too few
            traits, or a name that cannot name run directories.
    """
    for trait in draft.traits:
        for item in [trait.text, *trait.questions, *trait.additional]:
            _check_text(source, item)
    traits = _merge_identity(source, draft.traits)
    if not traits:
        raise located_error(source, None, "", "no traits found")
    if len(traits) < MIN_TRAITS:
        raise located_error(
            source,
            None,
            "",
            f"only {len(traits)} trait found; a constitution needs at least {MIN_TRAITS} (is the file cut short?)",
        )
    _warn_repeated_questions(source, traits)
    if not _NAME_PATTERN.match(draft.name):
        field = "meta.name" if draft.name_line else ""
        raise located_error(
            source, draft.name_line, field, f"name {draft.name!r} must be letters, digits, '-', '_' or '.'"
        )
    return Constitution(
        name=draft.name,
        traits=tuple(
            Trait(
                t.text.text,
                tuple(q.text for q in t.questions),
                tuple(q.text for q in t.additional),
                section=t.section,
            )
            for t in traits
        ),
        description=draft.description,
        examples=tuple(draft.examples),
        source=str(source),
        meta=draft.meta,
        voice=draft.voice,
        signoffs=tuple(draft.signoffs),
    )
