"""Finding and loading a constitution file: decode it, tell its format by content, read, check.

The extension is only a hint. Text that opens with ``[`` or ``{`` is JSON (a list) or JSON
lines whatever the file is called, because the paper's constitutions are JSON lists saved as
``.txt``; read as plain text, each of their lines would become a trait. A Studio YAML file
is YAML even when written in JSON's syntax.
"""

from __future__ import annotations

from pathlib import Path

from octrain.constitution.checks import finish
from octrain.constitution.flat import NotJson, draft_from_lines, draft_from_list, looks_like_json, parse_json_or_lines
from octrain.constitution.model import Constitution, Draft
from octrain.constitution.plain import read_plain_text
from octrain.constitution.studio import YAML_KEYS, read_studio_yaml
from octrain.constitution.where import located_error
from octrain.core.errors import DataFormatError

SUFFIXES = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".jsonl": "jsonl",
    ".txt": "text",
    ".md": "text",
}


def read_text(source: Path) -> str:
    """The file's text, or one line saying why it is not UTF-8 text."""
    data = source.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(f"{source}: the file is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # tolerate the byte-order mark some editors write
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{source}: not a text file (byte {exc.start} is not UTF-8); a constitution is UTF-8 text"
        ) from None
    if "\x00" in text:
        raise DataFormatError(f"{source}: not a text file (it contains NUL bytes); a constitution is UTF-8 text")
    return text


def _read_json_like(source: Path, text: str, kind: str) -> Draft | None:
    """The draft of JSON or JSON-lines text; None for a ``.yaml`` file that only YAML can read."""
    try:
        whole, rows = parse_json_or_lines(text)
    except NotJson as exc:
        if kind == "yaml":
            return None  # flow-style YAML (`{meta: ...}`) is not JSON
        raise located_error(
            source, exc.line, "", f"neither a JSON list nor JSON lines: {exc.message} (column {exc.column})"
        ) from None
    if rows is not None:
        return draft_from_lines(source, rows)
    if isinstance(whole, list):
        return draft_from_list(source, text, whole)
    if isinstance(whole, dict) and set(whole) & set(YAML_KEYS):
        return read_studio_yaml(source, text)  # the Studio schema written as JSON: JSON is YAML
    raise located_error(
        source,
        1,
        "",
        "expected a JSON list of {trait, questions} objects, or one such object per line (JSON lines); "
        f"got {'a single object' if isinstance(whole, dict) else type(whole).__name__}",
    )


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a constitution file of any supported format.

    Raises:
        DataFormatError: the file is missing, not text, of an unknown kind, or does not
            validate; the message is one line naming the file, the line and the field.
    """
    source = Path(path)
    kind = SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise DataFormatError(
            f"{source}: unknown constitution format '{source.suffix}' (expected one of {', '.join(SUFFIXES)})"
        )
    if not source.is_file():
        raise DataFormatError(f"{source}: constitution file not found")
    text = read_text(source)
    if not text.strip():
        raise DataFormatError(f"{source}: the file is empty")
    draft = None
    if kind in ("json", "jsonl") or looks_like_json(text):
        draft = _read_json_like(source, text, kind)
    if draft is None:
        draft = read_studio_yaml(source, text) if kind == "yaml" else read_plain_text(source, text)
    return finish(source, draft)


def find_constitution(name_or_path: str, search_dirs: list[Path]) -> Path:
    """Resolve a constitution given as a path, or as a bare name looked up in ``search_dirs``."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix and candidate.is_file():
        return candidate
    for directory in search_dirs:
        for suffix in SUFFIXES:
            path = directory / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    known = sorted({p.stem for d in search_dirs if d.is_dir() for p in d.iterdir() if p.suffix in SUFFIXES})
    raise DataFormatError(
        f"constitution {name_or_path!r} not found (looked in {', '.join(map(str, search_dirs))}); "
        f"available: {', '.join(known) or 'none'}"
    )
