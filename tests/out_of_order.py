"""A streaming sampler whose answers finish in another order than they were asked, as vLLM's do.

vLLM's engine finishes short answers first, so the items of a stage come back shuffled across
chunks. :class:`OutOfOrderSampler` stands in for that engine (which needs a GPU): its answers are
the fake sampler's (the same text for the same conversation and seed, so a streamed run can be
compared with a batched one), handed back in a shuffled order, each "engine step" answering every
request submitted so far. It records what it was asked, and can die part-way like a crashed engine.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path

from octrain.core.records import Message
from octrain.samplers.base import Completion, SamplingParams
from octrain.samplers.fake import FakeSampler, Responder
from octrain.samplers.streams import Request


class EngineDied(RuntimeError):
    pass


class OutOfOrderSampler(FakeSampler):
    """A :class:`FakeSampler` that also streams (``open_stream``), finishing requests out of order.

    Args:
        responder: as :class:`FakeSampler`'s (None: the hashed, seed-dependent replies).
        running: how many requests an engine step works on at once (vLLM's ``max_num_seqs``):
            the first ``running`` waiting ones, in submission order; they finish shuffled.
        shuffle_seed: the order answers finish in.
        die_after: raise :class:`EngineDied` once this many answers have been handed out.
        pause: seconds to wait before each answer (for a test that kills the process mid-stream).
        watch: a chunk directory; before each answer the chunk files it holds are recorded in
            ``committed_before``, to see when each chunk was committed.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        running: int = 1_000_000,
        shuffle_seed: int = 0,
        die_after: int | None = None,
        pause: float = 0.0,
        watch: Path | None = None,
    ) -> None:
        super().__init__(responder, name="out-of-order")
        self.running, self.rng = running, random.Random(shuffle_seed)
        self.die_after, self.pause, self.watch = die_after, pause, watch
        self.submitted: list[Request] = []  # every request, in submission order
        self.answered: list[Hashable] = []  # keys in the order they were handed out
        self.committed_before: list[set[str]] = []  # chunk files present before each answer
        self.submitted_before_first_answer = 0

    def open_stream(self) -> _Stream:
        return _Stream(self)

    def answer(self, request: Request) -> list[Completion]:
        seeds = None if request.seed is None else [request.seed]
        params = request.params if request.seed is not None else dataclasses.replace(request.params, seed=None)
        return self.chat_quietly([request.conversation], params, seeds)[0]

    def chat_quietly(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams, seeds: Sequence[int] | None
    ) -> list[list[Completion]]:
        """The fake sampler's answers, without recording a ``chat`` call (this engine streams)."""
        calls = len(self.calls)
        try:
            return self.chat(conversations, params, seeds=seeds)
        finally:
            del self.calls[calls:]


class _Stream:
    def __init__(self, sampler: OutOfOrderSampler) -> None:
        self.sampler = sampler
        self.waiting: list[Request] = []

    def submit(self, request: Request) -> None:
        self.sampler.submitted.append(request)
        self.waiting.append(request)

    def answers(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        sampler = self.sampler
        while self.waiting:
            if not sampler.answered:
                sampler.submitted_before_first_answer = len(sampler.submitted)
            step, self.waiting = self.waiting[: sampler.running], self.waiting[sampler.running :]
            sampler.rng.shuffle(step)  # what a step finishes is in no particular order
            for request in step:
                if sampler.die_after is not None and len(sampler.answered) >= sampler.die_after:
                    raise EngineDied(f"engine died after {len(sampler.answered)} answers")
                time.sleep(sampler.pause)
                if sampler.watch is not None:
                    sampler.committed_before.append({p.name for p in sampler.watch.glob("chunk-*.jsonl")})
                sampler.answered.append(request.key)
                yield request.key, sampler.answer(request)

    def close(self) -> None:
        self.waiting = []
