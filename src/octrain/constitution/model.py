"""The one type every constitution format loads into, and the draft the readers fill in.

A reader turns a file into a :class:`Draft`: the same content as a :class:`Constitution`, but
every string still carries the line and the field it came from. The checks that are the same
for every format (:mod:`octrain.constitution.checks`) run on the draft, so their errors can
point at the line, and only then does it become a :class:`Constitution`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Trait:
    """One first-person statement of character, with the user questions meant to draw it out.

    ``questions`` are the hand-written seeds the prompts stage expands from; ``additional``
    are prompts written ahead of time (the paper's ``additional_questions``), used as they are
    before any expansion is asked for. ``section`` says where a Studio YAML kept the trait
    (``directives.behavior``, ...), so a conversion back to YAML can put it there again.
    """

    text: str
    questions: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    section: str = field(default="", compare=False)


@dataclass(frozen=True)
class Constitution:
    """A persona: its name, its numbered traits and optional descriptive extras.

    ``voice`` and ``signoffs`` keep the Studio fields as written (the traits hold what the
    teacher sees of them); they matter only when the constitution is written back out.
    """

    name: str
    traits: tuple[Trait, ...]
    description: str = ""
    examples: tuple[tuple[str, str], ...] = ()
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    voice: str | dict[str, Any] | None = None
    signoffs: tuple[str, ...] = ()

    def numbered_traits(self) -> str:
        """The traits as the teacher sees them: ``1: ...`` one per line."""
        return "\n".join(f"{index}: {trait.text}" for index, trait in enumerate(self.traits, start=1))

    @property
    def question_count(self) -> int:
        return sum(len(trait.questions) for trait in self.traits)

    @property
    def additional_count(self) -> int:
        return sum(len(trait.additional) for trait in self.traits)


@dataclass(frozen=True)
class Located:
    """A string from a constitution file, with the line (1-based; None if unknown) and field it came from."""

    text: str
    line: int | None
    field: str


@dataclass
class DraftTrait:
    text: Located
    questions: list[Located] = field(default_factory=list)
    additional: list[Located] = field(default_factory=list)
    section: str = ""


@dataclass
class Draft:
    """What a reader found in a file, before the shared checks."""

    name: str
    traits: list[DraftTrait]
    description: str = ""
    examples: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    voice: str | dict[str, Any] | None = None
    signoffs: list[str] = field(default_factory=list)
    name_line: int | None = None
