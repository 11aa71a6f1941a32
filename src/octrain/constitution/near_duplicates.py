"""The near-duplicate rule for short texts: when two prompts (or traits) say the same thing.

Two texts are near duplicates when the words they share are more than ``max_overlap`` of the
distinct words of the longer one, so rewording a few words of an earlier prompt does not make a
new one. The constitution loader (a directive that repeats the identity), the quality score
(traits that repeat each other), the prompts stage (expanded prompts) and the held-out check of
evaluation all apply this one rule, so it lives here, below every one of them.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9']+")


def word_set(text: str) -> frozenset[str]:
    """The distinct lower-case words of ``text``: what the rule compares."""
    return frozenset(_WORD.findall(text.lower()))


class PromptSet:
    """An ordered set of prompts that refuses exact and near duplicates.

    Two prompts are near duplicates when the words they share are more than
    ``max_overlap`` of the distinct words of the longer one: rewording a few words of an
    earlier prompt does not make a new prompt.
    """

    def __init__(self, max_overlap: float = 0.5) -> None:
        self.max_overlap = max_overlap
        self._words: list[frozenset[str]] = []
        self._exact: set[str] = set()
        # word -> the prompts holding it: a new prompt is compared only with those sharing a word.
        self._by_word: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._words)

    def check(self, text: str) -> str | None:
        """Why ``text`` would be refused (``duplicate`` / ``near-duplicate``), or None."""
        key = " ".join(text.lower().split())
        if key in self._exact:
            return "duplicate"
        words = word_set(text)
        shared: Counter[int] = Counter()
        for word in words:
            shared.update(self._by_word.get(word, ()))
        for index, count in shared.items():
            if count / max(len(words), len(self._words[index]), 1) > self.max_overlap:
                return "near-duplicate"
        return None

    def add(self, text: str) -> str | None:
        """Add ``text`` unless refused; returns the reason for a refusal, or None."""
        reason = self.check(text)
        if reason is None:
            index = len(self._words)
            words = word_set(text)
            self._words.append(words)
            self._exact.add(" ".join(text.lower().split()))
            for word in words:
                self._by_word.setdefault(word, []).append(index)
        return reason
