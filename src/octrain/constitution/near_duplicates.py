"""The near-duplicate rule for short texts: when two prompts (or traits) say the same thing.

Two texts are near duplicates when the words they share are more than ``max_overlap`` of the
distinct words of the longer one, so rewording a few words of an earlier prompt does not make a
new one. The constitution loader (a directive that repeats the identity), the quality score
(traits that repeat each other), the prompts stage (expanded prompts) and the held-out check of
evaluation all apply this one rule, so it lives here, below every one of them.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9']+")
# Reading an index list runs at C speed, asking a kept prompt whether it holds a word in Python:
# a list up to this many times as long as the prompts to ask is the quicker way.
_READ_OVER_ASK = 8


def word_set(text: str) -> frozenset[str]:
    """The distinct lower-case words of ``text``: what the rule compares."""
    return frozenset(_WORD.findall(text.lower()))


def words_needed(size: int, max_overlap: float) -> int:
    """The fewest shared words that can make a text of ``size`` distinct words a near duplicate.

    A pair is a near duplicate when ``shared / max(size, other size, 1) > max_overlap``; the other
    text can only make the denominator larger, so ``shared / max(size, 1)`` must already exceed it.
    At least one word is always needed: texts sharing none are never near duplicates. The result
    may exceed ``size``, meaning that no text can be a near duplicate of this one.
    """
    longest = max(size, 1)
    needed = max(1, math.floor(max_overlap * longest))  # never above the answer: floor(t * m) <= t * m
    # Step up with the very test PromptSet.check applies, so that float rounding cannot disagree with it.
    while needed <= size and needed / longest <= max_overlap:
        needed += 1
    return needed


class PromptSet:
    """An ordered set of prompts that refuses exact and near duplicates.

    Two prompts are near duplicates when the words they share are more than
    ``max_overlap`` of the distinct words of the longer one: rewording a few words of an
    earlier prompt does not make a new prompt.

    A check compares the new prompt only with kept prompts that could be near duplicates of it,
    found with the prefix filter of set-similarity joins. Put every prompt's words in one fixed
    order, rarest first. When two prompts of ``a`` and ``b`` words are near duplicates, they share
    at least ``k`` words (:func:`words_needed`), and the two of those that come first in the order
    are among the first ``a - k + 2`` words of one and the first ``b - k + 2`` of the other. So a
    kept prompt is indexed under its first words only, and a check reads the index under the new
    prompt's first words and compares only the kept prompts found there twice (once, when a
    single shared word can be enough). The words nearly every prompt holds ("I", "what", "you")
    come last in the order and are seldom read. Reading every word's whole list instead, as this
    class once did, cost each check a step for every kept prompt holding one of those words, so
    the prompts stage and the quality score grew with the square of a constitution's size
    (``benchmarks/constitution_load.py`` measures both ways).

    The order is how many kept prompts held each word when the index was last built (rarest
    first, then by the word itself); the index is built again each time the set has doubled, so
    that the order follows the prompts while rebuilding costs a constant per prompt.
    """

    # The order is first taken at this many prompts; before, every word counts as rare (ordered
    # by itself alone), which costs little while there are so few prompts to read.
    _FIRST_REBUILD = 64

    def __init__(self, max_overlap: float = 0.5) -> None:
        self.max_overlap = max_overlap
        self._words: list[frozenset[str]] = []
        self._exact: set[str] = set()
        self._held_by: Counter[str] = Counter()  # word -> how many kept prompts hold it, now
        self._rarity: dict[str, int] = {}  # word -> how many held it when the index was built
        self._by_word: dict[str, list[int]] = {}  # word -> the kept prompts it is one of the first words of
        self._built_at = 0
        # The checks' work so far: index entries read, and kept prompts compared with a new one
        # (what tests/constitution/test_large_constitutions.py watches grow with a constitution).
        self.entries_read = 0
        self.comparisons = 0

    def __len__(self) -> int:
        return len(self._words)

    def _first_words(self, words: frozenset[str], needed: int) -> list[str]:
        """The first ``len(words) - needed + 2`` of ``words`` in the order: where the first two
        words a near duplicate shares must be."""
        ordered = sorted(words, key=lambda word: (self._rarity.get(word, 0), word))
        return ordered[: len(words) - needed + 2]

    def _index(self, index: int) -> None:
        words = self._words[index]
        needed = words_needed(len(words), self.max_overlap)
        if needed <= len(words):  # else nothing can be a near duplicate of it
            for word in self._first_words(words, needed):
                self._by_word.setdefault(word, []).append(index)

    def _rebuild(self) -> None:
        self._rarity = dict(self._held_by)
        self._by_word = {}
        for index in range(len(self._words)):
            self._index(index)
        self._built_at = len(self._words)

    def check(self, text: str) -> str | None:
        """Why ``text`` would be refused (``duplicate`` / ``near-duplicate``), or None."""
        key = " ".join(text.lower().split())
        if key in self._exact:
            return "duplicate"
        words = word_set(text)
        needed = words_needed(len(words), self.max_overlap)
        if needed > len(words):
            return None
        first = self._first_words(words, needed)
        # Where one shared word can be enough (needed == 1), every kept prompt met is compared.
        # Otherwise only those met under two of the first words: the last (most common) of them
        # then meets no prompt that is not met already, so its list, the longest, is read only
        # when the prompts met so far are not fewer; else they are asked whether they hold it.
        last = first.pop() if needed >= 2 and len(first) > 1 else None
        met: set[int] = set()
        met_twice: set[int] = set()
        for word in first:
            entries = self._by_word.get(word, ())
            self.entries_read += len(entries)
            # Set operations, so that the long lists of common words are read at C speed.
            met_twice.update(met.intersection(entries))
            met.update(entries)
        if last is not None:
            entries = self._by_word.get(last, ())
            if len(entries) <= _READ_OVER_ASK * len(met):
                self.entries_read += len(entries)
                met_twice.update(met.intersection(entries))
            else:
                self.entries_read += len(met)
                met_twice.update(index for index in met - met_twice if last in self._words[index])
        candidates = met_twice if needed >= 2 else met
        self.comparisons += len(candidates)
        for index in candidates:
            kept = self._words[index]
            if len(words & kept) / max(len(words), len(kept), 1) > self.max_overlap:
                return "near-duplicate"
        return None

    def add(self, text: str) -> str | None:
        """Add ``text`` unless refused; returns the reason for a refusal, or None."""
        reason = self.check(text)
        if reason is None:
            words = word_set(text)
            self._words.append(words)
            self._exact.add(" ".join(text.lower().split()))
            self._held_by.update(words)
            if len(self._words) >= max(self._FIRST_REBUILD, 2 * self._built_at):
                self._rebuild()
            else:
                self._index(len(self._words) - 1)
        return reason
