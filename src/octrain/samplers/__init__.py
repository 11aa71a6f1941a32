"""Sampler backends behind one interface, built from the config.

Backends are imported lazily, so a CPU machine never imports vLLM or the Tinker SDK.
"""

from __future__ import annotations

from octrain.config import ModelConfig, SamplerBackend, SamplerConfig
from octrain.errors import ConfigError
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.fake import FakeSampler

__all__ = ["Completion", "FakeSampler", "Sampler", "SamplingParams", "build_sampler", "check_backend"]


def check_backend(sampler: SamplerConfig) -> None:
    """Fail early, before any stage runs, when the configured backend cannot be used here."""
    import importlib.util

    if sampler.backend is SamplerBackend.vllm and importlib.util.find_spec("vllm") is None:
        raise ConfigError("sampler=vllm needs vLLM on a CUDA machine: pip install -e '.[vllm]'")
    if sampler.backend is SamplerBackend.tinker:
        raise ConfigError(
            "sampler.backend=tinker: this backend is not in this version of octrain yet; "
            "use sampler=hf (any machine), sampler=vllm (GPU) or sampler=fake (dry run)"
        )


def build_sampler(
    sampler: SamplerConfig, model: ModelConfig, *, adapter: str | None = None, show_progress: bool = True
) -> Sampler:
    """Load ``model`` (plus an optional LoRA ``adapter``) behind the configured backend."""
    if sampler.backend is SamplerBackend.fake:
        return FakeSampler(name=f"fake:{model.path}")
    if sampler.backend is SamplerBackend.hf:
        from octrain.samplers.hf import HFSampler
        from octrain.tiny_model import resolve_model_path

        return HFSampler(
            resolve_model_path(model.path),
            adapter_path=adapter,
            dtype=model.dtype.value,
            device=sampler.hf.device,
            batch_size=sampler.hf.batch_size,
            enable_thinking=model.enable_thinking,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            name=model.path if adapter is None else f"{model.path}+{adapter}",
            show_progress=show_progress,
        )
    if sampler.backend is SamplerBackend.vllm:
        check_backend(sampler)
        from octrain.samplers.vllm_engine import VLLMSampler
        from octrain.tiny_model import resolve_model_path

        options = sampler.vllm
        return VLLMSampler(
            resolve_model_path(model.path),
            adapter_path=adapter,
            dtype="auto" if model.dtype.value == "auto" else model.dtype.value,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=model.gpu_memory_utilization or options.gpu_memory_utilization,
            max_lora_rank=options.max_lora_rank,
            enable_prefix_caching=options.enable_prefix_caching,
            max_num_seqs=options.max_num_seqs,
            quantization=model.quantization,
            max_model_len=model.max_model_len,
            enable_thinking=model.enable_thinking,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            name=model.path if adapter is None else f"{model.path}+{adapter}",
            show_progress=show_progress,
        )
    raise ConfigError(
        f"sampler.backend={sampler.backend.value}: this backend is not in this version of octrain yet; "
        "use sampler=hf (any machine), sampler=vllm (GPU) or sampler=fake (dry run)"
    )
