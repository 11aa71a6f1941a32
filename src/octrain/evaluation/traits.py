"""The list of one-word character traits used by the revealed-preference evaluation.

The model is shown two traits, asked to embody one of them, and a judge says which one it
picked; Elo over many such choices ranks the traits the model gravitates to. The shipped
list (``data/traits.txt``, 144 adjectives mixing appealing, unappealing and neutral traits)
is the default; a project can pass its own ``.txt`` file with one trait per line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from octrain.core.errors import DataFormatError
from octrain.core.files import read_text

BUILTIN = "builtin"


def load_traits(source: str = BUILTIN) -> list[str]:
    """Read a trait list: the shipped one (``"builtin"``) or a text file, one trait per line.

    Blank lines are skipped and surrounding whitespace is trimmed. Because a judge has to
    name the trait back in a single tag, each trait must be one token, and two entries that
    differ only in case would make its answer ambiguous, so both are errors.

    Args:
        source: ``"builtin"`` or a path to a ``.txt`` file.

    Returns:
        The traits in file order.

    Raises:
        DataFormatError: the file is missing, lists no traits, contains a trait with
            whitespace inside it, or repeats a trait; the message names the file and line.
    """
    if source == BUILTIN:
        origin = "octrain/data/traits.txt (builtin)"
        text = resources.files("octrain").joinpath("data/traits.txt").read_text(encoding="utf-8")
    else:
        path = Path(source).expanduser()
        origin = str(path)
        text = read_text(path, "trait list")  # a missing or non-UTF-8 file: one line naming it

    traits: list[str] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        trait = line.strip()
        if not trait:
            continue
        if any(char.isspace() for char in trait):
            raise DataFormatError(f"{origin}:{number}: a trait must be a single word, got {trait!r}")
        key = trait.casefold()
        if key in first_seen:
            raise DataFormatError(f"{origin}:{number}: duplicate trait {trait!r} (first on line {first_seen[key]})")
        first_seen[key] = number
        traits.append(trait)
    if not traits:
        raise DataFormatError(f"{origin}: no traits found")
    return traits
