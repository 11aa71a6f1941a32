"""One answer, as text that arrives while the model writes it.

``octrain chat`` (and any front end after it) shows an answer token by token. The transformers
backend can do that: :func:`stream_answer` runs the loaded model's ``generate`` in a thread with
transformers' ``TextIteratorStreamer`` and hands the text over as it is decoded. The other
backends (vLLM's offline engine, remote APIs, the fake sampler) answer a whole batch at once:
for them the stream is one chunk, the whole answer, when it is done.

A stream can be cancelled from any thread (:meth:`AnswerStream.cancel`): the transformers
generation stops before its next token, and what was written so far stays the answer. Closing
a stream that is still running cancels it and waits for the generation to end, so that the
model is free for the next call; a ``with`` block or ``close()`` in a ``finally`` does that.

The streamed answer is drawn exactly as :meth:`HFSampler.chat` draws it for the same seed
(the same rendering, the same ``generate`` options, the same per-request generator), so a
streamed turn and a batched one agree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, Sampler, SamplingParams


def streaming_engine(sampler: Sampler) -> Any | None:
    """The :class:`~octrain.samplers.hf.HFSampler` behind ``sampler``, or None when it cannot stream.

    :func:`octrain.samplers.build_sampler` wraps the transformers engine in a
    :class:`~octrain.samplers.shared.SharedSampler`; both forms are recognised.
    """
    from octrain.samplers.engine_pool import ENGINES
    from octrain.samplers.hf import HFSampler
    from octrain.samplers.shared import SharedSampler

    if isinstance(sampler, SharedSampler):
        engine = sampler.engine
        if engine is None or not ENGINES.holds(engine):
            raise RuntimeError(f"{sampler.name}: its engine was closed (another model was loaded since)")
        sampler = engine
    return sampler if isinstance(sampler, HFSampler) and sampler.model is not None else None


def can_stream(sampler: Sampler) -> bool:
    """Whether ``sampler`` shows an answer token by token (else all at once, when it is done)."""
    return streaming_engine(sampler) is not None


class AnswerStream:
    """The text of one answer, chunk by chunk: iterate over it, then read :attr:`completion`.

    Attributes:
        text: the answer so far (leading whitespace dropped, as a batched answer is stripped).
        cancelled: True once :meth:`cancel` stopped the answer before the model ended it.
    """

    def __init__(self) -> None:
        self.text = ""
        self.cancelled = False
        self._completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the answer as soon as the backend can (the next token, for transformers)."""
        self.cancelled = True

    def close(self) -> None:
        """Cancel the answer if it is still running and wait until the model is free again."""

    @property
    def done(self) -> bool:
        return self._completion is not None

    @property
    def completion(self) -> Completion:
        """The answer as a batched call returns it; a cancelled or unfinished stream gives what it has."""
        if self._completion is not None:
            return self._completion
        return Completion(self.text.strip(), 0, finished=False)

    def _keep(self, chunk: str) -> str:
        """Record ``chunk``; what to show of it (nothing of the answer's leading whitespace)."""
        if not self.text:
            chunk = chunk.lstrip()
        self.text += chunk
        return chunk

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class WholeAnswer(AnswerStream):
    """A backend that cannot stream: one ``chat`` call when iterated, its answer as one chunk.

    Cancelling cannot interrupt that call from another thread; a KeyboardInterrupt in the
    calling thread still does, as it would any batched call.
    """

    def __init__(
        self, sampler: Sampler, conversation: Sequence[Message], params: SamplingParams, seed: int | None
    ) -> None:
        super().__init__()
        self._sampler = sampler
        self._conversation = list(conversation)
        self._params = params
        self._seed = seed

    def __iter__(self) -> Iterator[str]:
        if self.done or self.cancelled:
            return
        seeds = None if self._seed is None else [self._seed]
        params = SamplingParams(**{**vars(self._params), "n": 1})
        completion = self._sampler.chat([self._conversation], params, seeds=seeds, progress=False)[0][0]
        self._completion = completion
        shown = self._keep(completion.text)
        if shown:
            yield shown


class TokenStream(AnswerStream):
    """A transformers model writing one answer in a thread, its text read as it is decoded."""

    def __init__(self, engine: Any, conversation: Sequence[Message], params: SamplingParams, seed: int | None) -> None:
        import torch
        from transformers import StoppingCriteriaList

        super().__init__()
        self._engine = engine
        self._stop = threading.Event()
        self._streamer = _counting_streamer(engine.tokenizer, set(engine.stop_token_ids))
        self._error: BaseException | None = None
        prompt = engine.render(conversation)
        # The same two-level seed HFSampler.chat uses (the request's seed, then sample 0 of it), so
        # that the streamed answer is the batched one; unseeded, a request draws its own seed.
        request = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        options = engine.generate_options([derive_seed(request, 0)], params)
        options["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(self._stop)])
        inputs = torch.tensor([prompt], device=engine.device)
        options.update(input_ids=inputs, attention_mask=torch.ones_like(inputs), streamer=self._streamer)
        self._thread = threading.Thread(
            target=self._generate,
            kwargs=options,
            name="octrain-stream",
            daemon=True,  # a process told to exit does not wait for a generation nobody reads
        )
        self._thread.start()

    def _generate(self, **kwargs: Any) -> None:
        import torch

        try:
            with torch.inference_mode():
                self._engine.model.generate(**kwargs)
        except BaseException as exc:  # handed to the reading thread, which raises it there
            self._error = exc
            self._streamer.end()  # the reader must not wait for text that will never come

    def __iter__(self) -> Iterator[str]:
        for chunk in self._streamer:
            shown = self._keep(chunk)
            if shown:
                yield shown
        self._thread.join()
        if self._error is not None:
            raise self._error
        finished = self._streamer.ended_turn and not self.cancelled
        self._completion = Completion(self.text.strip(), self._streamer.tokens, finished=finished)

    def cancel(self) -> None:
        super().cancel()
        self._stop.set()

    def close(self) -> None:
        if self._thread.is_alive():
            self.cancel()
            self._thread.join()
        if self._completion is None:
            self._completion = Completion(self.text.strip(), self._streamer.tokens, finished=False)


def _counting_streamer(tokenizer: Any, stop_ids: set[int]) -> Any:
    """transformers' ``TextIteratorStreamer``, also counting the answer's tokens and seeing its end of turn.

    The subclass is made here rather than at import time: transformers is imported only when a
    model streams.
    """
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.tokens = 0
            self.ended_turn = False

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:  # the first call is the prompt, which is skipped
                ids = value.reshape(-1).tolist()
                self.tokens += len(ids)
                self.ended_turn = self.ended_turn or any(token in stop_ids for token in ids)
            super().put(value)

    return CountingStreamer()


class _StopWhenSet:
    """A stopping criterion that ends generation once ``event`` is set (a cancelled stream)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_answer(
    sampler: Sampler, conversation: Sequence[Message], params: SamplingParams, *, seed: int | None = None
) -> AnswerStream:
    """Start answering ``conversation``: a stream of its text (token by token where the backend can).

    ``seed`` is the request's seed, as in ``sampler.chat(..., seeds=[seed])``; with None,
    ``params.seed`` applies the way :func:`~octrain.samplers.base.request_seeds` applies it.
    """
    if seed is None and params.seed is not None:
        seed = derive_seed(params.seed, 0)
    engine = streaming_engine(sampler)
    if engine is None:
        return WholeAnswer(sampler, conversation, params, seed)
    return TokenStream(engine, conversation, params, seed)
