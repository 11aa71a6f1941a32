"""What every studio page shares: where the runs are, the one lock on the loaded model, and the one on Hydra.

The run root comes from ``octrain ui --run-root`` through an environment variable, because
Streamlit runs the app as a script in a server process of its own: the variable is the one
channel that reaches it (and tests set it the same way).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

RUN_ROOT_ENV = "OCTRAIN_STUDIO_RUN_ROOT"

# Hydra's compose API keeps one global state per process: two browser tabs composing a config at
# once would clash, so every page composes (octrain.core.compose.compose_config) holding this lock.
COMPOSE_LOCK = threading.Lock()


def run_root() -> Path:
    """The run root the studio reads and launches into (``runs`` under the working directory by default)."""
    return Path(os.environ.get(RUN_ROOT_ENV) or "runs").expanduser().resolve()


@st.cache_resource
def model_lock() -> threading.Lock:
    """One lock for the whole server process.

    octrain keeps one loaded engine per process (:mod:`octrain.samplers.engine_pool`): loading a
    second model closes the first. Two browser tabs answering at once would close each other's
    model mid-answer, so every page that samples holds this lock while it does. (The engine pool
    is also why loaded samplers are not kept in ``st.cache_resource``: the pool already keeps the
    engine, and a cached sampler could be one the pool has since closed.)
    """
    return threading.Lock()


def error_line(exc: BaseException) -> str:
    """An exception as ``octrain: error: ...``, what the command line prints for it.

    The CLI prints an octrain error from the run itself (validation, preflight) as it is, and
    anything else (a Hydra or OmegaConf error from composing the config) through its own
    one-line formatter, which names the config key; the same two paths here.
    """
    from octrain.__main__ import error_message  # the CLI's own formatter: the UI must say what the CLI says
    from octrain.core.errors import OctrainError

    return f"octrain: error: {exc if isinstance(exc, OctrainError) else error_message(exc)}"
