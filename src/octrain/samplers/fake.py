"""A deterministic sampler with no model behind it, for tests and dry runs.

Answers come from a ``responder`` function of (conversation, sample index); the default
one writes a short sentence derived from a hash of the conversation, so the same inputs
always give the same outputs. Every call is recorded in ``calls`` for tests to inspect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from octrain.records import Message
from octrain.samplers.base import Completion, SamplingParams

Responder = Callable[[Sequence[Message], int], str]


def hashed_reply(conversation: Sequence[Message], sample: int) -> str:
    """The default answer: stable for a given conversation and sample index."""
    text = "\n".join(f"{m['role']}:{m['content']}" for m in conversation)
    digest = hashlib.sha256(f"{sample}\n{text}".encode()).hexdigest()[:8]
    return f"This is fake reply {digest}."


class FakeSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` without a model."""

    def __init__(self, responder: Responder = hashed_reply, name: str = "fake") -> None:
        self.name = name
        self.responder = responder
        self.calls: list[tuple[list[list[Message]], SamplingParams]] = []

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        batch = [list(conversation) for conversation in conversations]
        self.calls.append((batch, params))
        results = []
        for conversation in batch:
            completions = []
            for sample in range(params.n):
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
