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

:class:`VLLMEngine` is the loaded model; :class:`VLLMSampler` is the model as one caller sees it:
the base, or one adapter. Several samplers share one engine (the eval stage's base model, its
DPO-only adapter and its trained adapter are one engine start, not three), each sending its own
``LoRARequest``. :func:`octrain.samplers.build_sampler` takes engines from
:mod:`octrain.samplers.engine_pool`, which keeps one per process.

vLLM does not reliably free GPU memory inside a process: on a GPU the stages run in worker
processes (:mod:`octrain.run.workers`) that end before training starts, and closing an engine
shuts its engine core down explicitly (:meth:`VLLMEngine.close`). The engine core starts with
``spawn``, never ``fork``: :mod:`octrain.core.devices` says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.core.devices import free_device_memory
from octrain.core.errors import ConfigError
from octrain.core.layout import ADAPTER_CONFIG_FILE
from octrain.core.records import Message
from octrain.samplers.base import Completion, SamplingParams, request_seeds
from octrain.samplers.rendering import prompt_token_ids
from octrain.samplers.vllm_stream import VLLMStream, completions_of, vllm_sampling_params
from octrain.trainers.merge import serving_rank


def adapter_rank(adapter_path: str) -> int:
    """The LoRA rank recorded in a PEFT adapter's config (0 when it cannot be read)."""
    try:
        return int(json.loads((Path(adapter_path) / ADAPTER_CONFIG_FILE).read_text())["r"])
    except (OSError, KeyError, ValueError):
        return 0


class VLLMEngine:
    """A ``vllm.LLM``: the model loaded once, for the base and for any LoRA adapter up to ``max_lora_rank``.

    Args:
        max_lora_rank: the largest adapter rank this engine must serve; 0 starts it without LoRA
            support (faster: no LoRA kernels in the forward pass).
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_lora_rank: int = 0,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        max_num_seqs: int | None = None,
        quantization: str | None = None,
        max_model_len: int = 4096,
        revision: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        from vllm import LLM

        self.model_path = model_path
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
        self.max_lora_rank = serving_rank(max_lora_rank) if max_lora_rank > 0 else 0
        if self.max_lora_rank:
            options.update(enable_lora=True, max_lora_rank=self.max_lora_rank)
        if _cpu_build():
            # vLLM's CPU build crashes on a seeded request whose prompt is prefilled in chunks (its CPU
            # generators keep no offset): prefill whole prompts there, so every request can be seeded.
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=max_model_len)
        # vLLM starts its engine core in a new process here: with spawn (octrain.core.devices sets
        # VLLM_WORKER_MULTIPROC_METHOD), and nothing in octrain has initialised CUDA in this process.
        self.llm: Any = LLM(**options)
        self._lora_requests: dict[str, Any] = {}

    def lora_request(self, adapter_path: str | None) -> Any:
        """The ``LoRARequest`` of an adapter (None for the base model), one id per adapter directory."""
        if adapter_path is None:
            return None
        key = str(Path(adapter_path).resolve())
        if key not in self._lora_requests:
            rank = adapter_rank(adapter_path)
            if not self.max_lora_rank or rank > self.max_lora_rank:
                raise ConfigError(
                    f"{adapter_path}: a LoRA adapter of rank {rank}, but this vLLM engine of {self.model_path} "
                    f"serves ranks up to {self.max_lora_rank}: list the adapter when the engine is built"
                )
            from vllm.lora.request import LoRARequest

            # vLLM caches adapters by integer id: a new directory gets a new id, never a reused one.
            index = len(self._lora_requests) + 1
            self._lora_requests[key] = LoRARequest(f"octrain-adapter-{index}", index, key)
        return self._lora_requests[key]

    def close(self) -> None:
        """Shut the engine core down now, rather than whenever the garbage collector finalises it.

        ``LLM`` has no close of its own in vLLM 0.31; its engine's client (``llm_engine.engine_core``,
        a ``SyncMPClient``) has ``shutdown()``, which ends the engine core process and with it the
        engine's GPU memory (weights, KV cache, CUDA graphs), before the next engine asks for its share.
        """
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm, core, shutdown
        free_device_memory()


def _cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build: asked of vLLM's platform, which finds CUDA
    through NVML, so that no CUDA call precedes the engine start."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VLLMSampler:
    """Implements :class:`~octrain.samplers.base.Sampler` on a :class:`VLLMEngine`, as the base model
    or with one adapter.

    Closing the sampler leaves the engine loaded for the other samplers on it, unless
    ``owns_engine`` (a sampler made for one use closes its engine with it).
    """

    def __init__(
        self,
        engine: VLLMEngine,
        *,
        adapter_path: str | None = None,
        enable_thinking: bool = False,
        name: str | None = None,
        show_progress: bool = True,
        owns_engine: bool = False,
    ) -> None:
        self.engine = engine
        self.lora_request = engine.lora_request(adapter_path)
        base = engine.model_path
        self.name = name or (f"{base}+{adapter_path}" if adapter_path else base)
        self.enable_thinking = enable_thinking
        self.show_progress = show_progress
        self.owns_engine = owns_engine

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        if not conversations:
            return []
        llm = self.engine.llm
        if llm is None:
            raise RuntimeError(f"{self.name}: its vLLM engine was closed (another model was loaded since)")
        tokenizer = llm.get_tokenizer()
        prompts = [
            TokensPrompt(prompt_token_ids=prompt_token_ids(tokenizer, c, enable_thinking=self.enable_thinking))
            for c in conversations
        ]
        sampling = [vllm_sampling_params(params, seed) for seed in request_seeds(params, len(conversations), seeds)]
        outputs = llm.generate(
            prompts, sampling, use_tqdm=self.show_progress and progress, lora_request=self.lora_request
        )
        return [completions_of(output) for output in outputs]

    def open_stream(self) -> VLLMStream:
        """This model's requests on the engine, answered as they finish (:mod:`octrain.samplers.vllm_stream`)."""
        return VLLMStream(self)

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()
