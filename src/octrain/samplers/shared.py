"""A sampler on an engine that the process's pool owns: closing it leaves the engine loaded.

:func:`octrain.samplers.build_sampler` hands these out for the transformers backend, whose
engine is a whole :class:`~octrain.samplers.hf.HFSampler`: the stages close their samplers when
they are done with them, and the pool (:mod:`octrain.samplers.engine_pool`) decides when the
model really goes.
"""

from __future__ import annotations

from collections.abc import Sequence

from octrain.core.records import Message
from octrain.samplers.base import Completion, Sampler, SamplingParams


class SharedSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` by delegating to a pooled engine."""

    def __init__(self, engine: Sampler) -> None:
        self.engine: Sampler | None = engine
        self.name = engine.name

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        from octrain.samplers.engine_pool import ENGINES

        if self.engine is None or not ENGINES.holds(self.engine):
            raise RuntimeError(f"{self.name}: its engine was closed (another model was loaded since)")
        return self.engine.chat(conversations, params, seeds=seeds, desc=desc, progress=progress)

    def close(self) -> None:
        self.engine = None  # the pool keeps the model loaded for the next caller of the same one
