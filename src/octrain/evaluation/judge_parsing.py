"""Reading a judge model's answer out of XML-style tags, without guessing.

Judges are asked to put their choice between tags, e.g. ``<answer>witty</answer>`` or
``<verdict>A</verdict>``. Anything that does not give one clear answer is reported as
``None`` (unparseable) so the caller can count it, instead of being coerced into a
plausible-looking value that would bias the ratings. In particular:

* no tag, an unclosed or nested tag, a self-closing tag, or a tag with attributes;
* an empty answer;
* several tagged answers that disagree -- this also defeats answers that quote the
  instructions (``reply like <answer>witty</answer>``) and then answer something else;
* an answer that is not exactly one of the allowed values, such as ``humble or witty``,
  ``probably witty`` or a trait that was not offered.

Tag names match case-insensitively, the content is trimmed, and it is compared with the
allowed values case-insensitively; the allowed spelling is what comes back.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

VERDICTS = ("A", "B", "tie")
_TAG_NAME = re.compile(r"[A-Za-z][\w-]*")
# Formatting that judges wrap around a bare answer (bold, quotes, a full stop). Stripped only as a
# second attempt, so an allowed value that itself ends in punctuation still matches exactly.
_DECORATION = " \t\r\n*_`'\".!"


def _tag_tokens(text: str, tag: str) -> list[tuple[str, int, int]] | None:
    """The ``open``/``close`` tokens for ``tag`` in order, or None if any is malformed."""
    # Catch every angle-bracket token that starts with the tag name (but not a longer name such as
    # <answers> or <answer-2>), then insist it is exactly <tag> or </tag>.
    candidates = re.finditer(rf"<\s*/?\s*{re.escape(tag)}(?![\w-])[^<>]*>", text, flags=re.IGNORECASE)
    tokens = []
    for found in candidates:
        token = found.group(0)
        if re.fullmatch(rf"<\s*{re.escape(tag)}\s*>", token, flags=re.IGNORECASE):
            tokens.append(("open", found.start(), found.end()))
        elif re.fullmatch(rf"<\s*/\s*{re.escape(tag)}\s*>", token, flags=re.IGNORECASE):
            tokens.append(("close", found.start(), found.end()))
        else:
            return None
    return tokens


def _tagged_contents(text: str, tag: str) -> list[str] | None:
    """Contents of each well-formed ``<tag>...</tag>`` pair, or None if the tags do not pair up."""
    tokens = _tag_tokens(text, tag)
    if not tokens:
        return None
    contents = []
    # Well-formed means strictly open, close, open, close...: two opens in a row is nesting or an
    # unclosed tag, a leading close is a stray, and a trailing open never closes.
    if len(tokens) % 2:
        return None
    for (kind_open, _, content_start), (kind_close, content_end, _) in zip(tokens[::2], tokens[1::2], strict=True):
        if kind_open != "open" or kind_close != "close":
            return None
        contents.append(text[content_start:content_end].strip())
    return contents


def _match_allowed(content: str, allowed: dict[str, str]) -> str | None:
    key = content.casefold()
    if key in allowed:
        return allowed[key]
    return allowed.get(content.strip(_DECORATION).casefold())


def parse_tagged(text: str, tag: str, allowed: Collection[str] | None = None) -> str | None:
    """The single answer a judge gave between ``<tag>`` and ``</tag>``, or None.

    Args:
        text: the judge's full reply.
        tag: the tag name, e.g. ``"answer"``; matched case-insensitively.
        allowed: the values the judge was offered. When given, the answer must be exactly
            one of them (ignoring case, surrounding whitespace and wrapping quotes, bold
            markers or a final full stop) and is returned in the spelling used here. When
            None, any non-empty content is accepted and returned trimmed.

    Returns:
        The answer, or None when the reply is unparseable (see the module docstring). If the
        same answer is tagged several times it is accepted; differing answers are not.

    Raises:
        ValueError: ``tag`` is not a plain tag name, or ``allowed`` is empty, holds an empty
            value or holds two values that differ only in case.
    """
    if not _TAG_NAME.fullmatch(tag):
        raise ValueError(f"tag must be a plain name such as 'answer', got {tag!r}")
    lookup: dict[str, str] | None = None
    if allowed is not None:
        if isinstance(allowed, str):
            # A bare string is a collection of its characters, which is never what the caller meant.
            raise ValueError("allowed must be a collection of strings, not a single string")
        lookup = {}
        for value in allowed:
            key = value.strip().casefold()
            if not key:
                raise ValueError("allowed values must be non-empty")
            if key in lookup and lookup[key] != value:
                raise ValueError(f"allowed values {lookup[key]!r} and {value!r} differ only in case")
            lookup[key] = value
        if not lookup:
            raise ValueError("allowed must name at least one value")

    contents = _tagged_contents(text, tag)
    if contents is None:
        return None
    answers = []
    for content in contents:
        if not content:
            return None
        answer = content if lookup is None else _match_allowed(content, lookup)
        if answer is None:
            return None
        answers.append(answer)
    if len({answer.casefold() for answer in answers}) != 1:
        return None
    return answers[0]


def parse_verdict(text: str) -> str | None:
    """A pairwise judge's ``<verdict>``: ``"A"``, ``"B"`` or ``"tie"``, or None if unclear."""
    return parse_tagged(text, "verdict", VERDICTS)


@dataclass
class ParseCounts:
    """Running tally of how many judge replies parsed, for reporting alongside the ratings.

    Attributes:
        parsed: replies that gave one clear answer.
        unparseable: replies that did not (the parser returned None).
    """

    parsed: int = 0
    unparseable: int = 0

    def record(self, answer: T | None) -> T | None:
        """Count one parser result and hand it back, so it can wrap a parse call inline."""
        if answer is None:
            self.unparseable += 1
        else:
            self.parsed += 1
        return answer

    @property
    def total(self) -> int:
        """All replies seen."""
        return self.parsed + self.unparseable

    @property
    def unparseable_rate(self) -> float:
        """Fraction of replies that did not parse (0.0 before any reply is recorded)."""
        return self.unparseable / self.total if self.total else 0.0
