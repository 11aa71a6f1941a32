"""Stage 1 by on-policy self-distillation (``distill.method=sdft``) with TRL's experimental SDFTTrainer.

The student answers the prompts of the pairs itself (on-policy), and the same base model with the
constitution in context, the teacher, scores every token of those answers: the student's LoRA
adapter learns to move its next-token distribution, on its own answers, towards what the model
would say with the character in front of it (by default a Jensen-Shannon divergence on the
student's 100 most likely tokens; docs/on-policy-distillation.md). The pairs' answers are not read.
With ``teacher_model_kind=base`` the teacher is the student with its adapter switched off: one copy
of the weights, as for DPO's reference. With ``teacher_weights=teacher`` the run's ``teacher`` model
reads the constitution and grades instead (on-policy distillation from a separate, usually larger,
teacher): it must share the student's vocabulary, since the loss compares the two models' next-token
distributions token by token.

TRL's ``SDFTTrainer`` samples, builds the teacher's input, runs both forward passes and computes the
loss. What it lacks for octrain, and this module adds:

* The teacher's context as turns. TRL's ``DemonstrationTeacherContextBuilder`` formats the
  privileged context into the user turn's text (``"{prompt}\\n\\n{privileged_context}"``), which
  flattens octrain's teacher context (:func:`octrain.constitution.persona_prompts.teacher_context`:
  a system prompt and/or the constitution's example exchanges as earlier turns, the form a 135M
  teacher actually follows). :class:`PersonaContextBuilder` puts those messages before the prompt
  instead, with one system message at most (:func:`octrain.constitution.persona_prompts.with_context`). The context
  travels in the dataset's ``privileged_context`` column as JSON text, one copy per prompt: the data
  then says by itself what the teacher reads, as TRL's data contract has it, and the builder keeps no
  state of its own.
* No truncation of the teacher's prompt. TRL cuts every prompt to ``max_prompt_length`` (512) tokens
  from the left, which would drop the constitution at the start of a long teacher prompt first: the
  limit is switched off (the pairs stage already kept prompts within ``pairs.max_length``).
* A separate teacher with the context. TRL's SDFTTrainer grades with the student's own weights only,
  and its stable ``DistillationTrainer`` (which takes a separate teacher) gives the teacher the
  student's prompt, without the constitution. The subclass below keeps SDFT's privileged context
  and swaps in the frozen teacher model after TRL has set up its own teacher (the student's base).
* octrain's learning-rate schedule (:class:`~octrain.trainers.trl_common.ScheduleMixin`) and a batch of
  exactly ``batch_size`` answers (TRL's generation batch must divide by ``num_generations``).

Outputs are DPO's: ``adapter/``, ``metrics.jsonl``, ``train_summary.json``, ``training.png`` and
``model.json`` under the ``dpo`` stage's folder, resumable from ``checkpoints/``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.core.config import SdftSettings, TRLOptions
from octrain.core.errors import ConfigError
from octrain.core.layout import ADAPTER_DIR, MODEL_FILE
from octrain.core.records import Message, ModelRef, PreferencePair, load_records
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

SDFT_PANELS = (
    ("distillation loss", ("loss",)),
    ("answer length (tokens)", ("completions/mean_length",)),
    ("answers cut off", ("completions/clipped_ratio",)),
    ("gradient norm", ("grad_norm",)),
)

# TRL's EMA teacher is a second LoRA adapter of this name on the student; it is not part of the result.
EMA_TEACHER_ADAPTER = "teacher"


def distinct_prompts(pairs: Sequence[PreferencePair]) -> list[list[Message]]:
    """The pairs' prompts, each once, in the order they first appear (several pairs may share a prompt)."""
    seen: set[str] = set()
    prompts = []
    for pair in pairs:
        key = json.dumps(pair.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(pair.prompt)
    return prompts


def sdft_rows(prompts: Sequence[list[Message]], context: Sequence[Message]) -> list[dict[str, Any]]:
    """The SDFTTrainer's dataset: each prompt, and the teacher's context as JSON text beside it."""
    privileged = json.dumps(list(context))
    return [{"prompt": prompt, "privileged_context": privileged} for prompt in prompts]


def fitted_batch(batch_size: int, num_generations: int, prompt_count: int) -> int:
    """The answers per step: ``batch_size``, or all the prompts' answers when they cannot fill one batch.

    DPO with fewer pairs than a batch trains one smaller step; TRL's sampler would instead drop the
    incomplete group of prompts and train nothing, so the batch shrinks to what the prompts make.
    """
    if prompt_count * num_generations >= batch_size:
        return batch_size
    logger.warning(
        "dpo (sdft): %d distinct prompts x %d answers cannot fill a batch of %d: one step of %d answers per epoch",
        prompt_count,
        num_generations,
        batch_size,
        prompt_count * num_generations,
    )
    return prompt_count * num_generations


def exact_batch_split(batch_size: int, per_device_limit: int, world: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) whose product over ``world`` processes is exactly ``batch_size``.

    :func:`~octrain.trainers.trl_common.shared_args` rounds the accumulation up, which can make the
    effective batch larger than asked; TRL's generation batch is that product, and it must stay a
    multiple of ``num_generations``, so here it is exact: the per-device batch is the largest divisor
    of the per-process share that fits ``per_device_limit``.
    """
    if batch_size % world:
        raise ConfigError(
            f"distill.sdft.batch_size={batch_size}: expected a multiple of trainer.num_processes={world} "
            "(each process samples its share of the answers)"
        )
    share = batch_size // world
    per_device = max(d for d in range(1, min(share, per_device_limit) + 1) if share % d == 0)
    return per_device, share // per_device


def build_sdft_args(
    config: SdftSettings, options: TRLOptions, output_dir: Path, *, batch_size: int, seed: int, enable_thinking: bool
) -> Any:
    """TRL's SDFTConfig for ``config`` (``batch_size`` already fitted to the prompts)."""
    sdft_config = _sdft_module().SDFTConfig
    if config.max_completion_length is None:
        raise ConfigError("distill.sdft.max_completion_length: resolve it (pairs.sampling.max_new_tokens) first")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device, accumulation = exact_batch_split(batch_size, options.per_device_batch_size, world)
    shared = shared_args(options, output_dir, batch_size=batch_size, seed=seed)
    shared.update(per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
    return sdft_config(
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        # A ratio below 1, read by ScheduleMixin.create_scheduler (as for DPO), not a step count.
        warmup_steps=config.warmup_ratio,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        # The teacher's prompt carries the whole context: never cut from the left (see the module docstring).
        max_prompt_length=None,
        temperature=config.temperature,
        distillation_mode=config.distillation_mode.value,
        distillation_topk=config.distillation_topk,
        distillation_alpha=config.distillation_alpha,
        teacher_model_kind=config.teacher_model_kind.value,
        # The student answers as the samplers make it answer (Qwen3-style templates: thinking off by default).
        chat_template_kwargs={"enable_thinking": enable_thinking},
        **shared,
    )


def _sdft_module() -> Any:
    """``trl.experimental.sdft``, imported without its warning that the API is experimental (the docs say so)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        import trl.experimental.sdft as sdft

    return sdft


def make_trainer_class() -> type:
    """Build the SDFTTrainer subclass lazily, so importing octrain never imports TRL."""
    from octrain.trainers.sdft_ema_resume import ResumedEmaTeacher  # imports transformers

    sdft = _sdft_module()

    class CharacterSDFTTrainer(ScheduleMixin, sdft.SDFTTrainer):
        """SDFTTrainer with octrain's teacher context and LR schedule, and optionally a separate
        teacher model (see the module docstring)."""

        def __init__(self, *args: Any, separate_teacher: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            ResumedEmaTeacher.attach(self)  # a resumed run goes on with the EMA teacher of its checkpoint
            self.teacher_context_builder = make_context_builder_class()(self)
            self.separate_teacher = separate_teacher is not None
            if self.separate_teacher:
                # TRL pointed teacher_model at the student (kind "base"); the frozen teacher replaces it.
                self.teacher_model = self._prepare_frozen(separate_teacher)

        def _prepare_frozen(self, model: Any) -> Any:
            from trl.models import prepare_deepspeed, prepare_fsdp

            model.requires_grad_(False)
            model.eval()
            if self.is_deepspeed_enabled:
                return prepare_deepspeed(model, self.accelerator)
            if self.is_fsdp_enabled:
                return prepare_fsdp(model, self.accelerator)
            return self.accelerator.prepare_model(model, evaluation_mode=True)

        def _get_teacher_context_for_self_distillation(self) -> Any:
            import contextlib

            if self.separate_teacher:
                return contextlib.nullcontext()  # its own weights: no adapter of the student's to switch off
            return super()._get_teacher_context_for_self_distillation()

    return CharacterSDFTTrainer


def make_context_builder_class() -> type:
    """The teacher-context builder that keeps octrain's context as messages (imported lazily, as TRL is)."""
    from octrain.constitution.persona_prompts import with_context

    builder = _sdft_module().sdft_trainer.DemonstrationTeacherContextBuilder

    class PersonaContextBuilder(builder):  # type: ignore[misc, valid-type]
        """The teacher reads the persona context (JSON messages in ``privileged_context``) before the prompt.

        TRL calls ``_compose_teacher_prompt`` for the teacher's forward pass (and for sampling, with
        ``generate_from_teacher``), then applies the chat template to what it returns; everything else
        (tokenising, padding, appending the student's answer) stays TRL's.
        """

        def _compose_teacher_prompt(self, prompt: Any, privileged_context: Any) -> list[Message]:
            if not isinstance(prompt, list):
                raise ValueError("sdft: the prompts are conversations (lists of messages), as the pairs store them")
            context = json.loads(privileged_context) if isinstance(privileged_context, str) else privileged_context
            return with_context(context or [], prompt)

    return PersonaContextBuilder


def build_sdft_trainer(
    pairs_path: Path,
    model: Any,
    args: Any,
    tokenizer: Any,
    config: SdftSettings,
    context: Sequence[Message],
    separate_teacher: Any = None,
) -> Any:
    """The SDFT trainer for ``model`` on the distinct prompts of ``pairs_path``, teacher context ``context``
    (read by ``separate_teacher`` when given, else by the student's own weights)."""
    from datasets import Dataset

    prompts = distinct_prompts(load_records(pairs_path, PreferencePair))
    return make_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sdft_rows(prompts, context)),
        processing_class=tokenizer,
        peft_config=lora_config(config.lora, model),
        separate_teacher=separate_teacher,
    )


