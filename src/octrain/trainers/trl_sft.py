"""LoRA SFT with TRL on multi-turn transcripts, loss on every assistant turn and nothing else.

The loss mask is octrain's own (:mod:`octrain.trainers.assistant_mask`), built from the rendered
turns, so any chat template works: TRL's ``assistant_only_loss`` needs ``{% generation %}``
markers, which most templates lack (Llama 3.1's among them). SFTTrainer gets a
pre-tokenized dataset, ``input_ids`` plus ``assistant_masks``; it turns the mask into
labels (-100 where the mask is 0), truncates to ``max_length`` and drops any example whose
trained tokens all fell past it. Every assistant turn of a transcript is trained, not only
the last one: the reference code's self-interaction data trained a single turn per transcript.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from octrain.core.config import SftStageConfig, TRLOptions
from octrain.core.records import Conversation, load_records
from octrain.trainers.assistant_mask import tokenize_conversation
from octrain.trainers.model_loading import student_and_arguments
from octrain.trainers.trl_common import (
    ScheduleMixin,
    finish_training,
    last_checkpoint,
    load_tokenizer,
    lora_config,
    on_one_device,
    precision,
    shared_args,
)

logger = logging.getLogger(__name__)

SFT_PANELS = (
    ("loss", ("loss",)),
    ("token accuracy", ("mean_token_accuracy",)),
    ("learning rate", ("learning_rate",)),
)


def make_trainer_class() -> type:
    """SFTTrainer on octrain's LR schedule (:class:`~octrain.trainers.trl_common.ScheduleMixin`), its
    batches grouped by length in an order a resumed run repeats; built lazily so that importing octrain
    never imports TRL."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    class EpochLengthGroupedSampler(LengthGroupedSampler):
        """transformers' length-grouped order, shuffled by a generator seeded with (seed, epoch).

        The stock sampler draws its shuffle from torch's global generator when the epoch starts, whose
        state a run resumed mid-epoch does not reproduce (training consumed it: LoRA dropout), so the
        batches it skips would not be the ones trained before. The Trainer calls ``set_epoch`` before
        each epoch's first batch, also when resuming (transformers' ``_run_epoch``), as accelerate's
        seedable sampler does for plain random order.
        """

        def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self) -> Any:
            self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return super().__iter__()

    class CharacterSFTTrainer(ScheduleMixin, SFTTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler) is LengthGroupedSampler:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                # Grouped by the whole optimizer step (every rank's micro-batches), not one rank's
                # share: the stock sampler groups by one rank's batch, so two ranks would see another
                # order than one process accumulating the same step, and train another model.
                # accelerate deals each rank its micro-batches from this one sequence.
                step = self.args.train_batch_size * self.args.gradient_accumulation_steps
                step *= max(1, self.args.world_size)
                return EpochLengthGroupedSampler(step, sampler.lengths, seed)
            return sampler

    return CharacterSFTTrainer


def build_sft_args(config: SftStageConfig, options: TRLOptions, output_dir: Path, *, seed: int = 0) -> Any:
    """TRL's SFTConfig for the method's settings, on one device when the training is one process.

    Made before the student is loaded (:func:`~octrain.trainers.model_loading.student_and_arguments`).
    """
    from trl import SFTConfig

    args = SFTConfig(
        max_length=config.max_length,  # truncation keeps the start; TRL applies it to input_ids and labels
        packing=False,
        # A batch pads to its longest example: reflections and multi-turn conversations range from tens
        # to thousands of tokens, so random batches are mostly padding. transformers' LengthGroupedSampler
        # (TrainingArguments.train_sampling_strategy, which replaced group_by_length in 5.x) shuffles the
        # examples, sorts each window of up to 50 effective batches by length and puts the longest batch
        # first (an out-of-memory shows at step 1): every example still comes once per epoch, in an order
        # fixed by the seed and the epoch (make_trainer_class: a resumed run repeats it).
        train_sampling_strategy="group_by_length",
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        # A ratio below 1, read by ScheduleMixin.create_scheduler (octrain.trainers.schedule), not by
        # transformers' get_warmup_steps: that rule gives a one-step run one warmup step at LR 0.
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        **shared_args(options, output_dir, batch_size=config.batch_size, seed=seed),
    )
    return on_one_device(args)


