"""How a loader error names its place: ``FILE:LINE: FIELD: message``, on one line."""

from __future__ import annotations

from pathlib import Path

from octrain.core.errors import DataFormatError


def place(source: Path | str, line: int | None, field: str = "") -> str:
    """``FILE:LINE: FIELD`` with whatever parts are known."""
    where = f"{source}:{line}" if line else str(source)
    return f"{where}: {field}" if field else where


def located_error(source: Path | str, line: int | None, field: str, message: str) -> DataFormatError:
    # Newlines in a message would break the one-line promise of the CLI.
    return DataFormatError(f"{place(source, line, field)}: {' '.join(message.split())}")


def describe(value: object) -> str:
    """A value's kind, for 'expected X, got Y' messages."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
