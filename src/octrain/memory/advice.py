"""What to change when a stage does not fit a card, each suggestion checked with the same estimate.

For an engine: the teacher in fp8 (Qwen3-32B's published fp8 checkpoint where there is one), a
shorter ``max_model_len``, a larger share of the card, tensor parallelism over 2 or 4 GPUs, or a
smaller teacher; for ``sampler=hf``, smaller batches. For a training: gradient checkpointing,
smaller device batches, QLoRA, shorter sequences. Every candidate is applied to a copy of the
config and sized again; only changes that make the stage fit are offered, written as the override
a user types (``trainer.trl.gradient_checkpointing=true``, ``model@teacher=qwen3_8b``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from octrain.core.config import DistillMethod, ModelConfig, ModelRole, OctrainConfig, SamplerBackend, StageName
from octrain.core.errors import ConfigError
from octrain.core.paths import configs_dir
from octrain.memory.needs import Need
from octrain.memory.shapes import architecture_of
from octrain.stages.dpo import sdft_answer_length

# A change to a config, as the override a user types and the edit it makes.
Change = tuple[str, Callable[[OctrainConfig], None]]


def _set(path: str, value: Any) -> Change:
    def apply(config: OctrainConfig) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, value)

    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{path}={text}", apply


def _swap_model(role: ModelRole, preset: str) -> Change:
    """``model@ROLE=PRESET``: the model preset from configs/model, as Hydra would put it in."""

    def apply(config: OctrainConfig) -> None:
        values = OmegaConf.to_container(OmegaConf.load(configs_dir() / "model" / f"{preset}.yaml"))
        assert isinstance(values, dict)
        current = config.model(role)
        # A recipe's own settings for the role (teacher.quantization, say) outlive a swapped preset,
        # as they do when Hydra composes the recipe with model@ROLE=PRESET.
        swapped = ModelConfig(**{str(k): v for k, v in values.items()})
        swapped.quantization = current.quantization
        swapped.gpu_memory_utilization = current.gpu_memory_utilization
        setattr(config, role.value, swapped)

    return f"model@{role.value}={preset}", apply


def engine_changes(config: OctrainConfig, role: ModelRole) -> list[list[Change]]:
    """Changes to try, in order, for an engine that does not fit (each verified before it is advised)."""
    model = config.model(role)
    r = role.value
    if config.sampler.backend is SamplerBackend.hf:
        sizes = [b for b in (8, 4, 1) if b < config.sampler.hf.batch_size]
        return [[_set("sampler.hf.batch_size", b)] for b in sizes]
    short = [_set(f"{r}.max_model_len", 4096)] if model.max_model_len > 4096 else []
    tp2 = [_set("sampler.vllm.tensor_parallel_size", 2)] if config.sampler.vllm.tensor_parallel_size < 2 else []
    share = [_set(f"{r}.gpu_memory_utilization", 0.95)] if (model.gpu_memory_utilization or 0.9) < 0.95 else []
    candidates: list[list[Change]] = []
    # Only the teacher is quantized: the student is sampled as it is trained, or its "rejected"
    # answers and its evaluation would come from a different model. Qwen3-32B has a published fp8
    # checkpoint, half the read of the bf16 one and no quantizing at load; others are quantized by vLLM.
    fp8: list[Change] = []
    if role is ModelRole.teacher and model.quantization is None and architecture_of(model).stored_quantization is None:
        fp8 = (
            [_swap_model(role, "qwen3_32b_fp8")]
            if model.path == "Qwen/Qwen3-32B"
            else [_set(f"{r}.quantization", "fp8")]
        )
    tp4 = [_set("sampler.vllm.tensor_parallel_size", 4)] if config.sampler.vllm.tensor_parallel_size < 4 else []
    for option in (fp8, short, share, fp8 + short, fp8 + share, tp2, tp2 + fp8, tp4, tp4 + fp8):
        if option and option not in candidates:
            candidates.append(option)
    if role is ModelRole.teacher and "32B" in model.path:
        smaller = [_swap_model(role, "qwen3_8b")]
        candidates += [smaller, [*smaller, _set(f"{r}.quantization", "fp8")]]
    return candidates


def training_changes(config: OctrainConfig, stage: StageName) -> list[list[Change]]:
    options = config.trainer.trl
    settings = config.dpo if stage is StageName.dpo else config.sft
    ckpt = [_set("trainer.trl.gradient_checkpointing", True)] if options.gradient_checkpointing is False else []
    smaller = [
        [*ckpt, _set("trainer.trl.per_device_batch_size", b)] for b in (2, 1) if b < options.per_device_batch_size
    ]
    qlora = [_set("trainer.trl.load_in_4bit", True)] if not options.load_in_4bit else []
    shorter = [_set(f"{stage.value}.max_length", settings.max_length // 2)]
    if stage is StageName.dpo and config.distill.method is DistillMethod.sdft:
        # On-policy distillation's largest part is the logits over every answer token: shorter answers.
        shorter = [_set("distill.sdft.max_completion_length", max(1, sdft_answer_length(config) // 2))]
    candidates: list[list[Change]] = [ckpt] if ckpt else []
    candidates += smaller
    if qlora:
        candidates += [ckpt + qlora, *[c + qlora for c in smaller]]
    candidates += [c + shorter for c in (smaller[-1:] or [ckpt]) if c is not None]
    return [c for c in candidates if c]


def advise(
    config: OctrainConfig,
    card: float,
    needs: Callable[[OctrainConfig], Need],
    changes: list[list[Change]],
    *,
    accept_tight: bool = True,
) -> str:
    """What to change so that ``needs`` fits ``card``, every suggestion checked with the same estimate.

    The first change that fits on one GPU with the same models wins. Failing that, the first
    one-GPU change that at least runs (tight, only with ``accept_tight``), the first that fits on
    several GPUs and the first that swaps in a smaller model are all offered, since which is better
    depends on the machine. Returns "" when nothing helps.
    """
    found: dict[str, tuple[str, str]] = {}  # kind of change -> (status, text), the first of each kind
    for change in changes:
        trial = copy.deepcopy(config)
        for _, apply in change:
            apply(trial)
        try:
            status = needs(trial).judge(card).status
        except ConfigError:
            continue
        if status == "no" or (status == "tight" and not accept_tight):
            continue
        text = " ".join(f"`{override}`" for override, _ in change)
        kind = "multi" if "tensor_parallel_size" in text else "smaller" if "model@" in text else "same"
        if kind == "same" and status == "fits":
            return text
        if kind not in found or (found[kind][0] == "tight" and status == "fits"):
            found[kind] = (status, text)
    # A one-GPU change that only runs (tight) first: on a single small card it is the one that applies.
    offers = [found[k] for k in ("same", "multi", "smaller") if k in found]
    return " or ".join(text + (" (tight)" if status == "tight" else "") for status, text in offers)
