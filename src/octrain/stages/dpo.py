"""Stage ``dpo``: distil the constitution into the student with LoRA, by the method ``distill.method`` names.

``dpo`` (the default, the method's): LoRA DPO on the pairs. ``sdft``: on-policy self-distillation on
the pairs' prompts, the student's own answers graded token by token by the same base model with the
constitution in context (:mod:`octrain.trainers.trl_sdft`). The pairs stage runs either way: it is
cheap at CPU scale, it keeps the stage table the same for both methods, and the prompts both methods
train on are then the same ones. Both write the same files here, so the stages after this one
(introspect, sft, eval) read ``dpo/model.json`` without knowing which method made it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from octrain.constitution.persona_prompts import teacher_context
from octrain.core.config import DistillMethod, OctrainConfig, SdftSettings, SdftTeacherWeights, StageName
from octrain.core.layout import ADAPTER_DIR, METRICS_FILE, MODEL_FILE, PAIRS_FILE, PLOT_FILE
from octrain.core.records import Message, ModelRef
from octrain.run.ranks import is_main_process
from octrain.stages.context import RunContext


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    settings = {
        "student": config.student,
        "trainer": config.trainer,
        "seed": config.seed,
    }
    if config.distill.method is DistillMethod.dpo:
        # DPO reads none of distill.sdft: changing it does not retrain a DPO stage. Switching the
        # method changes the keys below, so the stage trains again.
        return {**settings, "dpo": config.dpo}
    # With the answer length resolved: a change of pairs.sampling.max_new_tokens reaches it.
    distill = dataclasses.replace(config.distill, sdft=sdft_settings(config))
    separate = trained_by_teacher(config)
    return {
        **settings,
        "distill": distill,
        "teacher_context": sdft_context(ctx),  # the constitution as the teacher reads it
        # A separate teacher's weights are part of what the stage learns from.
        **({"teacher": config.teacher} if separate else {}),
    }


def trained_by_teacher(config: OctrainConfig) -> bool:
    """True when stage 1 distils on-policy from the run's separate teacher model (not the student's own weights)."""
    return (
        config.distill.method is DistillMethod.sdft
        and config.distill.sdft.teacher_weights is SdftTeacherWeights.teacher
    )


def sdft_answer_length(config: OctrainConfig) -> int:
    """Tokens per answer the on-policy student writes: ``distill.sdft.max_completion_length``, by
    default as long as the pairs' answers."""
    return config.distill.sdft.max_completion_length or config.pairs.sampling.max_new_tokens


def sdft_settings(config: OctrainConfig) -> SdftSettings:
    """``distill.sdft`` with the answer length resolved (:func:`sdft_answer_length`)."""
    return dataclasses.replace(config.distill.sdft, max_completion_length=sdft_answer_length(config))


def sdft_context(ctx: RunContext) -> list[Message]:
    """What the self-distillation teacher reads before each prompt: what the pairs' teacher reads."""
    config = ctx.config
    return teacher_context(ctx.constitution, config.teacher.assistant_name, config.pairs.teacher_prompt)


def run(ctx: RunContext) -> dict[str, Any]:
    # The trainers bring torch and TRL: imported when a stage trains, not when the pipeline is listed.
    from octrain.trainers import build_trainer
    from octrain.trainers.report import read_metrics, read_summary

    config = ctx.config
    out = ctx.stage_dir(StageName.dpo)
    pairs = ctx.stage_dir(StageName.pairs) / PAIRS_FILE
    start = ModelRef(base=config.student.path)
    trainer = build_trainer(config.trainer, seed=config.seed, attn_implementation=config.student.attn_implementation)
    method = config.distill.method
    if method is DistillMethod.sdft:
        separate = trained_by_teacher(config)
        trained = trainer.train_sdft(  # type: ignore[attr-defined]
            pairs,
            start,
            out,
            sdft_settings(config),
            sdft_context(ctx),
            enable_thinking=config.student.enable_thinking,
            teacher=ModelRef(base=config.teacher.path) if separate else None,
        )
    else:
        trained = trainer.train_dpo(pairs, start, out, config.dpo)
    if not is_main_process():
        return {}  # another rank of a multi-process training: rank 0 saved the adapter and reports
    rows = read_metrics(out / METRICS_FILE)
    last = rows[-1] if rows else {}
    report = read_summary(out)
    return {
        "method": method.value,
        "model": trained.label,
        "steps": int(report.get("optimizer_steps", last.get("step", 0))),
        # A run too short for its loss curve to mean much says so (octrain.trainers.report.record_steps).
        **({"note": report["note"]} if report.get("note") else {}),
        "final_loss": last.get("loss"),
        # DPO's reward figures; self-distillation has none, and reports its answers' length instead.
        "reward_accuracy": last.get("rewards/accuracies"),
        "reward_margin": last.get("rewards/margins"),
        **({"answer_length": last.get("completions/mean_length")} if method is DistillMethod.sdft else {}),
        **({"teacher": config.teacher.path} if trained_by_teacher(config) else {}),
        "files": [str(out / name) for name in (MODEL_FILE, ADAPTER_DIR, METRICS_FILE, PLOT_FILE)],
    }


def describe(summary: dict[str, Any]) -> str:
    loss = summary.get("final_loss")
    accuracy = summary.get("reward_accuracy")
    # Summaries written before distill.method existed have no "method": they are DPO's.
    parts = []
    if summary.get("method") == DistillMethod.sdft.value:
        teacher = summary.get("teacher")
        parts.append(f"on-policy distillation from {teacher} (sdft)" if teacher else "self-distillation (sdft)")
    parts.append(f"{summary['steps']} steps")
    if loss is not None:
        parts.append(f"final loss {loss:.4f}")
    if accuracy is not None:
        parts.append(f"reward accuracy {accuracy:.2f}")
    if summary.get("answer_length") is not None:
        parts.append(f"answers of {summary['answer_length']:.0f} tokens on average")
    text = ", ".join(parts)
    return f"{text} ({summary['note']})" if summary.get("note") else text