def check_shared_vocabulary(student_path: str, teacher_path: str, *, same_width: bool = True) -> None:
    """ConfigError unless the teacher's tokenizer (and, with ``same_width``, output layer) match the student's.

    The loss compares the two models' next-token distributions position by position, so a token id
    must mean the same in both (the tokenizers' vocabularies equal) and, where whole distributions
    are compared (TRL), the logits must have the same width (``vocab_size``, which some families pad
    differently between sizes). Tinker's loss reads one log-prob per sampled token, so there only the
    tokenizers must agree (``same_width=False``). Reads the tokenizers and configs only, never the weights.
    """
    from transformers import AutoConfig, AutoTokenizer

    from octrain.models.builtin import resolve_model_path

    paths = {"student": resolve_model_path(student_path), "teacher": resolve_model_path(teacher_path)}
    vocab = {role: AutoTokenizer.from_pretrained(path).get_vocab() for role, path in paths.items()}
    reason = None
    if vocab["student"] != vocab["teacher"]:
        differ = sorted(set(vocab["student"].items()) ^ set(vocab["teacher"].items()))
        reason = f"their tokenizers differ ({len(differ)} token-id entries, e.g. {differ[0][0]!r})"
    elif same_width:
        width = {role: AutoConfig.from_pretrained(path).get_text_config().vocab_size for role, path in paths.items()}
        if width["student"] != width["teacher"]:
            reason = f"their output layers differ in width (vocab_size {width['student']} vs {width['teacher']})"
    if reason:
        raise ConfigError(
            f"distill.sdft.teacher_weights=teacher: the teacher {teacher_path} cannot grade the student {student_path} "
            f"token by token: {reason}. Use a teacher of the student's family (the same tokenizer), or "
            "distill.sdft.teacher_weights=student (self-distillation), or distill.method=dpo (any teacher)"
        )


