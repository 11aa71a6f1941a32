"""vLLM's engine as a :class:`~octrain.samplers.streams.ChatStream`: requests in, answers as they finish.

``LLM.generate`` adds a batch of requests to its ``LLMEngine``, steps the engine until every one
of them has finished, and returns them sorted. Here the same engine is driven directly, as
``LLM._run_engine`` drives it (vLLM 0.31's ``vllm/entrypoints/llm.py``): each request goes in with
``llm_engine.add_request`` under an id of our own, ``llm_engine.step()`` runs one scheduler step
and returns the requests that finished in it, and those are handed to the caller at once. The
engine's continuous batching then always has work: a stage submits all of its remaining items (or
a conversation's next turn the moment its last one comes back), the scheduler keeps up to
``max_num_seqs`` of them running, and a short answer makes room for the next request instead of
waiting for the longest answer of its chunk.

Requests carry the same token ids and the same per-request ``SamplingParams`` (with their seeds)
as :meth:`~octrain.samplers.vllm_engine.VLLMSampler.chat`, so a streamed answer is the one ``chat`` would give. Like
``LLM._validate_and_add_requests``, each request asks for its final output only
(``RequestOutputKind.FINAL_ONLY``): the engine reports it once, whole, when all ``n`` samples are
done. :meth:`VLLMStream.close` aborts whatever is still running, so that a stage stopped half-way
(an error, Ctrl-C) leaves the engine idle for the next caller.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from typing import Any, Protocol

from octrain.samplers.base import Completion, SamplingParams
from octrain.samplers.rendering import prompt_token_ids
from octrain.samplers.streams import Request


class _LoadedEngine(Protocol):
    @property
    def llm(self) -> Any:
        """The loaded ``vllm.LLM``, or None once the engine was closed."""


class VLLMModel(Protocol):
    """What a stream needs of a :class:`~octrain.samplers.vllm_engine.VLLMSampler`: its engine, its
    adapter's ``LoRARequest``, its name and how to render prompts. Spelled out here so that this module
    does not import the sampler's, which opens its streams from here."""

    @property
    def engine(self) -> _LoadedEngine: ...

    @property
    def lora_request(self) -> Any: ...

    @property
    def enable_thinking(self) -> bool: ...

    @property
    def name(self) -> str: ...


# Request ids are ours, unique within the process: another stream, or an LLM.generate call, never
# shares one (LLM numbers its own requests 0, 1, 2, ...).
_IDS = itertools.count()


def vllm_sampling_params(params: SamplingParams, seed: int | None) -> Any:
    """vLLM's ``SamplingParams`` for one request of ``params`` with its own ``seed``."""
    from vllm import SamplingParams as VLLMParams

    return VLLMParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p if params.temperature > 0 else 1.0,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        max_tokens=params.max_new_tokens,
        seed=seed,
    )


def completions_of(output: Any) -> list[Completion]:
    """A finished ``RequestOutput`` as octrain's completions, one per sample."""
    return [Completion(o.text.strip(), len(o.token_ids), finished=o.finish_reason == "stop") for o in output.outputs]


class VLLMStream:
    """Implements :class:`~octrain.samplers.streams.ChatStream` on one vLLM sampler (its model and adapter)."""

    def __init__(self, sampler: VLLMModel) -> None:
        llm = sampler.engine.llm
        if llm is None:
            raise RuntimeError(f"{sampler.name}: its vLLM engine was closed (another model was loaded since)")
        self.sampler = sampler
        self.engine = llm.llm_engine
        self.tokenizer = llm.get_tokenizer()
        self._keys: dict[str, Hashable] = {}  # our request id -> the caller's key, while unanswered

    def submit(self, request: Request) -> None:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        tokens = prompt_token_ids(self.tokenizer, request.conversation, enable_thinking=self.sampler.enable_thinking)
        params = vllm_sampling_params(request.params, request.seed)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        request_id = f"octrain-{next(_IDS)}"
        self.engine.add_request(
            request_id, TokensPrompt(prompt_token_ids=tokens), params, lora_request=self.sampler.lora_request
        )
        self._keys[request_id] = request.key

    def answers(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        while self._keys:
            if not self.engine.has_unfinished_requests():
                raise RuntimeError(
                    f"{self.sampler.name}: vLLM's engine has no unfinished requests but {len(self._keys)} of this "
                    "stream's were never answered"
                )
            for output in self.engine.step():
                if output.finished and output.request_id in self._keys:
                    yield self._keys.pop(output.request_id), completions_of(output)

    def close(self) -> None:
        if self._keys:
            unanswered, self._keys = list(self._keys), {}
            self.engine.abort_request(unanswered)
