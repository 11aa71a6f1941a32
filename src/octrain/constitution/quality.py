"""A transparent 0-100 quality score for a constitution, each point with its reason.

The loader (:mod:`octrain.constitution.checks`) stops a file that is not a constitution and
logs oddities; this score grades one that loads, by what makes the teacher's job easy. Five
checks, each worth a fixed share of the 100 points:

* **traits** (20): 8 to 15 traits get full marks (the paper's constitutions have 10). Fewer
  give the teacher little to draw on: 2 traits score 0, rising linearly to 20 at 8. More blur
  the character: 2 points off per trait over 15.
* **first person** (20): the share of traits written as "I ..." (a word among I, I'm, me,
  my, mine, myself), since the teacher is asked to speak as the character.
* **seed questions** (25): per trait, its seed questions up to 5 (the paper's number), as a
  share of 5; averaged over the traits. A trait without questions relies on expansion alone.
* **duplicates** (20): 5 points off for each trait that nearly repeats an earlier one (the
  prompts stage's rule: more than half its words shared) and for each question that another
  trait already asks.
* **length** (15): the share of traits of 8 to 60 words. Shorter ones say too little to act
  on; longer ones usually hold several traits that are better numbered apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from octrain.constitution.checks import NEAR_DUPLICATE_OVERLAP
from octrain.constitution.model import Constitution
from octrain.constitution.near_duplicates import PromptSet  # the prompts stage's own near-duplicate rule

TRAIT_RANGE = (8, 15)
QUESTIONS_PER_TRAIT = 5
WORD_RANGE = (8, 60)
DUPLICATE_PENALTY = 5
_FIRST_PERSON = re.compile(r"\b(i|i'm|i’m|me|my|mine|myself)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    """One part of the score: points earned out of the most it can give, and why."""

    name: str
    points: float
    most: int
    reason: str


@dataclass(frozen=True)
class QualityScore:
    checks: tuple[Check, ...]

    @property
    def total(self) -> int:
        return round(sum(check.points for check in self.checks))


def _numbers(indices: list[int]) -> str:
    """Trait numbers as the teacher sees them (1-based), at most eight shown."""
    shown = ", ".join(str(i + 1) for i in indices[:8])
    return shown + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")


def _traits_check(count: int) -> Check:
    low, high = TRAIT_RANGE
    if count < low:
        points = 20 * max(count - 2, 0) / (low - 2)
        reason = f"{count} traits; {low} to {high} give the teacher enough to draw on"
    elif count > high:
        points = max(20 - 2 * (count - high), 0)
        reason = f"{count} traits; more than {high} blur the character"
    else:
        points = 20
        reason = f"{count} traits (within {low} to {high})"
    return Check("traits", points, 20, reason)


def _first_person_check(constitution: Constitution) -> Check:
    missing = [i for i, trait in enumerate(constitution.traits) if not _FIRST_PERSON.search(trait.text)]
    share = 1 - len(missing) / len(constitution.traits)
    reason = "every trait is in the first person" if not missing else f"not in the first person: {_numbers(missing)}"
    return Check("first person", 20 * share, 20, reason)


def _questions_check(constitution: Constitution) -> Check:
    shares = [min(len(t.questions), QUESTIONS_PER_TRAIT) / QUESTIONS_PER_TRAIT for t in constitution.traits]
    short = [i for i, share in enumerate(shares) if share < 1]
    reason = (
        f"every trait has {QUESTIONS_PER_TRAIT} or more seed questions"
        if not short
        else f"fewer than {QUESTIONS_PER_TRAIT} seed questions: traits {_numbers(short)}"
    )
    return Check("seed questions", 25 * sum(shares) / len(shares), 25, reason)


def _duplicates_check(constitution: Constitution) -> Check:
    seen = PromptSet(NEAR_DUPLICATE_OVERLAP)
    repeated_traits = [i for i, trait in enumerate(constitution.traits) if seen.add(trait.text)]
    asked_by: dict[str, int] = {}
    repeated_questions = 0
    for index, trait in enumerate(constitution.traits):
        for question in (*trait.questions, *trait.additional):
            key = " ".join(question.lower().split())
            if asked_by.setdefault(key, index) != index:
                repeated_questions += 1
    found = len(repeated_traits) + repeated_questions
    parts = []
    if repeated_traits:
        parts.append(f"traits {_numbers(repeated_traits)} nearly repeat an earlier trait")
    if repeated_questions:
        parts.append(f"{repeated_questions} questions are asked by another trait too")
    reason = "; ".join(parts) or "no repeated traits or questions"
    return Check("duplicates", max(20 - DUPLICATE_PENALTY * found, 0), 20, reason)


def _length_check(constitution: Constitution) -> Check:
    low, high = WORD_RANGE
    words = [len(trait.text.split()) for trait in constitution.traits]
    short = [i for i, n in enumerate(words) if n < low]
    long = [i for i, n in enumerate(words) if n > high]
    parts = []
    if short:
        parts.append(f"under {low} words: {_numbers(short)}")
    if long:
        parts.append(f"over {high} words: {_numbers(long)}")
    reason = "; ".join(parts) or f"every trait has {low} to {high} words"
    share = 1 - (len(short) + len(long)) / len(words)
    return Check("length", 15 * share, 15, reason)


def score_constitution(constitution: Constitution) -> QualityScore:
    """The five checks of the module docstring, in order."""
    return QualityScore(
        (
            _traits_check(len(constitution.traits)),
            _first_person_check(constitution),
            _questions_check(constitution),
            _duplicates_check(constitution),
            _length_check(constitution),
        )
    )
