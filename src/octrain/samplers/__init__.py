"""Sampler backends behind one interface, built from the config.

Backends are imported lazily, so a CPU machine never imports vLLM, and a run without
``sampler=tinker`` never imports the Tinker SDK.
"""

from __future__ import annotations

from collections.abc import Sequence

from octrain.core.config import ModelConfig, SamplerBackend, SamplerConfig
from octrain.core.errors import ConfigError
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.engine_pool import release_engines
from octrain.samplers.fake import FakeSampler
from octrain.samplers.shared import SharedSampler

__all__ = [
    "Completion",
    "FakeSampler",
    "Sampler",
    "SamplingParams",
    "SharedSampler",
    "build_sampler",
    "check_backend",
    "release_engines",
]


def check_backend(sampler: SamplerConfig) -> None:
    """Fail early, before any stage runs, when the configured backend cannot be used here."""
    import importlib.util

    if sampler.backend is SamplerBackend.vllm and importlib.util.find_spec("vllm") is None:
        raise ConfigError("sampler=vllm needs vLLM on a CUDA machine: pip install -e '.[vllm]'")
    if sampler.backend is SamplerBackend.tinker:
        # The SDK and the key, without a request: which models the service serves is asked once the
        # run's models are known (octrain.run.pipeline.preflight, and each TinkerSampler on creation).
        from octrain.trainers.tinker_common import check_api_key, tinker_module

        tinker_module()
        check_api_key()
        if sampler.data_parallel_size > 1:
            raise ConfigError(
                "sampler.data_parallel_size: sampler=tinker fans requests out on the service "
                "(sampler.tinker.max_concurrency); leave data_parallel_size at 1"
            )


def _engine_key(
    backend: str, model: ModelConfig, options: object, *, ignore: Sequence[str] = (), **extra: object
) -> str:
    """What makes two engines the same: the backend, the model and every setting that shapes the engine.

    The assistant's name (and the ``ignore``d model fields) shape prompts or other backends, never
    this loaded model: a teacher and a student on the same weights share their engine.
    """
    import dataclasses
    import json

    described = dataclasses.asdict(model)  # type: ignore[call-overload]
    for name in ("assistant_name", *ignore):
        described.pop(name, None)
    fields = {"backend": backend, "model": described, "options": dataclasses.asdict(options), **extra}  # type: ignore[call-overload]
    return json.dumps(fields, sort_keys=True, default=str)


def build_sampler(
    sampler: SamplerConfig,
    model: ModelConfig,
    *,
    adapter: str | None = None,
    serves: Sequence[str | None] = (),
    show_progress: bool = True,
) -> Sampler:
    """``model`` (plus an optional LoRA ``adapter``) behind the configured backend.

    Local backends take the process's engine from :data:`~octrain.samplers.engine_pool.ENGINES`:
    asked again for the same model and settings, they reuse the loaded engine. ``serves`` lists every
    adapter the caller will ask for on this model (``adapter`` included or not): vLLM then starts one
    engine able to serve all of them and the base, so the samplers for each are one engine start.
    Closing a sampler from here leaves its engine loaded; :func:`release_engines` closes it.

    With ``sampler.data_parallel_size > 1`` (transformers and vLLM) the engine is that many engine
    processes, each on its own GPU or group of ``sampler.vllm.tensor_parallel_size`` GPUs, sharing
    every call (:mod:`octrain.samplers.sharded`); the answers are the same as one engine's.
    """
    from octrain.samplers.engine_pool import ENGINES

    if model.endpoint.base_url is not None:  # served elsewhere, whatever backend loads the other models
        from octrain.samplers.endpoint import endpoint_sampler

        return endpoint_sampler(model, adapter=adapter)
    if sampler.backend is SamplerBackend.fake:
        return FakeSampler(name=f"fake:{model.path}")
    if sampler.data_parallel_size > 1 and sampler.backend in (SamplerBackend.hf, SamplerBackend.vllm):
        return _build_sharded(sampler, model, adapter=adapter, serves=serves, show_progress=show_progress)
    if sampler.backend is SamplerBackend.hf:
        from octrain.models.builtin import resolve_model_path
        from octrain.samplers.hf import HFSampler

        hf = ENGINES.acquire(
            _hf_key(sampler, model, adapter),
            f"transformers {model.path}" + (f" + {adapter}" if adapter else ""),
            lambda: HFSampler(
                resolve_model_path(model.path),
                adapter_path=adapter,
                dtype=model.dtype.value,
                device=sampler.hf.device,
                batch_size=sampler.hf.batch_size,
                enable_thinking=model.enable_thinking,
                revision=model.revision,
                trust_remote_code=model.trust_remote_code,
                attn_implementation=model.attn_implementation,
                name=model.path if adapter is None else f"{model.path}+{adapter}",
                show_progress=show_progress,
            ),
        )
        return SharedSampler(hf)
    if sampler.backend is SamplerBackend.vllm:
        check_backend(sampler)
        from octrain.models.builtin import resolve_model_path
        from octrain.samplers.vllm_engine import VLLMEngine, VLLMSampler

        options = sampler.vllm
        rank = _vllm_lora_rank(sampler, adapter, serves)
        share = model.gpu_memory_utilization or options.gpu_memory_utilization
        engine = ENGINES.acquire(
            _vllm_key(sampler, model, rank),
            _vllm_label(sampler, model, rank),
            lambda: VLLMEngine(
                resolve_model_path(model.path),
                max_lora_rank=rank,
                dtype="auto" if model.dtype.value == "auto" else model.dtype.value,
                tensor_parallel_size=options.tensor_parallel_size,
                gpu_memory_utilization=share,
                enable_prefix_caching=options.enable_prefix_caching,
                max_num_seqs=options.max_num_seqs,
                quantization=model.quantization,
                max_model_len=model.max_model_len,
                revision=model.revision,
                trust_remote_code=model.trust_remote_code,
            ),
        )
        return VLLMSampler(
            engine,
            adapter_path=adapter,
            enable_thinking=model.enable_thinking,
            name=model.path if adapter is None else f"{model.path}+{adapter}",
            show_progress=show_progress,
        )
    if sampler.backend is SamplerBackend.tinker:
        check_backend(sampler)
        from octrain.samplers.tinker_sampler import TinkerSampler

        # A model trained on Tinker is a tinker:// sampler path; a local adapter cannot be sampled there.
        if adapter is not None and not adapter.startswith("tinker://"):
            raise ConfigError(
                f"sampler=tinker samples base models and tinker:// weights; {adapter} is a local adapter "
                "(sample it with sampler=hf or sampler=vllm)"
            )
        return TinkerSampler(
            model.path,
            model_path=adapter,
            options=sampler.tinker,
            enable_thinking=model.enable_thinking,
            name=model.path if adapter is None else f"{model.path}+{adapter}",
            show_progress=show_progress,
        )
    raise ConfigError(
        f"sampler.backend={sampler.backend.value}: this backend is not in this version of octrain yet; "
        "use sampler=hf (any machine), sampler=vllm (GPU), sampler=tinker (hosted) or sampler=fake (dry run)"
    )


