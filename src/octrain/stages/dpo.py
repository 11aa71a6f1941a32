"""Stage ``dpo``: distil the constitution into the student with LoRA DPO on the pairs."""

from __future__ import annotations

import dataclasses
from typing import Any

from octrain.core.config import StageName
from octrain.core.layout import ADAPTER_DIR, METRICS_FILE, MODEL_FILE, PAIRS_FILE, PLOT_FILE
from octrain.core.records import ModelRef
from octrain.run.ranks import is_main_process
from octrain.stages.context import RunContext


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    return {
        "student": dataclasses.asdict(config.student),
        "dpo": dataclasses.asdict(config.dpo),
        "trainer": dataclasses.asdict(config.trainer),
        "seed": config.seed,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    # The trainers bring torch and TRL: imported when a stage trains, not when the pipeline is listed.
    from octrain.trainers import build_trainer
    from octrain.trainers.report import read_metrics, read_summary

    config = ctx.config
    out = ctx.stage_dir(StageName.dpo)
    trainer = build_trainer(config.trainer, seed=config.seed, attn_implementation=config.student.attn_implementation)
    trained = trainer.train_dpo(
        ctx.stage_dir(StageName.pairs) / PAIRS_FILE, ModelRef(base=config.student.path), out, config.dpo
    )
    if not is_main_process():
        return {}  # another rank of a multi-process training: rank 0 saved the adapter and reports
    rows = read_metrics(out / METRICS_FILE)
    last = rows[-1] if rows else {}
    report = read_summary(out)
    return {
        "model": trained.label,
        "steps": int(report.get("optimizer_steps", last.get("step", 0))),
        # A run too short for its loss curve to mean much says so (octrain.trainers.report.record_steps).
        **({"note": report["note"]} if report.get("note") else {}),
        "final_loss": last.get("loss"),
        "reward_accuracy": last.get("rewards/accuracies"),
        "reward_margin": last.get("rewards/margins"),
        "files": [str(out / name) for name in (MODEL_FILE, ADAPTER_DIR, METRICS_FILE, PLOT_FILE)],
    }


def describe(summary: dict[str, Any]) -> str:
    loss = summary.get("final_loss")
    accuracy = summary.get("reward_accuracy")
    parts = [f"{summary['steps']} steps"]
    if loss is not None:
        parts.append(f"final loss {loss:.4f}")
    if accuracy is not None:
        parts.append(f"reward accuracy {accuracy:.2f}")
    text = ", ".join(parts)
    return f"{text} ({summary['note']})" if summary.get("note") else text
