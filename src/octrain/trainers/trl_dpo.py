"""LoRA DPO with TRL, as the method prescribes (docs/method.md section 2).

TRL's ``DPOTrainer`` tokenizes the pairs, runs the policy and the reference forward passes and logs
its rewards; the loss is the method's objective, :func:`octrain.trainers.dpo_objective.dpo_objective`
(summed-log-prob sigmoid DPO, the NLL term on the chosen answer, and the paper's per-token KL penalty,
which TRL lacks), the function the Tinker backend calls too. :class:`CharacterDPOTrainer` computes it
from the per-token log-probs TRL already computes for the policy and the reference (captured with a
forward hook, so no extra forward pass), and logs the three parts of the loss separately. The
arguments still name the first two parts in TRL's terms (``loss_type=["sigmoid", "sft"]``).

The reference is the starting model with the LoRA adapter switched off: one copy of the
weights in memory (with ``trainer.trl.load_in_4bit`` the base, and so the reference, is the
4-bit one: :mod:`octrain.trainers.model_loading`). Precision follows the hardware: bf16 on a
GPU that supports it, fp32 on the CPU. Training resumes from the last checkpoint in
``output_dir/checkpoints``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from octrain.core.config import DpoStageConfig, TRLOptions
from octrain.core.errors import ConfigError
from octrain.core.layout import ADAPTER_DIR, MODEL_FILE
from octrain.core.records import ModelRef, PreferencePair, load_records
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

DPO_PANELS = (
    ("loss", ("loss", "dpo_loss", "nll_loss")),
    ("reward margin", ("rewards/margins",)),
    ("reward accuracy", ("rewards/accuracies",)),
    ("KL penalty", ("kl_penalty",)),
)


def make_trainer_class() -> type:
    """Build the DPOTrainer subclass lazily, so importing octrain never imports TRL."""
    from trl import DPOTrainer

    from octrain.trainers.dpo_objective import PART_NAMES, AnswerSums, dpo_objective

    class CharacterDPOTrainer(ScheduleMixin, DPOTrainer):
        """DPOTrainer with the method's objective (:mod:`octrain.trainers.dpo_objective`) as its loss, the
        parts logged separately, on octrain's LR schedule (:class:`~octrain.trainers.trl_common.ScheduleMixin`)."""

        def __init__(self, *args: Any, kl_weight: float = 0.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.kl_weight = kl_weight
            self.nll_weight = _nll_weight(self)

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            # TRL calls the model twice per batch: policy (with grad), then reference (adapter off). A forward
            # hook keeps both outputs, so the objective needs no extra forward pass; TRL's own loss (its
            # sigmoid + sft, the objective's first two parts) is computed and dropped, its metrics kept.
            captured: list[Any] = []
            hook_target = self.accelerator.unwrap_model(self.model)
            handle = hook_target.register_forward_hook(lambda _m, _a, out: captured.append(out))
            try:
                result = super()._compute_loss(model, inputs, return_outputs)
            finally:
                handle.remove()
            if len(captured) < 2:
                return result  # precomputed reference log-probs: no per-token reference to compare
            policy, reference = captured[0].log_probs, captured[1].log_probs
            mask = inputs["completion_mask"][..., 1:].to(policy.dtype)
            width = mask.size(1)  # prompt-learning PEFT prepends virtual tokens: keep the real positions, as TRL does
            sums = AnswerSums.from_padded(policy[:, -width:], reference[:, -width:].detach(), mask)
            loss, parts = dpo_objective(sums, beta=self.beta, nll_weight=self.nll_weight, kl_weight=self.kl_weight)
            if self.aux_loss_enabled:  # a mixture-of-experts student: TRL's router balance term stays in the loss
                loss = loss + self.router_aux_loss_coef * captured[0].aux_loss
            mode = "train" if self.model.training else "eval"
            gather = self.accelerator.gather_for_metrics
            for name in PART_NAMES:
                self._metrics[mode][name].append(gather(parts[name]).mean().item())
            return (loss, result[1]) if return_outputs else loss

    return CharacterDPOTrainer


def _nll_weight(trainer: Any) -> float:
    """The NLL weight in the trainer's arguments, once they are known to ask for the method's objective.

    :func:`build_dpo_args` writes the objective as TRL's ``loss_type=["sigmoid", "sft"]`` with weights
    ``[1, nll_weight]``; CharacterDPOTrainer computes that objective itself, so arguments asking TRL for
    anything else would be silently ignored: refuse them.
    """
    weights = dict(zip(trainer.loss_types, trainer.loss_weights, strict=True))
    if set(weights) - {"sigmoid", "sft"} or weights.get("sigmoid") != 1.0:
        raise ValueError(f"CharacterDPOTrainer trains sigmoid DPO (weight 1) + sft; got loss_type weights {weights}")
    if trainer.ld_alpha is not None or trainer.use_weighting or trainer.f_divergence_type != "reverse_kl":
        raise ValueError("CharacterDPOTrainer trains plain DPO: ld_alpha, use_weighting and f_divergence_type unset")
    return float(weights.get("sft", 0.0))


def build_dpo_args(config: DpoStageConfig, options: TRLOptions, output_dir: Path, *, seed: int) -> Any:
    """TRL's DPOConfig for the method's settings."""
    from trl import DPOConfig

    loss_types, weights = ["sigmoid"], [1.0]
    if config.nll_weight > 0:
        loss_types.append("sft")
        weights.append(config.nll_weight)
    return DPOConfig(
        beta=config.beta,
        loss_type=loss_types,
        loss_weights=weights,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        # A ratio below 1, read by ScheduleMixin.create_scheduler (octrain.trainers.schedule), not by
        # transformers' get_warmup_steps: that rule gives a one-step run one warmup step at LR 0.
        warmup_steps=config.warmup_ratio,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_length=config.max_length,
        **shared_args(options, output_dir, batch_size=config.batch_size, seed=seed),
    )


def train_dpo(
    pairs_path: Path,
    start: ModelRef,
    output_dir: Path,
    config: DpoStageConfig,
    options: TRLOptions | None = None,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> ModelRef:
    """Train a LoRA adapter with DPO on ``pairs_path``; see :class:`~octrain.trainers.base.Trainer`.

    ``attn_implementation`` is the student's (``student.attn_implementation``): it belongs to the
    model, not to the trainer options.
    """
    from datasets import Dataset

    from octrain.models.builtin import resolve_model_path

    if start.adapter or start.remote:
        raise ConfigError(f"dpo: training starts from a base model; got {start.label} (fold the adapter in first)")
    options = options or TRLOptions()
    pairs = load_records(pairs_path, PreferencePair)
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    _, bf16 = precision()
    model_path = resolve_model_path(start.base)
    tokenizer = load_tokenizer(model_path)
    # The arguments before the model: under ZeRO-3 or FSDP they decide how it is loaded (student_and_arguments).
    with student_and_arguments(
        model_path,
        options,
        lambda: on_one_device(build_dpo_args(config, options, output_dir, seed=seed)),
        attn_implementation=attn_implementation,
    ) as (model, args):
        trainer = make_trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(config.lora, model),
            kl_weight=config.kl_weight,
        )
    last = last_checkpoint(args.output_dir, stage="dpo")
    if last:
        logger.info("dpo: resuming from %s", last)
    logger.info(
        "dpo: %d pairs, batch %d (%d per device x %d accumulation), %s%s, %s attention",
        len(dataset),
        config.batch_size,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        "bf16" if bf16 else "fp32",
        " on a 4-bit NF4 base" if options.load_in_4bit else "",
        attn_implementation,
    )
    trainer.train(resume_from_checkpoint=last)
    finish_training(trainer, tokenizer, output_dir, output_dir / ADAPTER_DIR, stage="dpo", panels=DPO_PANELS)
    result = ModelRef(base=start.base, adapter=ADAPTER_DIR)
    if trainer.accelerator.is_main_process:
        result.save(output_dir / MODEL_FILE)
    return ModelRef(base=start.base, adapter=str(output_dir / ADAPTER_DIR))