def load_frozen_teacher(teacher: ModelRef, dtype: Any, attn_implementation: str) -> Any:
    """The teacher's weights for grading: its base, with its adapter folded in when it has one."""
    from transformers import AutoModelForCausalLM

    from octrain.models.builtin import resolve_model_path

    if teacher.remote:
        raise ConfigError(f"dpo (sdft): the teacher {teacher.label} is remote; grading needs its weights here")
    if teacher.adapter:
        from octrain.trainers.merge import fold_adapter

        return fold_adapter(teacher.base, teacher.adapter).to(dtype)
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(teacher.base), dtype=dtype, attn_implementation=attn_implementation
    )


def train_sdft(
    pairs_path: Path,
    start: ModelRef,
    output_dir: Path,
    config: SdftSettings,
    context: Sequence[Message],
    options: TRLOptions | None = None,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    enable_thinking: bool = False,
    teacher: ModelRef | None = None,
) -> ModelRef:
    """Train a LoRA adapter by self-distillation on the prompts in ``pairs_path``; the contract of
    :func:`octrain.trainers.trl_dpo.train_dpo` (same outputs under ``output_dir``, same resume).

    Args:
        context: what the teacher reads before each prompt (``teacher_context(...)``).
        config: ``distill.sdft`` with ``max_completion_length`` resolved.
        enable_thinking: the student's, for its chat template (as the samplers and SFT pass it).
        teacher: a separate model to read ``context`` and grade (the student's vocabulary); None:
            the student's own weights, as ``config.teacher_model_kind`` says.
    """
    from octrain.models.builtin import resolve_model_path

    if start.adapter or start.remote:
        raise ConfigError(f"dpo (sdft): training starts from a base model; got {start.label} (fold the adapter in)")
    if not context:
        raise ConfigError("dpo (sdft): the teacher has no context to read: it would grade with the student's eyes")
    options = options or TRLOptions()
    prompt_count = len(distinct_prompts(load_records(pairs_path, PreferencePair)))
    if prompt_count == 0:
        raise ConfigError(f"dpo (sdft): {pairs_path} holds no prompts to answer")
    if teacher is not None:
        check_shared_vocabulary(start.base, teacher.base)
    batch_size = fitted_batch(config.batch_size, config.num_generations, prompt_count)
    _, bf16 = precision()
    model_path = resolve_model_path(start.base)
    tokenizer = load_tokenizer(model_path)
    with student_and_arguments(
        model_path,
        options,
        lambda: on_one_device(
            build_sdft_args(
                config, options, output_dir, batch_size=batch_size, seed=seed, enable_thinking=enable_thinking
            )
        ),
        attn_implementation=attn_implementation,
    ) as (model, args):
        frozen_teacher = (
            None if teacher is None else load_frozen_teacher(teacher, model.dtype, model.config._attn_implementation)
        )
        trainer = build_sdft_trainer(pairs_path, model, args, tokenizer, config, context, frozen_teacher)
    last = last_checkpoint(args.output_dir, stage="dpo")
    if last:
        logger.info("dpo (sdft): resuming from %s", last)
    logger.info(
        "dpo (sdft): %d distinct prompts x %d answers of up to %d tokens, batch %d (%d per device x %d "
        "accumulation), teacher %s with %d context messages, %s, %s%s",
        prompt_count,
        config.num_generations,
        config.max_completion_length,
        batch_size,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        config.teacher_model_kind.value if teacher is None else teacher.label,
        len(context),
        config.distillation_mode.value,
        "bf16" if bf16 else "fp32",
        " on a 4-bit NF4 base" if options.load_in_4bit else "",
    )
    trainer.train(resume_from_checkpoint=last)
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    if EMA_TEACHER_ADAPTER in getattr(peft_model, "peft_config", {}):
        peft_model.delete_adapter(EMA_TEACHER_ADAPTER)  # the teacher's average is a means, not the result
    finish_training(trainer, tokenizer, output_dir, output_dir / ADAPTER_DIR, stage="dpo", panels=SDFT_PANELS)
    if trainer.accelerator.is_main_process:
        ModelRef(base=start.base, adapter=ADAPTER_DIR).save(output_dir / MODEL_FILE)
    return ModelRef(base=start.base, adapter=str(output_dir / ADAPTER_DIR))
