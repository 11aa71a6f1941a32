"""Where octrain keeps what a user makes outside any checkout: the user data directory.

``$OCTRAIN_DATA_DIR`` when set, else ``$XDG_DATA_HOME/octrain``, else ``~/.local/share/octrain``
(the XDG rule, as :func:`octrain.models.tiny.cache_root` follows it for built artefacts). It holds
``constitutions/``: the personas a user drafts or saves while the working directory's
``constitutions/`` is the checkout's own, tracked one, which a user's files must not land in.
Every lookup of a constitution by name searches it (:mod:`octrain.constitution.search_dirs`).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "OCTRAIN_DATA_DIR"


def user_data_root() -> Path:
    """``$OCTRAIN_DATA_DIR``, else ``$XDG_DATA_HOME/octrain``, else ``~/.local/share/octrain``."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "octrain"


def user_constitutions_dir() -> Path:
    """The user's own constitution directory in the user data directory (it may not exist yet)."""
    return user_data_root() / "constitutions"
