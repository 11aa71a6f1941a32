"""Answers as they finish: a sampler given a stage's whole remaining work, its answers read one by one.

:meth:`Sampler.chat <octrain.samplers.base.Sampler.chat>` answers one batch and returns when its
slowest answer is done. Called once per committed chunk, that leaves the card idle on the longest
answer of every chunk (vLLM's continuous batching has nothing new to start once a chunk's short
answers are done). A :class:`ChatStream` takes requests one at a time (:meth:`ChatStream.submit`)
and hands back each answer as soon as the backend has finished it (:meth:`ChatStream.answers`), in
whatever order they finish; the caller commits a chunk once all of its items are in
(:func:`octrain.samplers.generation.run_streaming`), and may submit more while it reads (the next turn of a
conversation whose last turn just came back).

A backend that can do this implements ``open_stream()`` (vLLM's engine: :mod:`octrain.samplers.vllm_stream`).
Every other sampler gets :class:`WaveStream`, which turns the requests back into ``chat`` calls: one
call per wave of requests with the same ``order`` (the chunk they belong to), lowest order first, so
that a batch-only backend makes exactly the calls it made when each chunk was one ``chat`` call, and
a chunk is committed before the next one is sampled.

Each request carries its own seed, so an answer depends on its conversation and seed only, never on
which other requests shared its batch or in which order they finished: streamed and chunked runs
give the same answers on a deterministic backend.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from octrain.core.records import Message
from octrain.samplers.base import Completion, Sampler, SamplingParams


@dataclass(frozen=True)
class Request:
    """One conversation to answer.

    Attributes:
        key: how the caller recognises the answer (an item index, or an index and an attempt).
        seed: the request's own seed; None samples it unseeded.
        order: which wave a batch-only backend answers it in (lower first; the chunk index). A
            streaming backend ignores it: it starts requests as it has room, in submission order.
    """

    key: Hashable
    conversation: Sequence[Message]
    params: SamplingParams
    seed: int | None = None
    order: int = 0


@runtime_checkable
class ChatStream(Protocol):
    """Requests in, answers out as they finish."""

    def submit(self, request: Request) -> None:
        """Queue ``request``; allowed while :meth:`answers` is being read."""
        ...

    def answers(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        """``(key, params.n completions)`` for each finished request, in the order they finish,
        until no submitted request is left unanswered."""
        ...

    def close(self) -> None:
        """Drop the requests not yet answered (the engine stays loaded, free for the next caller)."""
        ...


class StreamingSampler(Protocol):
    """A sampler whose backend answers requests as they finish."""

    def open_stream(self) -> ChatStream: ...


def open_stream(sampler: Sampler, *, wave: int | None = None) -> ChatStream:
    """A stream on ``sampler``: its own where the backend streams, else a :class:`WaveStream`.

    ``wave`` caps the requests of one ``chat`` call of a :class:`WaveStream` (the chunk size).
    """
    opener = getattr(sampler, "open_stream", None)
    if callable(opener):
        stream: ChatStream = opener()
        return stream
    return WaveStream(sampler, wave=wave)


@dataclass(order=True)
class _Queued:
    order: int
    number: int  # submission order, the tie-break: a wave keeps the order its requests were submitted in
    request: Request = field(compare=False)


class WaveStream:
    """:class:`ChatStream` over a sampler that only answers whole batches (``chat``).

    Each wave is one ``chat`` call: the queued requests of the lowest ``order``, as many as share
    the first one's parameters and seededness, at most ``wave`` of them. Answers of a wave are
    handed out in submission order; requests submitted meanwhile wait for a later wave.
    """

    def __init__(self, sampler: Sampler, *, wave: int | None = None) -> None:
        if wave is not None and wave < 1:
            raise ValueError(f"wave must be at least 1, got {wave}")
        self.sampler, self.wave = sampler, wave
        self._queue: list[_Queued] = []
        self._numbers = itertools.count()

    def submit(self, request: Request) -> None:
        self._queue.append(_Queued(request.order, next(self._numbers), request))

    def _next_wave(self) -> list[Request]:
        self._queue.sort()
        head = self._queue[0].request
        seeded = head.seed is not None
        taken: list[int] = []
        for position, queued in enumerate(self._queue):
            request = queued.request
            if queued.order != head.order or (self.wave is not None and len(taken) == self.wave):
                break
            if request.params == head.params and (request.seed is not None) == seeded:
                taken.append(position)
        wave = [self._queue[position].request for position in taken]
        for position in reversed(taken):
            del self._queue[position]
        return wave

    def answers(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        while self._queue:
            wave = self._next_wave()
            params = wave[0].params
            if wave[0].seed is None:
                # Unseeded requests stay unseeded: chat would otherwise derive seeds from params.seed
                # and the positions in this wave, which depend on how the work was cut into waves.
                seeds, params = None, dataclasses.replace(params, seed=None)
            else:
                seeds = [int(request.seed) for request in wave if request.seed is not None]
            results = self.sampler.chat([request.conversation for request in wave], params, seeds=seeds, progress=False)
            for request, completions in zip(wave, results, strict=True):
                yield request.key, completions

    def close(self) -> None:
        self._queue.clear()
