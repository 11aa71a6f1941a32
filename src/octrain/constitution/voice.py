"""``persona.voice`` as the teacher sees it: a string as written, or the Studio's mapping in octrain's words.

The Studio documents ``voice`` as either a sentence or a mapping of ``tone``, ``formality``,
``vocabulary`` and ``avoid``. The teacher only reads numbered traits, so a mapping becomes
first-person sentences: one for how the character sounds, one for what it avoids (a
constraint reads more clearly on its own line).
"""

from __future__ import annotations

VOICE_KEYS = ("tone", "formality", "vocabulary", "avoid")


def _series(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _phrase(value: str | list[str]) -> str:
    items = [value] if isinstance(value, str) else value
    return _series([" ".join(item.split()).rstrip(".;,") for item in items])


def voice_traits(voice: dict[str, str | list[str]]) -> list[tuple[str, str]]:
    """``(key, sentence)`` pairs for a validated voice mapping, in the order the teacher reads them.

    The key is the first voice field a sentence renders, so errors and notes can point at it.
    """
    described = [
        (key, f"{_phrase(voice[key])} in {key}") for key in ("tone", "formality", "vocabulary") if key in voice
    ]
    sentences = []
    if described:
        first_key = described[0][0]
        sentences.append((first_key, f"My way of speaking is {_series([part for _, part in described])}."))
    if "avoid" in voice:
        sentences.append(("avoid", f"When I speak, I steer clear of {_phrase(voice['avoid'])}."))
    return sentences
