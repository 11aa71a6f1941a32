"""The range checks of each config section: the values its types cannot rule out.

One function per section of :mod:`octrain.core.config_sections` (a model, the scale, each stage,
the sampler and trainer backends), each raising :class:`~octrain.core.errors.ConfigError` with the
offending key's full name. :func:`octrain.core.config.validate` calls them in the order of the
config and adds the rules that span sections (the stages, the final adapter's rank).
"""

from __future__ import annotations

import math

from octrain.core.config_sections import (
    DistillationMode,
    DistillStageConfig,
    DpoStageConfig,
    EvalStageConfig,
    IntrospectStageConfig,
    JudgeKind,
    ModelConfig,
    PairsStageConfig,
    PromptsStageConfig,
    SamplerConfig,
    SamplingConfig,
    ScaleConfig,
    SftStageConfig,
    TrainerConfig,
)
from octrain.core.errors import ConfigError


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"{key}: expected a number {expected}, got {value}")


def _sampling(key: str, sampling: SamplingConfig) -> None:
    _positive(f"{key}.temperature", sampling.temperature, allow_zero=True)
    if not 0 < sampling.top_p <= 1:
        raise ConfigError(f"{key}.top_p: expected a value in (0, 1], got {sampling.top_p}")
    if not 0 <= sampling.min_p < 1:
        raise ConfigError(f"{key}.min_p: expected a value in [0, 1), got {sampling.min_p}")
    _positive(f"{key}.repetition_penalty", sampling.repetition_penalty)
    _positive(f"{key}.max_new_tokens", sampling.max_new_tokens)


def check_model(key: str, model: ModelConfig) -> None:
    """The section ``key`` (``teacher`` or ``student``)."""
    if not model.path.strip():
        raise ConfigError(f"{key}.path: expected a Hub id, a local directory, a .gguf file or builtin:NAME")
    if not model.assistant_name.strip():
        raise ConfigError(f"{key}.assistant_name: expected a non-empty name")
    _positive(f"{key}.max_model_len", model.max_model_len)
    if not model.attn_implementation.strip():
        raise ConfigError(
            f"{key}.attn_implementation: expected sdpa, eager, flex_attention, flash_attention_2 or flash_attention_3"
        )
    share = model.gpu_memory_utilization
    if share is not None and not 0 < share <= 1:
        raise ConfigError(f"{key}.gpu_memory_utilization: expected a share in (0, 1] or null, got {share}")
    endpoint = model.endpoint
    if endpoint.base_url is not None:
        if not endpoint.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{key}.endpoint.base_url: expected an http:// or https:// URL such as http://127.0.0.1:8000/v1, "
                f"got {endpoint.base_url!r}"
            )
        if endpoint.model is not None and not endpoint.model.strip():
            raise ConfigError(f"{key}.endpoint.model: expected the served model's name, or null for {key}.path")
        _positive(f"{key}.endpoint.max_concurrency", endpoint.max_concurrency)
        _positive(f"{key}.endpoint.timeout", endpoint.timeout)
        if endpoint.max_retries < 0:
            raise ConfigError(f"{key}.endpoint.max_retries: expected 0 or more, got {endpoint.max_retries}")
        if endpoint.backoff < 0:
            raise ConfigError(f"{key}.endpoint.backoff: expected 0 or more seconds, got {endpoint.backoff}")
        for name in ("price_per_million_prompt_tokens", "price_per_million_completion_tokens"):
            price = getattr(endpoint, name)
            if price is not None and price < 0:
                raise ConfigError(f"{key}.endpoint.{name}: expected a price of 0 or more, or null, got {price}")


def check_scale(scale: ScaleConfig) -> None:
    for key in ("prompts_per_trait", "generic_prompts", "reflections", "interactions"):
        _positive(f"scale.{key}", getattr(scale, key), allow_zero=True)
    _positive("scale.samples_per_prompt", scale.samples_per_prompt)
    _positive("scale.interaction_turns", scale.interaction_turns)


