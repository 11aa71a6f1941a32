"""Sampler backends behind one interface, built from the config.

Backends are imported lazily, so a CPU machine never imports vLLM or the Tinker SDK.
"""

from __future__ import annotations

from octrain.config import ModelConfig, SamplerBackend, SamplerConfig
from octrain.errors import ConfigError
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.fake import FakeSampler

__all__ = ["Completion", "FakeSampler", "Sampler", "SamplingParams", "build_sampler"]


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
    raise ConfigError(
        f"sampler.backend={sampler.backend.value}: this backend is not in this version of octrain yet; "
        "use sampler=hf (any machine) or sampler=fake (dry run)"
    )
