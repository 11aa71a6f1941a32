"""Converting and validating constitution files: what ``octrain constitution convert|validate`` do.

``convert`` takes the format from OUT's extension unless ``--to`` names it (the paper keeps
JSON in ``.txt`` files: ``--to json``), prints what the target format cannot hold, and
writes OUT atomically, so a failed run never leaves half a file. ``validate`` prints one
line per file and exits 0 when every file loads, 2 otherwise, for scripts and CI. The verb's
arguments are parsed in :mod:`octrain.cli.constitution`; ``python -m octrain.constitution``, the
old name, runs the same verb.
"""

from __future__ import annotations

import sys
from pathlib import Path

from octrain.constitution.catalog import resolve_constitution_name
from octrain.constitution.convert import EXTENSION_FORMATS, FORMATS, not_kept, render
from octrain.constitution.load import load_constitution
from octrain.constitution.model import Constitution
from octrain.core.errors import DataFormatError
from octrain.core.files import write_text_atomic


def _load(source: str) -> Constitution:
    """A bare name (``pirate``: no suffix, no folder, no such file) is looked up as ``show`` and a run look
    it up; anything else is read as a file, with that file's own errors."""
    path = Path(source).expanduser()
    if path.exists() or path.suffix or len(path.parts) > 1:
        return load_constitution(source)
    return resolve_constitution_name(source)


def convert(source: str, out: str, target: str | None, who: str = "octrain") -> int:
    """Write ``source`` as ``out``; 0, or 2 with one line on stderr prefixed by ``who``."""
    out_path = Path(out)
    target = target or EXTENSION_FORMATS.get(out_path.suffix.lower())
    if target is None:
        print(
            f"{who}: error: {out}: cannot tell the format from '{out_path.suffix}'; give --to ({', '.join(FORMATS)})",
            file=sys.stderr,
        )
        return 2
    try:
        constitution = _load(source)
    except DataFormatError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    try:
        write_text_atomic(out_path, render(constitution, target))
    except OSError as exc:
        print(f"{who}: error: {out}: cannot write it ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(
        f"{source} -> {out} ({target}): {len(constitution.traits)} traits, {constitution.question_count} seed "
        f"questions, {constitution.additional_count} additional questions"
    )
    for item in not_kept(constitution, target, out_path.stem):
        print(f"  not kept in {target}: {item}")
    return 0


def validate(files: list[str]) -> int:
    """One line per file on stdout; 0 when every file loads, else 2."""
    status = 0
    for name in files:
        try:
            constitution = _load(name)
        except DataFormatError as exc:
            print(exc)
            status = 2
        except OSError as exc:
            print(f"{name}: cannot read the file ({exc.strerror})")
            status = 2
        else:
            print(
                f"{name}: ok ({len(constitution.traits)} traits, {constitution.question_count} seed questions, "
                f"{constitution.additional_count} additional questions)"
            )
    return status