def check_prompts(prompts: PromptsStageConfig) -> None:
    _positive("prompts.expansion_rounds", prompts.expansion_rounds, allow_zero=True)
    _positive("prompts.samples_per_request", prompts.samples_per_request)
    _positive("prompts.prompts_per_request", prompts.prompts_per_request)
    _positive("prompts.min_words", prompts.min_words, allow_zero=True)
    _positive("prompts.max_chars", prompts.max_chars)
    if not 0 < prompts.near_duplicate_overlap <= 1:
        raise ConfigError(
            f"prompts.near_duplicate_overlap: expected a share in (0, 1], got {prompts.near_duplicate_overlap}"
        )
    _sampling("prompts.sampling", prompts.sampling)


def check_pairs(pairs: PairsStageConfig) -> None:
    # An imported file (pairs.source, introspect.source) is read in preflight; here only an empty path.
    if pairs.source is not None and not pairs.source.strip():
        raise ConfigError("pairs.source: expected the path of a JSONL file, got an empty string")
    _sampling("pairs.sampling", pairs.sampling)
    _positive("pairs.chunk_size", pairs.chunk_size)
    _positive("pairs.max_length", pairs.max_length)


def check_dpo(dpo: DpoStageConfig) -> None:
    for key in ("beta", "learning_rate", "batch_size", "epochs", "max_length", "max_grad_norm"):
        _positive(f"dpo.{key}", getattr(dpo, key))
    for key in ("nll_weight", "kl_weight", "weight_decay"):
        _positive(f"dpo.{key}", getattr(dpo, key), allow_zero=True)
    _positive("dpo.lora.rank", dpo.lora.rank)
    _positive("dpo.lora.alpha", dpo.lora.alpha)
    fractions = {
        "min_lr_ratio": dpo.min_lr_ratio,
        "warmup_ratio": dpo.warmup_ratio,
        "lora.dropout": dpo.lora.dropout,
        "adam_beta1": dpo.adam_beta1,
        "adam_beta2": dpo.adam_beta2,
    }
    for key, value in fractions.items():
        if not 0 <= value < 1:
            raise ConfigError(f"dpo.{key}: expected a value in [0, 1), got {value}")


def check_distill(distill: DistillStageConfig) -> None:
    """``distill.sdft``, checked whichever method is chosen, as every section is."""
    sdft = distill.sdft
    for key in ("learning_rate", "batch_size", "epochs", "num_generations", "max_grad_norm", "distillation_topk"):
        _positive(f"distill.sdft.{key}", getattr(sdft, key))
    # TRL divides both models' logits by the temperature in the loss: zero (greedy) cannot be used.
    _positive("distill.sdft.temperature", sdft.temperature)
    if sdft.max_completion_length is not None:
        _positive("distill.sdft.max_completion_length", sdft.max_completion_length)
    _positive("distill.sdft.lora.rank", sdft.lora.rank)
    _positive("distill.sdft.lora.alpha", sdft.lora.alpha)
    for key, value in {
        "min_lr_ratio": sdft.min_lr_ratio,
        "warmup_ratio": sdft.warmup_ratio,
        "lora.dropout": sdft.lora.dropout,
    }.items():
        if not 0 <= value < 1:
            raise ConfigError(f"distill.sdft.{key}: expected a value in [0, 1), got {value}")
    if not 0 <= sdft.distillation_alpha <= 1:
        raise ConfigError(f"distill.sdft.distillation_alpha: expected a value in [0, 1], got {sdft.distillation_alpha}")
    if sdft.distillation_mode is DistillationMode.sampled_token and sdft.distillation_alpha != 1:
        raise ConfigError(
            "distill.sdft.distillation_mode=sampled_token is a reverse KL on the sampled token: it needs "
            f"distill.sdft.distillation_alpha=1, got {sdft.distillation_alpha}"
        )
    # Each prompt's answers are sampled together in one step's batch (TRL's generation batch).
    if sdft.teacher_weights.value == "teacher" and sdft.teacher_model_kind.value != "base":
        # live and ema name states of the student's own weights; a separate teacher is fixed.
        raise ConfigError(
            "distill.sdft.teacher_weights=teacher grades with the run's teacher model, fixed: it needs "
            f"distill.sdft.teacher_model_kind=base, got {sdft.teacher_model_kind.value}"
        )
    if sdft.batch_size % sdft.num_generations:
        raise ConfigError(
            f"distill.sdft.batch_size={sdft.batch_size}: expected a multiple of distill.sdft.num_generations="
            f"{sdft.num_generations} (a prompt's answers share a batch)"
        )


