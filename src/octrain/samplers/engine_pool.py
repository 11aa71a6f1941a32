"""The loaded model engine of a process, kept for the next request of the same model.

Starting an engine is the slow part of sampling on a GPU: a 32B vLLM engine takes minutes to
load its weights, profile memory and capture CUDA graphs. A run asks for the same engine many
times: the teacher writes the prompts and then answers them, the introspect stage samples
reflections and then conversations from the same student, and the eval stage asks the student
for its base answers and for those of every adapter. :data:`ENGINES` holds one engine per process
and gives it back to whoever asks for the same key (the model and every setting that shapes the
engine); a request for another key closes the current engine first, so two models never share
the GPU's memory by accident. Whoever orchestrates the stages calls :func:`release_engines`
before training, which needs that memory for itself (see :mod:`octrain.run.workers`).

Every engine start is logged with how long it took, and recorded in ``ENGINES.starts``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from octrain.core.devices import free_device_memory

logger = logging.getLogger(__name__)


class Closeable(Protocol):
    def close(self) -> None: ...


EngineT = TypeVar("EngineT", bound=Closeable)


@dataclass(frozen=True)
class EngineStart:
    """One engine loaded: what it was and how many seconds it took."""

    label: str
    seconds: float


class EnginePool:
    """At most one loaded engine, reused while the same key is asked for."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._engine: Closeable | None = None
        self.starts: list[EngineStart] = []

    def acquire(self, key: str, label: str, load: Callable[[], EngineT]) -> EngineT:
        """The engine for ``key``: the loaded one if it is that engine, else a new one from ``load()``.

        ``label`` names the engine in the log (model, backend, the settings that matter).
        """
        if self._engine is not None and self._key == key:
            logger.info("engine reused: %s", label)
            return self._engine  # type: ignore[return-value]
        self.release()
        began = time.perf_counter()
        engine = load()
        seconds = time.perf_counter() - began
        self._key, self._engine = key, engine
        self.starts.append(EngineStart(label, seconds))
        logger.info("engine start: %s, ready in %.1fs", label, seconds)
        return engine

    def holds(self, engine: object) -> bool:
        """Whether ``engine`` is the one loaded now (a closed one is not)."""
        return engine is not None and engine is self._engine

    def release(self) -> None:
        """Close the loaded engine, if any, and give this process's free memory back to the device.

        The memory goes back even when no engine is loaded: a training stage that ran in this
        process (inline, or rank 0 under ``accelerate launch -m octrain``) leaves its trained model in
        reference cycles (TRL's patched forward, the trainer and its callbacks) that only a garbage
        collection frees, and torch keeps the freed memory cached until ``empty_cache()``. The next
        vLLM engine asks for its share of the card's memory as free memory.
        """
        if self._engine is not None:
            engine, self._engine, self._key = self._engine, None, None
            engine.close()
            del engine
        free_device_memory()


ENGINES = EnginePool()


def release_engines() -> None:
    """Close this process's loaded engine and free its device memory: before training, after it,
    and when a run ends."""
    ENGINES.release()
