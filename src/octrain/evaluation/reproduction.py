"""octrain's figures beside the paper's: a run's own, or the paper's released adapters scored here.

Two ways to fill :func:`octrain.evaluation.paper_reference.comparison_table`:

* **A run** (the ``paper_llama`` recipe, or any run with ``eval.paper_reference=BASE``): the eval
  stage reads what it measured (:func:`measured_from_eval`): MMLU of the base and the trained model
  from ``eval/capability``, the coherence win rate against the DPO-only model and the persona
  classifier's macro-F1 for the DPO-only and the final model from the ``paper`` suite's
  ``results.json``, and the classifier's macro-F1 out of distribution from ``eval/ood``, each with
  its 95% interval. It writes ``eval/paper_comparison.md``.
* **The released adapters** (``octrain eval reproduce BASE --persona NAME``): the paper's own
  adapter for that persona (``hub:maius/...-personas/NAME``) and its base, scored by octrain's
  capability evaluation on the paper's five tasks (:func:`reproduce_released`). What needs a judge
  or the paper's eleven classes is left "not measured here", never guessed.

Either way each figure says "agrees" (the paper's value inside octrain's interval), "differs" (with
the signed difference) or "not measured here". octrain's figures are its own instruments, not the
paper's: the classifier here is the run's (persona against the student's plain answers), not the
paper's 11-way ModernBERT, and the benchmarks run on lm-evaluation-harness, not lighteval; the table
says where a figure stands beside the paper's, not that it is the same measurement.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from octrain.core.files import write_text_atomic
from octrain.core.layout import RESULTS_FILE
from octrain.evaluation.ood import OUT_OF_DISTRIBUTION
from octrain.evaluation.paper_reference import (
    CLASSIFIER_F1_DPO_ONLY,
    CLASSIFIER_F1_FINAL,
    COHERENCE_WIN_RATE,
    MMLU_BASE,
    MMLU_TRAINED,
    OOD_CLASSIFIER_F1,
    PAPER_ARTEFACTS,
    PAPER_BASES,
    base_name,
    comparison_table,
    persona_key,
    render_comparison,
)

COMPARISON_REPORT = "paper_comparison.md"
MMLU = "mmlu"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _interval(value: float | None, ci: list[float] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"value": value, "ci": ci} if ci else {"value": value}


def capability_measurements(capability: dict[str, Any], persona: str) -> dict[str, Any]:
    """MMLU of the base and the trained model from a ``capability.json``, each ± 1.96 standard errors."""
    measured: dict[str, Any] = {}
    for row in capability.get("tasks", []):
        if row.get("task") != MMLU:
            continue
        for name, key in (("base", MMLU_BASE), ("trained", persona_key(MMLU_TRAINED, persona))):
            entry = row.get(name)
            if entry is None:
                continue
            stderr = entry.get("stderr")
            ci = [entry["value"] - 1.96 * stderr, entry["value"] + 1.96 * stderr] if stderr else None
            measured[key] = _interval(entry["value"], ci)
    return measured


def measured_from_eval(eval_dir: Path, persona: str) -> dict[str, Any]:
    """Every paper figure a finished eval stage measured, keyed as :mod:`paper_reference` expects."""
    measured: dict[str, Any] = {}
    results = _read(eval_dir / RESULTS_FILE) or {}
    coherence = (results.get("coherence") or {}).get("dpo-only") or {}
    if "win_rate" in coherence:
        measured[COHERENCE_WIN_RATE] = _interval(coherence["win_rate"], coherence.get("win_rate_ci"))
    macro_f1 = (results.get("robustness") or {}).get("macro_f1") or {}
    for model, key in (("dpo-only", CLASSIFIER_F1_DPO_ONLY), ("trained", CLASSIFIER_F1_FINAL)):
        overall = (macro_f1.get(model) or {}).get("overall")
        if overall is not None:
            measured[key] = _interval(overall["value"], overall.get("ci"))
    capability = _read(eval_dir / "capability" / "capability.json")
    if capability is not None:
        measured.update(capability_measurements(capability, persona))
    ood = _read(eval_dir / "ood" / "ood.json")
    if ood is not None:
        everything = ood["slices"].get(OUT_OF_DISTRIBUTION)
        if everything is not None:
            measured[OOD_CLASSIFIER_F1] = _interval(everything["classifier"]["macro_f1"], None)
    return measured


def write_comparison(base: str, persona: str, measured: dict[str, Any], out: Path, *, source: str) -> dict[str, Any]:
    """The comparison table for ``base`` into ``out/paper_comparison.md``; returns its rows."""
    name = base_name(base)
    rows = comparison_table(name, measured)
    text = "\n".join(
        [
            f"# {persona} on {PAPER_BASES[name]}: octrain beside the paper",
            "",
            f"octrain's figures: {source}. They are octrain's instruments, not the paper's (docs/evaluation.md"
            "#beside-the-paper): a run's own classifier rather than the paper's 11-way ModernBERT, and "
            "lm-evaluation-harness rather than lighteval.",
            "",
            render_comparison(rows).rstrip(),
            "",
        ]
    )
    write_text_atomic(out / COMPARISON_REPORT, text)
    return {"base": name, "persona": persona, "rows": rows, "files": [str(out / COMPARISON_REPORT)]}


def released_models(base: str, persona: str) -> list[Any]:
    """The base student and the paper's released adapter for ``persona``, as the capability scorer takes them."""
    from octrain.evaluation.capability import base_and_trained

    name = base_name(base)
    adapter = PAPER_ARTEFACTS[name].adapter(persona)
    return base_and_trained(PAPER_BASES[name], adapter, f"released {adapter}")


def reproduce_released(base: str, persona: str, settings: Any, out: Path) -> dict[str, Any]:
    """Score the paper's released adapter of ``persona`` against its base; write both tables into ``out``.

    ``settings`` is a :class:`~octrain.evaluation.capability.CapabilitySettings` (the paper's five
    tasks by default). The adapter is fetched from the Hub into its cache (``hub:`` references,
    :mod:`octrain.models.hub`) before any model loads.
    """
    from octrain.evaluation.capability import measure_capability
    from octrain.models.builtin import resolve_model_path

    models = released_models(base, persona)
    trained = models[1]
    local_adapter = resolve_model_path(trained.adapter)  # fetched now: offline with no cache, a clear error
    models[1] = dataclasses.replace(trained, adapter=local_adapter)
    capability = measure_capability(models, settings, out)
    comparison = write_comparison(
        base,
        persona,
        capability_measurements(capability, persona),
        out,
        source=f"the paper's released adapter {trained.adapter} and its base, scored by `octrain eval reproduce`",
    )
    return {"capability": capability, "comparison": comparison}
