"""Every constitution file octrain can find, in lookup order: what ``octrain constitution list``
and the studio's gallery show.

The search directories are :func:`octrain.constitution.search_dirs.lookup_dirs` (the working
directory's ``constitutions/`` first, then the user's constitution directory, then the shipped
one). A file whose name an earlier directory already holds is *shadowed*: a run given that name
loads the earlier one. A file that does not load is listed with the loader's first line instead of
a constitution, so one bad file never hides the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from octrain.constitution.load import SUFFIXES, find_constitution, load_constitution
from octrain.constitution.model import Constitution
from octrain.constitution.search_dirs import lookup_dirs
from octrain.core.errors import DataFormatError


@dataclass(frozen=True)
class CatalogEntry:
    """One constitution file in the search directories, loaded (or the loader's error)."""

    path: Path
    directory: Path
    shadowed: bool
    constitution: Constitution | None
    error: str | None


def catalog() -> list[CatalogEntry]:
    """Every constitution file in the search directories, in lookup order, each loaded once."""
    # A listing reads every file; the loader's notes about each would drown it.
    logging.getLogger("octrain.constitution").setLevel(logging.ERROR)
    entries: list[CatalogEntry] = []
    seen: set[str] = set()
    for directory in lookup_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()):
            shadowed = path.stem in seen
            seen.add(path.stem)
            try:
                entries.append(CatalogEntry(path, directory, shadowed, load_constitution(path), None))
            except (DataFormatError, OSError, UnicodeDecodeError) as exc:
                entries.append(CatalogEntry(path, directory, shadowed, None, str(exc).splitlines()[0]))
    return entries


def resolve_constitution_name(name: str) -> Constitution:
    """The constitution a run or command names: a name looked up in the search directories, or a path,
    found and validated (the one lookup the pipeline, the commands and the studio share)."""
    return load_constitution(find_constitution(name, lookup_dirs()))
