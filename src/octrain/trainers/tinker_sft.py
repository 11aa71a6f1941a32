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
adapter's rank (docs/tinker.md's side-by-side table says what that changes).

Checkpoints and resuming are :mod:`octrain.trainers.tinker_loop`'s, shared with DPO.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.core.config import SftStageConfig, TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.records import Conversation, ModelRef, load_records
from octrain.trainers import schedule, tinker_common, tinker_loop
from octrain.trainers.assistant_mask import tokenize_conversation

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
    tinker_loop.check_save_steps(options)
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
    # The introspection records were shuffled when written: the first epoch keeps their order.
    batches = tinker_loop.step_batches(
        len(examples),
        batch_size=config.batch_size,
        epochs=config.epochs,
        seed=seed,
        label="sft-order",
        shuffle_first_epoch=False,
    )
    training = tinker_loop.ResumableTraining(
        output_dir,
        stage="sft",
        key=tinker_loop.fingerprint(base, config, seed, dpo_state, examples),
        total_steps=len(batches),
        options=options,
    )
    if training.finished:
        logger.info("sft: already trained (%s)", training.progress.sampler_path)
        return training.finish(base, SFT_PANELS)

    def start() -> Any:
        if dpo_state:
            # The DPO weights, a new optimizer: the TRL backend also starts SFT with fresh Adam moments.
            return service.create_training_client_from_state(dpo_state).result()
        return service.create_lora_training_client(base_model=base, rank=config.lora.rank, seed=seed, **layers).result()

    client = training.open_client(service, start)
    logger.info(
        "sft on Tinker: %d examples, %d steps of %d, %s",
        len(examples),
        len(batches),
        config.batch_size,
        f"continuing {dpo_state}" if dpo_state else f"a new LoRA of rank {config.lora.rank} on {base}",
    )
    beta1, beta2 = tinker_common.TRANSFORMERS_ADAM_BETAS

    def send(step: int) -> tuple[Any, list[Any]]:
        data = step_data([examples[i] for i in batches[step]])
        return client.forward_backward(data, "cross_entropy"), data

    def row(step: int, result: Any, data: list[Any]) -> dict[str, Any]:
        # The loss from the returned log-probs: sum of -logprob x weight, i.e. the mean over trained tokens.
        loss = 0.0
        for datum, output in zip(data, result.loss_fn_outputs, strict=True):
            logprobs = output["logprobs"].data
            loss -= sum(lp * w for lp, w in zip(logprobs, tinker_common.datum_weights(datum), strict=True))
        return {"loss": loss}

    plan = tinker_loop.StepPlan(
        learning_rate=lambda step: schedule.learning_rate(
            step, total_steps=len(batches), peak=config.learning_rate, warmup_ratio=config.warmup_ratio
        ),
        adam=lambda lr: tinker_common.adam_params(
            lr, beta1=beta1, beta2=beta2, weight_decay=config.weight_decay, grad_clip=config.max_grad_norm
        ),
        send=send,
        row=row,
    )
    training.run(client, plan)
    return training.finish(base, SFT_PANELS)
