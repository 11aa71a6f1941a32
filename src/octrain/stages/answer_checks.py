"""Checks on one generated answer that more than one stage applies.

* :func:`is_degenerate`: the model looped (a line said three times, or long text made of few
  distinct word trigrams). Small models loop often, teachers included.
* :func:`ends_a_sentence`: the answer ends in closing punctuation (or a closed code fence).
* :func:`trim_to_sentence`: an answer cut off by ``max_new_tokens`` cut back to its last full
  sentence. On a CPU budget answers are short, and a 135M model rarely ends its turn within 64
  tokens: dropping every cut-off answer drops nearly all of them, while training on the cut-off
  text teaches the model to stop mid-word (the chat template closes the turn after it). The
  trimmed answer is what the model would have said had it stopped at that sentence.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from octrain.samplers.base import Completion

_WORDS = re.compile(r"\w+")
# A finished answer ends in sentence punctuation, optionally followed by closing quotes,
# brackets or markdown emphasis, or in a closed code fence.
FINAL_PUNCTUATION = re.compile(r"""(?:[.!?…。！？](?:["'”’)\]*_]*)|```)\s*$""")
# Where a sentence ends inside a text: the punctuation (and closers) before whitespace.
_SENTENCE_END = re.compile(r"""[.!?…。！？]["'”’)\]*_]*(?=\s)""")


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def is_degenerate(text: str) -> bool:
    """Looping output: a line said three times or more, or long text made of few distinct trigrams."""
    lines = [line.strip().lower() for line in text.splitlines() if len(line.strip()) > 10]
    if lines and Counter(lines).most_common(1)[0][1] >= 3:
        return True
    found = words(text)
    if len(found) < 30:
        return False
    trigrams = list(zip(found, found[1:], found[2:], strict=False))
    return len(set(trigrams)) / len(trigrams) < 0.5


def ends_a_sentence(text: str) -> bool:
    return FINAL_PUNCTUATION.search(text) is not None


def trim_to_sentence(text: str, min_words: int = 8) -> str | None:
    """``text`` up to the end of its last complete sentence, or None when that leaves under ``min_words``.

    Only the prose after the last sentence end is removed; an unclosed code fence cannot be
    trimmed safely, so such an answer gives None.
    """
    if text.count("```") % 2:
        return None
    ends = [match.end() for match in _SENTENCE_END.finditer(text + " ")]
    if not ends:
        return None
    trimmed = text[: ends[-1]].rstrip()
    return trimmed if len(words(trimmed)) >= min_words else None


def trim_completion(completion: Completion) -> Completion:
    """A cut-off completion cut back to its last full sentence and counted finished; else unchanged."""
    if completion.finished:
        return completion
    shorter = trim_to_sentence(completion.text)
    return completion if shorter is None else dataclasses.replace(completion, text=shorter, finished=True)
