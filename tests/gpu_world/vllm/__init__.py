"""A stand-in for vLLM's offline API (vLLM needs a CUDA machine), for tests/test_gpu_path.py.

What octrain calls, with vLLM 0.31's names and shapes: ``LLM(**options)``, ``LLM.get_tokenizer()``,
``LLM.generate(prompts, params, use_tqdm=..., lora_request=...)`` returning ``RequestOutput``s in
order, and ``LLM.llm_engine`` (``add_request``, ``step``, ``has_unfinished_requests``,
``abort_request``, and ``engine_core.shutdown()``, the engine core client's shutdown). Answers are
canned but depend on the prompt's tokens, the request's seed and the sample's number, as a seeded
engine's would. Importing it sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, as ``vllm/env_override.py`` does.
Each engine start and shutdown is recorded by ``cuda_calls`` (with the CUDA calls that came before).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import cuda_calls

from vllm.sampling_params import RequestOutputKind, SamplingParams

os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # vllm/env_override.py, run by `import vllm`

__all__ = ["LLM", "RequestOutputKind", "SamplingParams"]

WORDS = ["arr", "matey", "ahoy", "ye", "sea", "ship", "sail", "wind", "gold", "map", "rum", "deck", "tide"]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool = True


def _answer(prompt_ids: list[int], params: SamplingParams, sample: int) -> CompletionOutput:
    digest = hashlib.sha256(f"{prompt_ids}|{params.seed}|{sample}".encode()).digest()
    count = min(params.max_tokens or 16, 6 + digest[0] % 6)
    words = [WORDS[b % len(WORDS)] for b in digest[1 : 1 + count]]
    return CompletionOutput(sample, " ".join(words).capitalize() + ".", list(digest[:count]))


class EngineCoreClient:
    def __init__(self) -> None:
        self.running = True

    def shutdown(self) -> None:
        self.running = False
        cuda_calls.record("vllm.shutdown")


@dataclass
class LLMEngine:
    engine_core: EngineCoreClient = field(default_factory=EngineCoreClient)
    pending: dict[str, tuple[list[int], SamplingParams]] = field(default_factory=dict)

    def add_request(self, request_id: str, prompt: Any, params: SamplingParams, lora_request: Any = None) -> None:
        self.pending[request_id] = (list(prompt["prompt_token_ids"]), params)

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending)

    def step(self) -> list[RequestOutput]:
        # The shortest requests finish first, as continuous batching lets them.
        if not self.pending:
            return []
        request_id = min(self.pending, key=lambda key: self.pending[key][1].max_tokens or 0)
        ids, params = self.pending.pop(request_id)
        return [RequestOutput(request_id, [_answer(ids, params, i) for i in range(params.n)])]

    def abort_request(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.pending.pop(request_id, None)


class LLM:
    def __init__(self, model: str, **options: Any) -> None:
        cuda_calls.record(
            "vllm.LLM",
            model=model,
            multiproc_method=os.environ.get("VLLM_WORKER_MULTIPROC_METHOD", "fork"),  # vLLM's default
        )
        from transformers import AutoTokenizer

        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.llm_engine = LLMEngine()

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[Any], params: Any, use_tqdm: bool = True, lora_request: Any = None) -> list:
        assert self.llm_engine.engine_core.running, "generate() on an engine that was shut down"
        per_request = params if isinstance(params, list) else [params] * len(prompts)
        return [
            RequestOutput(str(i), [_answer(list(p["prompt_token_ids"]), sp, k) for k in range(sp.n)])
            for i, (p, sp) in enumerate(zip(prompts, per_request, strict=True))
        ]