def build_sft_trainer(
    conversations_path: Path,
    model: Any,
    tokenizer: Any,
    output_dir: Path,
    config: SftStageConfig,
    options: TRLOptions,
    *,
    seed: int = 0,
    model_name: str | None = None,
    enable_thinking: bool = False,
    args: Any = None,
) -> Any:
    """TRL's SFTTrainer for ``model`` (already loaded, adapters folded) on the transcripts.

    Args:
        model_name: how errors name the model (default: the tokenizer's path).
        enable_thinking: passed to the chat template, as the samplers pass it when the
            student writes (Qwen3's hybrid template puts an empty ``<think>`` block in the
            generation prompt when it is false).
        args: the :func:`build_sft_args` made before ``model`` was loaded (made here when None).
    """
    from datasets import Dataset

    name = model_name or str(getattr(tokenizer, "name_or_path", "") or "the student")
    records = load_records(conversations_path, Conversation)
    examples = []
    split = 0
    for record in records:
        tokenized = tokenize_conversation(
            tokenizer, record.messages, model_name=name, template_kwargs={"enable_thinking": enable_thinking}
        )
        split += len(tokenized) > 1
        examples.extend(tokenized)
    if split:
        logger.info(
            "sft: %s's chat template writes earlier turns differently from the latest one: %d of %d transcripts are "
            "trained as one example per assistant turn",
            name,
            split,
            len(records),
        )
    random.Random(seed).shuffle(examples)  # reflections and conversations interleaved, reproducibly
    dataset = Dataset.from_list(examples)
    if args is None:
        args = build_sft_args(config, options, output_dir, seed=seed)
    return make_trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config.lora, model),
    )


def train_sft(
    conversations_path: Path,
    base: str,
    output_dir: Path,
    config: SftStageConfig,
    options: TRLOptions | None = None,
    *,
    fold: str | None = None,
    seed: int = 0,
    enable_thinking: bool = False,
    attn_implementation: str = "sdpa",
) -> Path:
    """Train a LoRA adapter on the transcripts; returns the adapter directory.

    Args:
        base: the base model (Hub id, directory or ``builtin:tiny-qwen3``).
        fold: an adapter folded into the base before training (sequential mode: the DPO
            adapter); the new adapter is then an update on top of it. With
            ``options.load_in_4bit`` the fold is done in full precision and the folded model
            quantized afterwards (:func:`~octrain.trainers.model_loading.student_and_arguments`).
        enable_thinking: the student's ``enable_thinking``, for its chat template.
        attn_implementation: the student's attention kernel (``student.attn_implementation``).
    """
    from octrain.models.builtin import resolve_model_path

    options = options or TRLOptions()
    base_path = resolve_model_path(base)
    tokenizer = load_tokenizer(base_path)
    # The arguments before the model: under ZeRO-3 or FSDP they decide how it is loaded (student_and_arguments).
    with student_and_arguments(
        base_path,
        options,
        lambda: build_sft_args(config, options, output_dir, seed=seed),
        attn_implementation=attn_implementation,
        fold=fold,
        scratch_dir=output_dir,
    ) as (model, args):
        return _train(
            conversations_path,
            model,
            tokenizer,
            output_dir,
            config,
            options,
            seed=seed,
            base=base,
            fold=fold,
            enable_thinking=enable_thinking,
            args=args,
        )


def _train(
    conversations_path: Path,
    model: Any,
    tokenizer: Any,
    output_dir: Path,
    config: SftStageConfig,
    options: TRLOptions,
    *,
    seed: int,
    base: str,
    fold: str | None,
    enable_thinking: bool,
    args: Any,
) -> Path:
    """Train and save, for :func:`train_sft`, while the (possibly scratch-backed) model is open."""
    _, bf16 = precision()
    trainer = build_sft_trainer(
        conversations_path,
        model,
        tokenizer,
        output_dir,
        config,
        options,
        seed=seed,
        model_name=base,
        enable_thinking=enable_thinking,
        args=args,
    )
    last = last_checkpoint(trainer.args.output_dir, stage="sft")
    if last:
        logger.info("sft: resuming from %s", last)
    logger.info(
        "sft: %d training examples, batch %d (%d per device x %d accumulation), %s, on %s%s",
        len(trainer.train_dataset),
        config.batch_size,
        trainer.args.per_device_train_batch_size,
        trainer.args.gradient_accumulation_steps,
        "bf16" if bf16 else "fp32",
        f"{base} with {fold} folded in" if fold else base,
        " (4-bit NF4)" if options.load_in_4bit else "",
    )
    trainer.train(resume_from_checkpoint=last)
    adapter_dir = output_dir / "sft_adapter"
    finish_training(trainer, tokenizer, output_dir, adapter_dir, stage="sft", panels=SFT_PANELS)
    return adapter_dir
