"""The plain-text format: one trait a line, its seed questions indented beneath it.

Bullets (``-``, ``*``, ``•``) and numbers (``1.``, ``2)``) are stripped; ``#`` starts a
comment line. Fields are named as in the JSON formats (``[2].questions[0]``) so an error
reads the same whichever format the constitution is in.
"""

from __future__ import annotations

import re
from pathlib import Path

from octrain.constitution.model import Draft, DraftTrait, Located
from octrain.constitution.where import located_error

_BULLET = re.compile(r"^(?:[-*\u2022]|\d+[.):])\s+")


def read_plain_text(source: Path, text: str) -> Draft:
    traits: list[DraftTrait] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indented = raw[0] in " \t"
        content = " ".join(_BULLET.sub("", raw.strip()).split())
        if indented:
            if not traits:
                raise located_error(
                    source,
                    number,
                    "",
                    "indented line before any trait (indent only the seed questions beneath a trait)",
                )
            field = f"[{len(traits) - 1}].questions[{len(traits[-1].questions)}]"
        else:
            field = f"[{len(traits)}].trait"
        if not content:
            raise located_error(source, number, field, "a bullet with no text")
        located = Located(content, number, field)
        if indented:
            traits[-1].questions.append(located)
        else:
            traits.append(DraftTrait(located))
    return Draft(name=source.stem, traits=traits)
