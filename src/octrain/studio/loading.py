"""Loading a model off the page's thread, so that the page stays usable while it loads.

Streamlit runs a page as a script: a model loaded in the script holds the whole page until it
is in memory (seconds on a GPU box, minutes for a large model on a CPU). A
:class:`BackgroundLoad` loads it in a thread of its own instead, under the process's model lock
(:func:`octrain.studio.state.model_lock`, since loading one engine closes another); the page
draws a "loading" notice, keeps every other control live, and checks back until it is ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class BackgroundLoad:
    """Runs ``load()`` once, in a daemon thread holding ``lock``; remembers how it ended.

    ``close`` is called on the loaded object if the page abandons it (the user picked another
    model meanwhile): after the load when it is still running, at once otherwise.
    """

    def __init__(self, load: Callable[[], Any], *, lock: Any, label: str, close: Callable[[], None]) -> None:
        self.label = label
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self._load, self._lock, self._close = load, lock, close
        # Both flags change under one lock, so that exactly one of _run and abandon closes.
        self._abandoned = False
        self._finished = False
        self._state = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"octrain-load {label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._lock:
                self._load()
        except BaseException as exc:  # shown on the page, which has no other way to hear of it
            self.error = exc
        with self._state:
            self._finished = True
            abandoned = self._abandoned
        if abandoned:
            self._close()

    @property
    def done(self) -> bool:
        return self._finished

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def abandon(self) -> None:
        """The page no longer wants the model: close it now, or when the load ends."""
        with self._state:
            self._abandoned = True
            finished = self._finished
        if finished:
            self._close()
