"""The sampler interface every generation backend implements.

One call takes a batch of conversations and returns ``n`` completions for each. The call is
batched and synchronous on purpose: vLLM's offline engine and transformers' ``generate``
both want the whole batch at once, and a remote API (Tinker, an HTTP endpoint) can fan the
batch out concurrently inside its own implementation. A backend that can also hand answers back
as they finish offers ``open_stream()`` (:mod:`octrain.samplers.streams`), which the generation
stages prefer. Chat templates stay inside each
backend, since only the backend knows its model's template.

Every conversation of a call is its own request with its own random stream: identical
conversations in one batch (the K repeats of a prompt) must still draw different text. A
caller that needs answers to survive a restart passes one seed per conversation
(``seeds=``, usually :func:`octrain.core.seeding.derive_seed` of the run seed and the record's
id); otherwise :func:`request_seeds` derives them from ``params.seed`` and the position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from octrain.core.config import SamplingConfig
from octrain.core.records import Message
from octrain.core.seeding import derive_seed


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings for one ``chat`` call."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    max_new_tokens: int = 1024
    seed: int | None = None

    @classmethod
    def from_config(cls, config: SamplingConfig, *, n: int = 1, seed: int | None = None) -> SamplingParams:
        return cls(
            n=n,
            temperature=config.temperature,
            top_p=config.top_p,
            min_p=config.min_p,
            repetition_penalty=config.repetition_penalty,
            max_new_tokens=config.max_new_tokens,
            seed=seed,
        )


@dataclass(frozen=True)
class Completion:
    """One generated answer.

    Attributes:
        text: the decoded answer, special tokens removed.
        num_tokens: generated tokens, the end-of-turn token included when there was one.
        finished: True when the model ended its turn; False when it hit ``max_new_tokens``.
    """

    text: str
    num_tokens: int
    finished: bool


@runtime_checkable
class Sampler(Protocol):
    """Answers batches of chat conversations."""

    name: str

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        """Return ``params.n`` completions for each conversation, in input order.

        ``seeds`` gives each conversation its own seed (the ``n`` samples of one conversation
        are distinct draws from it); without it, see :func:`request_seeds`. ``desc`` labels the
        progress bar, if the backend shows one; ``progress=False`` hides it (for callers that
        draw their own bar over many calls).
        """
        ...

    def close(self) -> None:
        """Release the model and any device memory it holds."""
        ...


def request_seeds(params: SamplingParams, count: int, seeds: Sequence[int] | None) -> list[int | None]:
    """The seed of each of ``count`` requests: ``seeds`` as given, else one per position.

    With neither ``seeds`` nor ``params.seed`` the requests are unseeded (None): each backend
    then draws from its own generator, which still differs from request to request.

    Raises:
        ValueError: ``seeds`` does not hold exactly one seed per conversation.
    """
    if seeds is not None:
        if len(seeds) != count:
            raise ValueError(f"got {len(seeds)} seeds for {count} conversations")
        return [int(seed) for seed in seeds]
    if params.seed is None:
        return [None] * count
    return [derive_seed(params.seed, index) for index in range(count)]
