"""Where a new persona's constitution file goes, and what writing it would replace.

A persona is named by its file (``NAME.yaml``), and the runs find it by that name in the search
directories (:func:`octrain.constitution.search_dirs.lookup_dirs`: the working directory's
``./constitutions``, the user's constitution directory, the shipped one).
So a new persona's name must be one the loader accepts, and its file must not silently replace,
or shadow, a persona of the same name already there: these functions say where the file goes and
refuse (:class:`PersonaExists`) unless replacing was asked for. Drafting
(:mod:`octrain.constitution.drafting`) and the studio's editor both save through them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from octrain.constitution.load import SUFFIXES
from octrain.constitution.search_dirs import lookup_dirs, new_persona_dir
from octrain.core.errors import ConfigError, OctrainError

# The loader's own rule for a name (checks._NAME_PATTERN); checked before any request is sent,
# since a name that cannot be saved should not cost a model call.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PersonaExists(OctrainError, FileExistsError):
    """A constitution of that name (or the target file) exists and replacing it was not asked for."""


def check_name(name: str) -> str:
    """``name`` if the loader would accept it as a persona's name (it names files and run directories)."""
    if not _NAME.match(name) or name.endswith(".rejected"):
        raise ConfigError(
            f"persona name {name!r} must be letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return name


def user_constitution_dir() -> Path:
    """Where a new persona goes: the first directory ``octrain constitution list`` and the runs search,
    or the user's constitution directory when that first one is the checkout's shipped, tracked one."""
    return new_persona_dir()


def existing_personas(name: str, search_dirs: Sequence[Path] | None = None) -> list[Path]:
    """Every constitution file named ``name`` in the search directories, in lookup order."""
    found = []
    for directory in search_dirs if search_dirs is not None else lookup_dirs():
        for suffix in SUFFIXES:
            path = directory / f"{name}{suffix}"
            if path.is_file():
                found.append(path)
    return found


def target_path(name: str, out: str | Path | None = None) -> Path:
    """``out``, or ``NAME.yaml`` in the user constitution directory; YAML only, the format drafted."""
    if out is None:
        return user_constitution_dir() / f"{name}.yaml"
    path = Path(out).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(
            f"--out {path}: a drafted constitution is YAML (.yaml or .yml); "
            "convert it afterwards with `octrain constitution convert`"
        )
    return path


def check_target(name: str, target: Path, *, force: bool) -> list[Path]:
    """What writing ``target`` would replace or shadow; refuses without ``force``.

    Returns the existing files of that persona (for a message saying what was replaced or shadowed).

    Raises:
        PersonaExists: ``target`` exists, or a constitution named ``name`` exists in a search
            directory, and ``force`` is False; or (even with ``force``) a file of that name with another
            extension sits beside ``target``, which the new file could not replace.
    """
    dirs = lookup_dirs()
    in_search = any(target.parent.resolve() == d.resolve() for d in dirs)
    # A file outside the search directories replaces no persona, only itself.
    existing = existing_personas(name, dirs) if in_search else []
    if target.is_file() and target not in existing:
        existing.insert(0, target)
    if not existing:
        return []
    if not force:
        raise PersonaExists(
            f"a constitution named {name!r} already exists: {existing[0]}; "
            "give --force to replace it, or choose another name"
        )
    beside = [p for p in existing if p.parent.resolve() == target.parent.resolve() and p.name != target.name]
    if beside and in_search:
        raise PersonaExists(
            f"{beside[0]} has the same name in the directory {target} would go to, and --force replaces only "
            f"{target.name}; move or delete {beside[0].name} first"
        )
    return existing
