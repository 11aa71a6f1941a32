"""Stage ``eval``: does the character hold? Base vs trained, one report.

The stage runs the suite ``eval.suite`` names on the final model of the ``sft`` stage, compared
with the run's base student and its DPO-only model, into ``RUN_DIR/eval``:

* ``paper`` (:mod:`octrain.evaluation.paper_suite`): the method's evaluation: robustness under
  break-character suffixes scored by a persona classifier, revealed trait preferences,
  coherence judged in both orders, and prefill;
* ``shift`` (:mod:`octrain.evaluation.character_shift`): did training give the student the
  character, measured with instruments that work on models small enough to train on a CPU.

Both write ``eval/results.json`` and ``eval/report.md``; :func:`describe` reads the summary
either returns. The stage's fingerprint is :func:`octrain.evaluation.fingerprint.fingerprint`.

Two evaluations are optional, after either suite, each appended to ``report.md`` as a section:
``eval.capability.enabled`` scores base and trained on benchmarks through lm-evaluation-harness
(:mod:`octrain.evaluation.capability`, into ``eval/capability``), and ``eval.ood.enabled``
measures the character off the training distribution (:mod:`octrain.evaluation.ood`, into
``eval/ood``). ``eval.paper_reference=llama|qwen|gemma`` then sets the figures beside the paper's
(``eval/paper_comparison.md``, :mod:`octrain.evaluation.reproduction`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from octrain.core.config import EvalSuite, StageName
from octrain.core.layout import MODEL_FILE, REPORT_MD_FILE
from octrain.core.records import ModelRef
from octrain.evaluation.fingerprint import fingerprint
from octrain.stages.context import RunContext

__all__ = ["describe", "fingerprint", "run"]


def run(ctx: RunContext) -> dict[str, Any]:
    trained = ModelRef.load(ctx.stage_dir(StageName.sft) / MODEL_FILE)
    dpo_only = ModelRef.load(ctx.stage_dir(StageName.dpo) / MODEL_FILE)
    out = ctx.stage_dir(StageName.eval)
    # The suites are imported when the stage runs: they bring numpy and the samplers' machinery,
    # which `import octrain.stages` (and every command that lists the stages) does without.
    if ctx.config.eval.suite is EvalSuite.shift:
        from octrain.evaluation.character_shift import evaluate_shift

        summary = evaluate_shift(ctx, trained, out, dpo_ref=dpo_only)
    else:
        from octrain.evaluation.paper_suite import evaluate_model

        summary = evaluate_model(ctx, trained, out, dpo_ref=dpo_only)
    return {**summary, **_optional_evaluations(ctx, trained, out)}


def _append_section(report: Path, section: str) -> None:
    """``section`` (a Markdown document) at the end of ``report``, its title one level down."""
    from octrain.core.files import write_text_atomic

    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    write_text_atomic(report, text.rstrip() + "\n\n#" + section)


def _optional_evaluations(ctx: RunContext, trained: ModelRef, out: Path) -> dict[str, Any]:
    """Capability retention and the out-of-distribution check, where the config asks for them."""
    settings, student = ctx.config.eval, ctx.config.student
    found: dict[str, Any] = {}
    if settings.capability.enabled:
        from octrain.evaluation.capability import CapabilitySettings, base_and_trained, measure_capability

        models = base_and_trained(student.path, trained.adapter, trained.label, student.dtype.value)
        result = measure_capability(models, CapabilitySettings.from_config(settings.capability), out / "capability")
        found["capability_change"] = {row["task"]: row["change"]["mean"] for row in result["tasks"]}
        _append_section(out / REPORT_MD_FILE, Path(result["files"][1]).read_text(encoding="utf-8"))
    if settings.ood.enabled:
        from octrain.evaluation.ood import OOD_REPORT, evaluate_ood

        result = evaluate_ood(ctx, trained, out / "ood")
        found["ood_trained_in_character"] = {
            name: figure["in_character"]["trained"]["rate"] if figure["counts"] else None
            for name, figure in result["slices"].items()
        }
        _append_section(out / REPORT_MD_FILE, (out / "ood" / OOD_REPORT).read_text(encoding="utf-8"))
    if settings.paper_reference is not None:
        from octrain.evaluation.reproduction import measured_from_eval, write_comparison

        persona = ctx.constitution.name
        comparison = write_comparison(
            settings.paper_reference, persona, measured_from_eval(out, persona), out, source="this run's eval stage"
        )
        found["paper_comparison"] = {row["result_key"]: row["verdict"] for row in comparison["rows"]}
    return found


def describe(summary: dict[str, Any]) -> str:
    """One line for the run's log (both suites return these keys)."""
    accuracy = summary.get("classifier_heldout_accuracy")
    return (
        f"{summary['prompts']} prompts; in character: trained {summary['trained_in_character']:.2f}, "
        f"base {summary['base_in_character']:.2f} (classifier accuracy "
        f"{'n/a' if accuracy is None else f'{accuracy:.2f}'}); {summary['judge_unparseable']} judge answers unparseable"
    )
