"""octrain studio: a Streamlit web UI over the same library the command line uses.

``octrain ui`` starts it (:mod:`octrain.cli.ui`). Every action on a page calls the function the
matching CLI command calls (the constitution loader, ``compose_config`` and ``preflight``, the
registry, ``ChatSession``, the serving and deploy planners); the pages only lay out what those
return. What the UI adds of its own is bookkeeping: which background run a button started
(:mod:`octrain.studio.jobs`) and where the studio looks for runs (:mod:`octrain.studio.state`).
"""

from __future__ import annotations

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")

__all__ = ["APP_PATH"]
