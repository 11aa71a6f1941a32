"""A sampler on vLLM's offline engine: the fast path for teacher and student sampling on GPUs.

``LLM.generate`` takes the whole batch at once and schedules it with continuous batching;
every teacher prompt starts with the same constitution system prompt, so prefix caching (on
by default here) computes that shared prefix once. Conversations are rendered by
:mod:`octrain.samplers.rendering`, the same code the transformers sampler uses, so a prefill
(a final assistant message, such as a reasoning teacher's opening thought) reads the same on
both backends. Each request carries its own ``SamplingParams`` with its own seed: vLLM seeds
a request's generator from that seed, so one seed shared by a batch would make identical
conversations come back identical. A LoRA adapter is served through ``LoRARequest`` without
merging, with ``max_lora_rank`` raised to a rank vLLM accepts that covers the adapter's (the
exact DPO+SFT adapter has the sum of both ranks).

vLLM does not reliably free GPU memory inside a process: load one engine per process, and
let the stage's process end before training starts.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.merge import serving_rank
from octrain.records import Message
from octrain.samplers.base import Completion, SamplingParams, request_seeds
from octrain.samplers.rendering import prompt_token_ids


def adapter_rank(adapter_path: str) -> int:
    """The LoRA rank recorded in a PEFT adapter's config (0 when it cannot be read)."""
    try:
        return int(json.loads((Path(adapter_path) / "adapter_config.json").read_text())["r"])
    except (OSError, KeyError, ValueError):
        return 0


class VLLMSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` with ``vllm.LLM``."""

    def __init__(
        self,
        model_path: str,
        *,
        adapter_path: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_lora_rank: int = 64,
        enable_prefix_caching: bool = True,
        max_num_seqs: int | None = None,
        quantization: str | None = None,
        max_model_len: int = 4096,
        enable_thinking: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
        name: str | None = None,
        show_progress: bool = True,
    ) -> None:
        from vllm import LLM

        self.name = name or (f"{model_path}+{adapter_path}" if adapter_path else model_path)
        self.enable_thinking = enable_thinking
        self.show_progress = show_progress
        options: dict[str, Any] = {
            "model": model_path,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enable_prefix_caching": enable_prefix_caching,
            "max_model_len": max_model_len,
            "revision": revision,
            "trust_remote_code": trust_remote_code,
            "seed": seed,
        }
        if quantization:
            options["quantization"] = quantization
        if max_num_seqs:
            options["max_num_seqs"] = max_num_seqs
        self.lora_request = None
        if adapter_path:
            from vllm.lora.request import LoRARequest

            rank = serving_rank(max(max_lora_rank, adapter_rank(adapter_path)))
            options.update(enable_lora=True, max_lora_rank=rank)
            self.lora_request = LoRARequest("octrain-adapter", 1, str(adapter_path))
        import torch

        if not torch.cuda.is_available():
            # vLLM's CPU build crashes on a seeded request whose prompt is prefilled in chunks (its CPU
            # generators keep no offset): prefill whole prompts there, so every request can be seeded.
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=max_model_len)
        self.llm = LLM(**options)

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        if not conversations:
            return []
        tokenizer = self.llm.get_tokenizer()
        prompts = [
            TokensPrompt(prompt_token_ids=prompt_token_ids(tokenizer, c, enable_thinking=self.enable_thinking))
            for c in conversations
        ]
        sampling = [
            VLLMParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p if params.temperature > 0 else 1.0,
                min_p=params.min_p,
                repetition_penalty=params.repetition_penalty,
                max_tokens=params.max_new_tokens,
                seed=seed,
            )
            for seed in request_seeds(params, len(conversations), seeds)
        ]
        outputs = self.llm.generate(
            prompts, sampling, use_tqdm=self.show_progress and progress, lora_request=self.lora_request
        )
        return [
            [Completion(o.text.strip(), len(o.token_ids), finished=o.finish_reason == "stop") for o in output.outputs]
            for output in outputs
        ]

    def close(self) -> None:
        import torch

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
