"""A deterministic sampler with no model behind it, for tests and dry runs.

Answers come from a ``responder`` function of (conversation, sample index). Without one,
the sampler behaves like a seeded random model: the answer is a short sentence derived from
a hash of the conversation, the request's seed and the sample index, so the same inputs and
seeds always give the same outputs and the K repeats of a prompt still differ. Every call is
recorded in ``calls`` (conversations, parameters, the seed of each request) for tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from octrain.core.records import Message
from octrain.samplers.base import Completion, SamplingParams, request_seeds

Responder = Callable[[Sequence[Message], int], str]


def hashed_reply(conversation: Sequence[Message], sample: int, seed: int | None = None) -> str:
    """The default answer: stable for a given conversation, request seed and sample index."""
    text = "\n".join(f"{m['role']}:{m['content']}" for m in conversation)
    digest = hashlib.sha256(f"{seed}\n{sample}\n{text}".encode()).hexdigest()[:8]
    return f"This is fake reply {digest}."


class FakeSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` without a model."""

    def __init__(self, responder: Responder | None = None, name: str = "fake") -> None:
        self.name = name
        self.responder = responder
        self.calls: list[tuple[list[list[Message]], SamplingParams, list[int | None]]] = []

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        batch = [list(conversation) for conversation in conversations]
        request = request_seeds(params, len(batch), seeds)
        self.calls.append((batch, params, request))
        results = []
        for conversation, seed in zip(batch, request, strict=True):
            completions = []
            for sample in range(params.n):
                if self.responder is None:
                    text = hashed_reply(conversation, sample, seed)
                else:
                    text = self.responder(conversation, sample)
                # Whitespace-separated words stand in for tokens; the limit cuts like a real model's.
                words = text.split()
                finished = len(words) <= params.max_new_tokens
                if not finished:
                    text = " ".join(words[: params.max_new_tokens])
                completions.append(Completion(text, min(len(words), params.max_new_tokens), finished))
            results.append(completions)
        return results

    def close(self) -> None:
        pass
