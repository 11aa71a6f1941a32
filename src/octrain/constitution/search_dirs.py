"""The directories a constitution is looked up in by name, and the one a new persona is saved to.

In lookup order:

1. ``./constitutions`` of the working directory, when that is not the checkout's own (a user's
   project keeps its personas beside it, and they win);
2. the user's constitution directory (:func:`octrain.core.user_dirs.user_constitutions_dir`,
   ``$OCTRAIN_DATA_DIR/constitutions``), found from any working directory;
3. the shipped ``constitutions/`` of the checkout (:func:`octrain.core.paths.constitution_dirs`).

A new persona (``octrain constitution new``, the studio's editor and wizard) goes to the first of
them: ``./constitutions`` in a directory of the user's, and the user's constitution directory when
octrain runs from its checkout, whose ``constitutions/`` is tracked and shipped.
"""

from __future__ import annotations

from pathlib import Path

from octrain.core.paths import constitution_dirs
from octrain.core.user_dirs import user_constitutions_dir


def lookup_dirs() -> list[Path]:
    """The directories a constitution name is looked up in, in that order (see the module docstring)."""
    *local, shipped = constitution_dirs()  # [./constitutions, shipped], or [shipped] in the checkout
    ordered: list[Path] = []
    seen: set[Path] = set()
    for directory in [*local, user_constitutions_dir(), shipped]:
        resolved = directory.resolve()
        if resolved not in seen:  # OCTRAIN_DATA_DIR may point at one of the others
            seen.add(resolved)
            ordered.append(directory)
    return ordered


def new_persona_dir() -> Path:
    """Where a new persona's file goes: the first directory looked in, never the shipped one."""
    first = lookup_dirs()[0]
    shipped = constitution_dirs()[-1]
    return user_constitutions_dir() if first.resolve() == shipped.resolve() else first
