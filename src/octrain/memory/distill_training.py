"""What stage 1 by on-policy distillation (``distill.method=sdft``) needs on one GPU, for the worst batch.

It differs from DPO's need (:mod:`octrain.memory.training`) in four ways, each read from TRL 1.16's
SDFTTrainer:

* one sequence per answer, not two: a device batch of ``b`` answers is ``b`` sequences of prompt
  plus answer (the pairs stage kept those within ``pairs.max_length``);
* the student *writes* its answers during training, with transformers' ``generate`` on the
  training process: a KV cache for the batch at full length;
* the loss reads whole next-token distributions: TRL materialises the student's logits over every
  answer position (bf16, an fp32 copy, log-softmax and its gradient: 12 bytes an entry) and the
  teacher's (no gradient: 6 bytes an entry), whatever ``distillation_mode`` keeps of them;
* the teacher's forward pass: the student's own weights with the adapter off (nothing more to
  hold), or with ``distill.sdft.teacher_weights=teacher`` a second, frozen model in bf16 whose
  forward, with the constitution in front of the prompt, runs without gradients (one block at a time).

Everything else (frozen weights, LoRA factors and AdamW, activations per token, checkpointing,
QLoRA) is sized as DPO's is, with ``distill.sdft.lora``.
"""

from __future__ import annotations

from octrain.core.config import OctrainConfig
from octrain.memory.lora_training import activation_bytes_per_layer_token, lora_training_parts
from octrain.memory.needs import GIB, TRAIN_CONTEXT_GIB, Need, short_name
from octrain.memory.shapes import architecture_of
from octrain.stages.dpo import sdft_answer_length, sdft_settings, trained_by_teacher
from octrain.trainers.trl_sdft import exact_batch_split

STUDENT_LOGIT_BYTES = 12  # bf16 logits, their fp32 copy, the log-softmax and its gradient
TEACHER_LOGIT_BYTES = 6  # bf16 logits and the fp32 copy the divergence reads; no gradient


def sdft_need(config: OctrainConfig, *, assume_cuda: bool = True) -> Need:
    """Peak memory of LoRA on-policy distillation with TRL on one GPU (see the module docstring)."""
    settings = sdft_settings(config)
    options = config.trainer.trl
    arch = architecture_of(config.student)
    answer_tokens = sdft_answer_length(config)
    length = max(config.pairs.max_length, answer_tokens)  # prompt + answer
    per_device, _ = exact_batch_split(
        settings.batch_size, options.per_device_batch_size, max(1, config.trainer.num_processes)
    )
    tokens = per_device * length
    checkpointing = assume_cuda if options.gradient_checkpointing is None else options.gradient_checkpointing
    qlora = options.load_in_4bit
    parts, activations = lora_training_parts(arch, settings.lora, tokens, checkpointing=checkpointing, qlora=qlora)
    separate = trained_by_teacher(config)
    teacher = architecture_of(config.teacher) if separate else arch
    # The teacher's no-grad forward holds one block's activations at a time (its prompt is longer by the context).
    activations += tokens * activation_bytes_per_layer_token(teacher, 0, ())
    parts["activations"] = activations / GIB
    positions = per_device * answer_tokens
    parts["logits"] = positions * arch.vocab_size * (STUDENT_LOGIT_BYTES + TEACHER_LOGIT_BYTES) / GIB
    parts["generation KV cache"] = tokens * arch.layers * 2 * arch.kv_width * 2 / GIB
    if separate:
        parts["teacher weights"] = teacher.parameters * 2 / GIB
    parts["runtime"] = TRAIN_CONTEXT_GIB
    what = f"TRL on-policy distillation, {per_device} x {length} tok, " + ("QLoRA" if qlora else "bf16 LoRA")
    what += ", ckpt" if checkpointing else ", no ckpt"
    if separate:
        what += f", teacher {short_name(config.teacher.path)} frozen beside it"
    return Need(f"student {short_name(config.student.path)} ({what})", "train", parts)