def _hf_key(sampler: SamplerConfig, model: ModelConfig, adapter: str | None, **extra: object) -> str:
    # transformers merges the adapter into the weights (the fastest generate): one engine per adapter.
    ignore = ("quantization", "gpu_memory_utilization")
    return _engine_key("hf", model, sampler.hf, ignore=ignore, adapter=adapter, **extra)


def _vllm_lora_rank(sampler: SamplerConfig, adapter: str | None, serves: Sequence[str | None]) -> int:
    """The LoRA rank a vLLM engine must serve for ``adapter`` and ``serves`` (0: no LoRA at all)."""
    from octrain.samplers.vllm_engine import adapter_rank

    adapters = {a for a in (adapter, *serves) if a}
    return max([sampler.vllm.max_lora_rank, *(adapter_rank(a) for a in adapters)]) if adapters else 0


def _vllm_key(sampler: SamplerConfig, model: ModelConfig, rank: int, **extra: object) -> str:
    # One vLLM engine serves the base and every adapter up to its rank: the adapter is not in the key.
    ignore = ("enable_thinking", "attn_implementation")
    return _engine_key("vllm", model, sampler.vllm, ignore=ignore, lora_rank=rank, **extra)


def _vllm_label(sampler: SamplerConfig, model: ModelConfig, rank: int) -> str:
    share = model.gpu_memory_utilization or sampler.vllm.gpu_memory_utilization
    details = [f"quantization {model.quantization}"] if model.quantization else []
    if sampler.vllm.tensor_parallel_size > 1:
        details.append(f"tensor parallel over {sampler.vllm.tensor_parallel_size} GPUs")
    details += [f"{share:.0%} of the GPU"] + ([f"LoRA up to rank {rank}"] if rank else [])
    return f"vLLM {model.path} ({', '.join(details)})"


def _build_sharded(
    sampler: SamplerConfig,
    model: ModelConfig,
    *,
    adapter: str | None,
    serves: Sequence[str | None],
    show_progress: bool,
) -> Sampler:
    """``sampler.data_parallel_size`` engine processes behind one sampler (:mod:`octrain.samplers.sharded`).

    The pool holds the whole :class:`~octrain.samplers.sharded.ShardedEngine` under the key the
    single engine would have, plus the shard count: the samplers for the base and for each adapter
    of one vLLM model share the same processes, and :func:`release_engines` ends them.
    """
    from octrain.samplers.engine_pool import ENGINES
    from octrain.samplers.shard_devices import plan_devices
    from octrain.samplers.sharded import ShardedEngine, ShardedSampler

    shards = sampler.data_parallel_size
    if sampler.backend is SamplerBackend.vllm:
        check_backend(sampler)
        rank = _vllm_lora_rank(sampler, adapter, serves)
        key, label = _vllm_key(sampler, model, rank, shards=shards), _vllm_label(sampler, model, rank)
    else:
        key = _hf_key(sampler, model, adapter, shards=shards)
        label = f"transformers {model.path}" + (f" + {adapter}" if adapter else "")
    devices = plan_devices(sampler)  # too few GPUs: a ConfigError before any engine is touched
    on_gpus = [group for group in devices if group]
    where = "; ".join("GPU " + ",".join(group) for group in on_gpus) if on_gpus else f"{shards} CPU processes"
    label = f"{shards} x {label} on {where}"

    def load() -> ShardedEngine:
        return ShardedEngine(sampler, model, devices=devices, adapter=adapter, serves=serves)

    engine = ENGINES.acquire(key, label, load)
    if not engine.usable:  # a shard died or a call was interrupted since it started: start afresh
        ENGINES.release()
        engine = ENGINES.acquire(key, label, load)
    return ShardedSampler(
        engine,
        adapter=adapter,
        name=model.path if adapter is None else f"{model.path}+{adapter}",
        show_progress=show_progress,
    )
