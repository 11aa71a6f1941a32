"""What the TRL trainers share: hardware precision, batch arithmetic, LoRA, checkpoints, saving."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from octrain.core.config import LoraSettings, TRLOptions
from octrain.core.files import atomic_directory
from octrain.core.layout import CHECKPOINT_DIR, METRICS_FILE, PLOT_FILE
from octrain.trainers.accelerate_configs import gathered_state_dict
from octrain.trainers.checkpoints import last_complete_checkpoint
from octrain.trainers.precision import precision
from octrain.trainers.report import plot_metrics, record_steps, write_metrics

logger = logging.getLogger(__name__)


def gradient_checkpointing(options: TRLOptions) -> tuple[bool, dict[str, Any] | None]:
    """(enabled, kwargs) for gradient checkpointing: on with CUDA unless the config says otherwise.

    One function, because two places switch it on: the TrainingArguments below and, for a 4-bit
    student, PEFT's ``prepare_model_for_kbit_training``; they must agree or the second call
    silently replaces the first one's settings.
    """
    use_cuda, _ = precision()
    enabled = use_cuda if options.gradient_checkpointing is None else options.gradient_checkpointing
    # Non-reentrant checkpointing works with a frozen base and LoRA: the reentrant kind needs inputs
    # that require grad, or the adapters get no gradient through the checkpointed blocks.
    return enabled, ({"use_reentrant": False} if enabled else None)


def shared_args(options: TRLOptions, output_dir: Path, *, batch_size: int, seed: int) -> dict[str, Any]:
    """TrainingArguments common to DPO and SFT. The effective batch is reached by accumulation:
    per-device batch x accumulation steps x processes >= ``batch_size``."""
    use_cuda, bf16 = precision()
    checkpointing, checkpointing_kwargs = gradient_checkpointing(options)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = min(options.per_device_batch_size, batch_size)
    return {
        "output_dir": str(output_dir / CHECKPOINT_DIR),
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": max(1, math.ceil(batch_size / (per_device * world))),
        "bf16": bf16,
        "fp16": False,
        "use_cpu": not use_cuda,
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": checkpointing_kwargs,
        "logging_steps": options.logging_steps,
        "save_steps": options.save_steps,
        "save_total_limit": 2,
        "report_to": list(options.report_to) or "none",
        "seed": seed,
        "dataloader_num_workers": 0,
    }


class ScheduleMixin:
    """Put a transformers ``Trainer`` subclass on octrain's LR schedule (:mod:`octrain.trainers.schedule`).

    Mixed in before the TRL trainer (``class T(ScheduleMixin, DPOTrainer)``). transformers' own
    ``create_scheduler`` would warm up for ``ceil(total * ratio)`` steps from LR 0, so a one-step run
    trains at LR 0; the TRL backend must also match the Tinker backend step for step. transformers
    calls ``create_scheduler`` once the number of optimizer steps is known (``max_steps``, from the
    dataloader after TRL's filtering, the processes and the accumulation), and DeepSpeed's wrapper
    calls it too, on a copy of the trainer; so the schedule is built here, from that count, the
    warmup ratio in ``args.warmup_steps`` (always a ratio below 1 in octrain's arguments) and the
    floor in ``args.lr_scheduler_kwargs["min_lr_rate"]``. ``args.lr_scheduler_type`` still names the
    decay (``cosine`` or ``cosine_with_min_lr``) for whoever reads the arguments.
    """

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        from octrain.trainers.schedule import torch_scheduler

        if self.lr_scheduler is None:
            args = self.args
            kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
            if kind not in ("cosine", "cosine_with_min_lr"):
                raise ValueError(f"lr_scheduler_type={kind!r}: octrain's schedule is a cosine decay")
            self.lr_scheduler = torch_scheduler(
                optimizer if optimizer is not None else self.optimizer,
                total_steps=num_training_steps,
                warmup_ratio=args.warmup_steps,
                min_ratio=(args.lr_scheduler_kwargs or {}).get("min_lr_rate", 0.0),
            )
            self._created_lr_scheduler = True  # transformers drops it before a second train() call
        return self.lr_scheduler


# The parts of a multimodal checkpoint (Gemma 3, LLaVA-style, Qwen-VL) that read images. octrain trains on
# text alone, yet PEFT's "all-linear" wraps their linear layers too (on Gemma-3-4B-it ~29% more LoRA weights
# that never see a gradient worth having, and an adapter vLLM will not serve): they are left out.
VISION_MODULES = r".*(vision_tower|vision_model|multi_modal_projector|visual)\..*"


def lora_config(settings: LoraSettings, model: Any = None) -> Any:
    """PEFT's LoRA config from ``settings``; with ``model``, an all-linear adapter leaves out a vision tower."""
    import re

    from peft import LoraConfig

    targets: Any = "all-linear" if list(settings.target_modules) == ["all-linear"] else list(settings.target_modules)
    has_vision = model is not None and any(re.fullmatch(VISION_MODULES, n) for n, _ in model.named_modules())
    exclude = VISION_MODULES if targets == "all-linear" and has_vision else None
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        exclude_modules=exclude,
        task_type="CAUSAL_LM",
    )


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def last_checkpoint(checkpoint_dir: str | Path, *, stage: str) -> str | None:
    """The newest complete checkpoint to resume from, if any.

    Not transformers' ``get_last_checkpoint``: that takes the highest-numbered folder, which a
    kill or a full disk in the middle of a save leaves half-written.
    """
    return last_complete_checkpoint(checkpoint_dir, stage=stage)


def save_trained_adapter(trainer: Any, tokenizer: Any, target: Path) -> None:
    """Save the trainer's adapter so that ``target`` appears complete or not at all. Call on every rank.

    Under FSDP2 and ZeRO-3 each rank holds a shard of the weights: gathering them is a collective
    all ranks join (:func:`octrain.trainers.accelerate_configs.gathered_state_dict`); rank 0 then writes.
    """
    state = gathered_state_dict(trainer)
    if not trainer.accelerator.is_main_process:
        return
    with atomic_directory(target) as staging:
        trainer.model.save_pretrained(staging, state_dict=state)
        tokenizer.save_pretrained(staging)


def on_one_device(args: Any) -> Any:
    """Keep a one-process training on one GPU when the machine shows several.

    Given several visible GPUs and no launcher, transformers' Trainer would wrap the model in
    ``torch.nn.DataParallel``, which TRL refuses (and which is slower than DDP anyway): the stage
    would stop. It trains on the first GPU instead; ``trainer.num_processes=N`` uses all of them.
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        _ = args._setup_devices  # transformers counts the GPUs here; the count is then set to one
        args._n_gpu = 1
        logger.warning(
            "%d GPUs are visible but this training is one process: it uses the first; "
            "trainer.num_processes=%d trains on all of them",
            torch.cuda.device_count(),
            torch.cuda.device_count(),
        )
    return args


def finish_training(
    trainer: Any, tokenizer: Any, output_dir: Path, adapter_dir: Path, *, stage: str, panels: Any
) -> None:
    """After ``trainer.train()``: the adapter saved by every rank (a gather under FSDP2 / ZeRO-3), then, on
    the main process only, ``metrics.jsonl``, the step record and ``training.png`` in ``output_dir``."""
    save_trained_adapter(trainer, tokenizer, adapter_dir)
    if trainer.accelerator.is_main_process:
        rows = write_metrics(output_dir / METRICS_FILE, trainer.state.log_history)
        note = record_steps(output_dir, trainer.state.global_step, stage=stage)
        plot_metrics(output_dir / PLOT_FILE, rows, panels, note=note)
