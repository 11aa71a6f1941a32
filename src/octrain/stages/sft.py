"""Stage ``sft``: introspective SFT, then one final adapter holding both training updates.

*Sequential* mode (the default, what the paper's code does) folds the DPO adapter into the
base and trains SFT on top; *paper* mode (the Studio's) trains SFT from the base. Either
way the final adapter is the exact weighted sum of the two updates,
``sft.dpo_weight * dDPO + sft.sft_weight * dSFT`` (see :mod:`octrain.trainers.merge`), saved as
one LoRA adapter (loadable by PEFT and vLLM, its rank padded to one vLLM accepts, the
student's tokenizer alongside) and, with ``sft.export_merged``, as full merged weights.
"""

from __future__ import annotations

from typing import Any

from octrain.core.config import SftMode, StageName
from octrain.core.errors import ConfigError, StageError
from octrain.core.layout import MERGED_DIR, METRICS_FILE, MODEL_FILE, PLOT_FILE, SFT_FILE
from octrain.core.records import ModelRef
from octrain.run.ranks import is_main_process
from octrain.stages.context import RunContext

FINAL_ADAPTER = "adapter"


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    return {
        "student": config.student,
        "sft": config.sft,
        "trainer": config.trainer,
        "seed": config.seed,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    # The trainers bring torch and TRL: imported when a stage trains, not when the pipeline is listed.
    from octrain.trainers.merge import combine_adapters, merge_into_weights
    from octrain.trainers.report import read_metrics, read_summary
    from octrain.trainers.trl_sft import train_sft

    config = ctx.config
    if config.trainer.backend.value == "tinker":
        return _run_on_tinker(ctx)
    if config.trainer.backend.value != "trl":
        raise ConfigError(f"trainer.backend={config.trainer.backend.value}: sft runs on trl or tinker in this version")
    out = ctx.stage_dir(StageName.sft)
    dpo = ModelRef.load(ctx.stage_dir(StageName.dpo) / MODEL_FILE)
    sequential = config.sft.mode is SftMode.sequential
    sft_adapter = train_sft(
        ctx.stage_dir(StageName.introspect) / SFT_FILE,
        config.student.path,
        out,
        config.sft,
        config.trainer.trl,
        fold=dpo.adapter if sequential else None,
        seed=config.seed,
        enable_thinking=config.student.enable_thinking,  # the template as preflight checked it
        attn_implementation=config.student.attn_implementation,
    )
    if not is_main_process():
        return {}  # another rank of a multi-process training: rank 0 saved the adapter and writes the rest
    # The final adapter carries the student's tokenizer and chat template, so that it stands on
    # its own (AutoTokenizer, vLLM), and its rank is padded to one vLLM can be configured for.
    combine_adapters(
        [(dpo.adapter, config.sft.dpo_weight), (sft_adapter, config.sft.sft_weight)],
        out / FINAL_ADAPTER,
        pad_for_serving=True,
        tokenizer_from=config.student.path,
    )
    final = ModelRef(base=config.student.path, adapter=FINAL_ADAPTER)
    final.save(out / MODEL_FILE)
    files = [str(out / MODEL_FILE), str(out / FINAL_ADAPTER), str(out / METRICS_FILE), str(out / PLOT_FILE)]
    if config.sft.export_merged:
        from octrain.models.builtin import resolve_model_path

        merge_into_weights(resolve_model_path(config.student.path), out / FINAL_ADAPTER, out / MERGED_DIR)
        files.append(str(out / MERGED_DIR))
    rows = read_metrics(out / METRICS_FILE)
    report = read_summary(out)
    return {
        "mode": config.sft.mode.value,
        "steps": int(report.get("optimizer_steps", rows[-1]["step"] if rows else 0)),
        # A run too short for its loss curve to mean much says so (octrain.trainers.report.record_steps).
        **({"note": report["note"]} if report.get("note") else {}),
        "first_loss": rows[0]["loss"] if rows else None,
        "final_loss": rows[-1]["loss"] if rows else None,
        "model": str(out / MODEL_FILE),
        "files": files,
    }


def _run_on_tinker(ctx: RunContext) -> dict[str, Any]:
    """Sequential SFT on Tinker: the DPO stage's final state trained further; the result stays remote.

    One adapter holds both updates (Tinker cannot fold or merge adapters), so there is no local
    final adapter to combine: ``model.json`` names the ``tinker://`` sampler weights.
    """
    from octrain.trainers.report import read_metrics, read_summary
    from octrain.trainers.tinker_loop import Progress
    from octrain.trainers.tinker_sft import train_sft as train_on_tinker

    config = ctx.config
    out = ctx.stage_dir(StageName.sft)
    dpo = Progress.load(ctx.stage_dir(StageName.dpo))
    if dpo is None or not dpo.final_state_path:
        raise StageError("sft: the dpo stage left no Tinker state to continue from (tinker_progress.json); rerun dpo")
    final = train_on_tinker(
        ctx.stage_dir(StageName.introspect) / SFT_FILE,
        config.student.path,
        out,
        config.sft,
        config.trainer.tinker,
        dpo_state=dpo.final_state_path,
        seed=config.seed,
        enable_thinking=config.student.enable_thinking,
    )
    rows = read_metrics(out / METRICS_FILE)
    report = read_summary(out)
    return {
        "mode": config.sft.mode.value,
        "steps": int(report.get("optimizer_steps", rows[-1]["step"] if rows else 0)),
        # A run too short for its loss curve to mean much says so (octrain.trainers.report.record_steps).
        **({"note": report["note"]} if report.get("note") else {}),
        "first_loss": rows[0]["loss"] if rows else None,
        "final_loss": rows[-1]["loss"] if rows else None,
        "model": str(out / MODEL_FILE),
        "remote": final.remote,
        "files": [str(out / name) for name in (MODEL_FILE, METRICS_FILE, PLOT_FILE)],
    }


def describe(summary: dict[str, Any]) -> str:
    text = f"{summary['mode']}, {summary['steps']} steps"
    if summary.get("final_loss") is not None:
        text += f", loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}"
    if summary.get("note"):
        text += f" ({summary['note']})"
    return text + "; final model in sft/model.json"
