"""LoRA SFT on Tinker: cross-entropy on the assistant's tokens only, normalised as the TRL backend does.

The loss mask is :mod:`octrain.trainers.assistant_mask`'s, the function the TRL backend feeds SFTTrainer
with (same tokenizer, same template arguments, same split of a transcript whose template
rewrites earlier turns), truncated to ``max_length`` from the end as TRL truncates, and an
example with no trained token left is dropped as TRL drops it. The examples are shuffled with
``random.Random(seed)`` as the TRL backend shuffles them before training.

Normalisation: transformers divides the summed token cross-entropy of an optimizer step by
the number of trained tokens in the whole step (``num_items_in_batch``, over every
accumulated micro-batch). Tinker's ``cross_entropy`` is a plain sum of ``-logprob * weight``,
so each trained token's weight is ``1 / (trained tokens in the step)``: the same loss and
gradient, in one ``forward_backward`` call with no custom loss.

Sequential mode (the default) continues from the DPO stage's final state: the same LoRA
trained further, with a fresh optimizer as the TRL backend starts one. Tinker cannot fold an
adapter into the weights, so the result is one adapter holding both updates, at the DPO
adapter's rank (the README's equivalence table says what that changes).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.core.config import SftStageConfig, TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.layout import METRICS_FILE, MODEL_FILE, PLOT_FILE
from octrain.core.records import Conversation, ModelRef, load_records
from octrain.trainers import schedule, tinker_common
from octrain.trainers.assistant_mask import tokenize_conversation
from octrain.trainers.report import plot_metrics, read_metrics, record_steps, write_metrics

logger = logging.getLogger(__name__)

SFT_PANELS = (("loss", ("loss",)), ("learning rate", ("learning_rate",)))


def sft_examples(
    tokenizer: Any,
    records: Sequence[Conversation],
    *,
    model_name: str,
    max_length: int,
    enable_thinking: bool,
    seed: int,
) -> list[dict[str, list[int]]]:
    """``input_ids`` and ``assistant_masks`` of every training example, in training order.

    The TRL backend's examples exactly: :func:`~octrain.trainers.assistant_mask.tokenize_conversation`,
    the same shuffle, then TRL's truncation and its drop of examples left with nothing to train.
    """
    examples: list[dict[str, list[int]]] = []
    for record in records:
        examples.extend(
            tokenize_conversation(
                tokenizer, record.messages, model_name=model_name, template_kwargs={"enable_thinking": enable_thinking}
            )
        )
    random.Random(seed).shuffle(examples)
    kept = []
    for example in examples:
        ids, mask = example["input_ids"][:max_length], example["assistant_masks"][:max_length]
        if sum(mask[1:]) > 0:  # a token trains only as a target: the first one never does
            kept.append({"input_ids": ids, "assistant_masks": mask})
    if len(kept) < len(examples):
        logger.info(
            "sft: %d of %d examples have no trained token within max_length", len(examples) - len(kept), len(examples)
        )
    return kept


def step_data(examples: Sequence[dict[str, list[int]]]) -> list[Any]:
    """The datums of one optimizer step, weights = assistant mask / trained tokens in the step."""
    trained = sum(sum(example["assistant_masks"][1:]) for example in examples)
    return [
        tinker_common.shifted_datum(example["input_ids"], [m / trained for m in example["assistant_masks"]])
        for example in examples
    ]


def train_sft(
    conversations_path: Path,
    base: str,
    output_dir: Path,
    config: SftStageConfig,
    options: TinkerOptions | None = None,
    *,
    dpo_state: str | None = None,
    seed: int = 0,
    enable_thinking: bool = False,
    service: Any = None,
) -> ModelRef:
    """Train on the transcripts on Tinker; returns ``ModelRef(base, remote=tinker://...)``.

    Args:
        base: the student's base model, as Tinker names it.
        dpo_state: the DPO stage's final ``tinker://.../weights/...`` state (sequential mode); None
            trains a fresh LoRA on the base.
    """
    options = options or TinkerOptions()
    if options.save_steps < 1:
        raise ConfigError(f"trainer.tinker.save_steps={options.save_steps}: must be at least 1")
    layers = tinker_common.lora_layers(config.lora)
    output_dir.mkdir(parents=True, exist_ok=True)
    service = service if service is not None else tinker_common.connect(options)
    tinker_common.check_models_served(service, train=[base])
    tokenizer = tinker_common.load_tokenizer(base)
    records = load_records(conversations_path, Conversation)
    examples = sft_examples(
        tokenizer,
        records,
        model_name=base,
        max_length=config.max_length,
        enable_thinking=enable_thinking,
        seed=seed,
    )
    if not examples:
        raise ConfigError(f"sft: no transcript of {conversations_path} has an assistant token within max_length")
    key = tinker_common.fingerprint(base, dataclasses.asdict(config), seed, dpo_state, examples)
    progress = tinker_common.Progress.load(output_dir)
    if progress is not None and progress.fingerprint != key:
        logger.warning("sft: %s is from other data or settings; training from the start", tinker_common.PROGRESS_FILE)
        progress = None
    progress = progress or tinker_common.Progress(fingerprint=key)
    # The introspection records were shuffled when written: the first epoch keeps their order.
    batches = tinker_common.step_batches(
        len(examples),
        batch_size=config.batch_size,
        epochs=config.epochs,
        seed=seed,
        label="sft-order",
        shuffle_first_epoch=False,
    )
    if progress.sampler_path and progress.step >= len(batches):
        return _finish(output_dir, base, progress)

    if progress.state_path:
        logger.info("sft: resuming at step %d from %s", progress.step, progress.state_path)
        client = service.create_training_client_from_state_with_optimizer(progress.state_path).result()
    elif dpo_state:
        # The DPO weights, a new optimizer: the TRL backend also starts SFT with fresh Adam moments.
        client = service.create_training_client_from_state(dpo_state).result()
    else:
        client = service.create_lora_training_client(
            base_model=base, rank=config.lora.rank, seed=seed, **layers
        ).result()
    logger.info(
        "sft on Tinker: %d examples, %d steps of %d, %s",
        len(examples),
        len(batches),
        config.batch_size,
        f"continuing {dpo_state}" if dpo_state else f"a new LoRA of rank {config.lora.rank} on {base}",
    )
    rows = [row for row in read_metrics(output_dir / METRICS_FILE) if row.get("step", 0) <= progress.step]
    beta1, beta2 = tinker_common.TRANSFORMERS_ADAM_BETAS

    def submit(step: int) -> tuple[Any, Any, list[Any], float]:
        data = step_data([examples[i] for i in batches[step]])
        lr = schedule.learning_rate(
            step, total_steps=len(batches), peak=config.learning_rate, warmup_ratio=config.warmup_ratio
        )
        backward = client.forward_backward(data, "cross_entropy")
        update = client.optim_step(
            tinker_common.adam_params(
                lr, beta1=beta1, beta2=beta2, weight_decay=config.weight_decay, grad_clip=config.max_grad_norm
            )
        )
        return backward, update, data, lr

    def record(step: int, backward: Any, update: Any, data: list[Any], lr: float) -> None:
        result = backward.result()
        update.result()
        # The loss from the returned log-probs: sum of -logprob x weight, i.e. the mean over trained tokens.
        loss = 0.0
        for datum, output in zip(data, result.loss_fn_outputs, strict=True):
            logprobs = output["logprobs"].data
            loss -= sum(lp * w for lp, w in zip(logprobs, tinker_common.datum_weights(datum), strict=True))
        rows.append({"step": step + 1, "loss": loss, "learning_rate": lr})

    pending: tuple[int, Any, Any, list[Any], float] | None = None
    for step in range(progress.step, len(batches)):
        backward, update, data, lr = submit(step)
        if pending is not None:
            record(*pending)
        pending = (step, backward, update, data, lr)
        done = step + 1
        if done % options.save_steps == 0 and done < len(batches):
            record(*pending)
            pending = None
            saved = client.save_state(f"sft-step-{done:06d}", ttl_seconds=options.checkpoint_ttl_seconds).result()
            write_metrics(output_dir / METRICS_FILE, rows)
            progress.step, progress.state_path = done, saved.path
            progress.save(output_dir)
    if pending is not None:
        record(*pending)
    final = client.save_state("sft-final", ttl_seconds=options.checkpoint_ttl_seconds).result()
    sampler = client.save_weights_for_sampler("sft-final", ttl_seconds=options.checkpoint_ttl_seconds).result()
    write_metrics(output_dir / METRICS_FILE, rows)
    progress.step, progress.state_path = len(batches), final.path
    progress.final_state_path, progress.sampler_path = final.path, sampler.path
    progress.save(output_dir)
    return _finish(output_dir, base, progress)


def _finish(output_dir: Path, base: str, progress: tinker_common.Progress) -> ModelRef:
    note = record_steps(output_dir, progress.step, stage="sft")  # every step is trained by now
    plot_metrics(output_dir / PLOT_FILE, read_metrics(output_dir / METRICS_FILE), SFT_PANELS, note=note)
    result = ModelRef(base=base, remote=progress.sampler_path)
    result.save(output_dir / MODEL_FILE)
    return result