def check_introspect(introspect: IntrospectStageConfig) -> None:
    if introspect.source is not None and not introspect.source.strip():
        raise ConfigError("introspect.source: expected the path of a JSONL file, got an empty string")
    _sampling("introspect.reflection_sampling", introspect.reflection_sampling)
    _sampling("introspect.interaction_sampling", introspect.interaction_sampling)
    _positive("introspect.chunk_size", introspect.chunk_size)


def check_sft(sft: SftStageConfig) -> None:
    for key in ("learning_rate", "batch_size", "epochs", "max_length", "max_grad_norm"):
        _positive(f"sft.{key}", getattr(sft, key))
    for key in ("weight_decay", "dpo_weight", "sft_weight"):
        _positive(f"sft.{key}", getattr(sft, key), allow_zero=True)
    _positive("sft.lora.rank", sft.lora.rank)
    _positive("sft.lora.alpha", sft.lora.alpha)
    if not 0 <= sft.warmup_ratio < 1:
        raise ConfigError(f"sft.warmup_ratio: expected a value in [0, 1), got {sft.warmup_ratio}")


def check_eval(evaluation: EvalStageConfig) -> None:
    _positive("eval.prompt_count", evaluation.prompt_count)
    _positive("eval.trials_per_trait", evaluation.trials_per_trait)
    _positive("eval.classifier.prompts", evaluation.classifier.prompts)
    if not 0 < evaluation.classifier.holdout < 1:
        raise ConfigError(f"eval.classifier.holdout: expected a share in (0, 1), got {evaluation.classifier.holdout}")
    _positive("eval.elo_rounds", evaluation.elo_rounds)
    _sampling("eval.sampling", evaluation.sampling)
    _sampling("eval.judge_sampling", evaluation.judge_sampling)
    if evaluation.judge is JudgeKind.http and not (evaluation.judge_base_url and evaluation.judge_model):
        raise ConfigError("eval.judge=http needs eval.judge_base_url and eval.judge_model")
    _positive("eval.judge_timeout", evaluation.judge_timeout)
    _positive("eval.judge_retries", evaluation.judge_retries, allow_zero=True)
    _positive("eval.judge_parse_retries", evaluation.judge_parse_retries, allow_zero=True)
    _positive("eval.chunk_size", evaluation.chunk_size)
    capability = evaluation.capability
    if capability.backend not in ("hf", "vllm"):
        raise ConfigError(f"eval.capability.backend: expected hf or vllm, got {capability.backend!r}")
    _positive("eval.capability.batch_size", capability.batch_size)
    if capability.limit is not None:
        _positive("eval.capability.limit", capability.limit)
    if evaluation.ood.per_category is not None:
        _positive("eval.ood.per_category", evaluation.ood.per_category)


def check_backends(sampler: SamplerConfig, trainer: TrainerConfig) -> None:
    """The ``sampler`` and ``trainer`` sections."""
    _positive("trainer.trl.per_device_batch_size", trainer.trl.per_device_batch_size)
    _positive("trainer.trl.save_steps", trainer.trl.save_steps)
    _positive("sampler.hf.batch_size", sampler.hf.batch_size)
    _positive("sampler.data_parallel_size", sampler.data_parallel_size)
    _positive("trainer.num_processes", trainer.num_processes)
    if not 0 < sampler.vllm.gpu_memory_utilization <= 1:
        raise ConfigError("sampler.vllm.gpu_memory_utilization: expected a share in (0, 1]")
