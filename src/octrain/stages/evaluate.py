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
"""

from __future__ import annotations

from typing import Any

from octrain.core.config import EvalSuite, StageName
from octrain.core.layout import MODEL_FILE
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

        return evaluate_shift(ctx, trained, out, dpo_ref=dpo_only)
    from octrain.evaluation.paper_suite import evaluate_model

    return evaluate_model(ctx, trained, out, dpo_ref=dpo_only)


def describe(summary: dict[str, Any]) -> str:
    """One line for the run's log (both suites return these keys)."""
    accuracy = summary.get("classifier_heldout_accuracy")
    return (
        f"{summary['prompts']} prompts; in character: trained {summary['trained_in_character']:.2f}, "
        f"base {summary['base_in_character']:.2f} (classifier accuracy "
        f"{'n/a' if accuracy is None else f'{accuracy:.2f}'}); {summary['judge_unparseable']} judge answers unparseable"
    )
