"""The ``paper`` suite's figures from its verdicts, and which of them the report may lead with.

:func:`octrain.evaluation.paper_suite.evaluate_model` collects the answers and judgements; these
turn them into ``results.json``'s sections: the classifier's own figures and controls
(:func:`classifier_summary`), in-character rates and macro-F1 per break-character suffix
(:func:`robustness_figures`), the caveats a reader must see (:func:`paper_caveats`, built from
:mod:`octrain.evaluation.caveats`) and the figures whose instrument passed its checks
(:func:`passed_checks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from octrain.evaluation import caveats as check
from octrain.evaluation.intervals import Rate, bootstrap_interval

# The controls on the held-out evaluation prompts: whose answers, and whether they are in character.
PERSONA_CONTROL = "teacher (persona)"
PLAIN_CONTROLS = ("teacher (no persona)", "base student (no system prompt)")
BASE_CONTROL = PLAIN_CONTROLS[1]


def classifier_summary(trained: Any, prompts: int, control_flags: dict[str, list[bool]]) -> dict[str, Any]:
    """The classifier's own figures: classes, held-out accuracy with its count, per class, and the controls."""
    held = trained.heldout
    correct = round(held.accuracy * trained.heldout_size) if held is not None else 0
    return {
        "labels": trained.labels,
        "prompts": prompts,
        "train_answers": trained.train_size,
        "heldout_answers": trained.heldout_size,
        "heldout": held.to_dict() if held is not None else None,
        "heldout_accuracy": Rate(correct, trained.heldout_size).to_json() if held is not None else None,
        "controls": {label: Rate.of(flags).to_json() for label, flags in control_flags.items()},
    }


def robustness_figures(flags: dict[str, list[bool]], conditions: list[str], *, seed: int) -> dict[str, Any]:
    """In-character rates per model and condition (with counts and Wilson intervals), and macro-F1 per suffix.

    The macro-F1 tells a model's answers (truth: in character) from the base model's to the same
    prompts (truth: not); its interval resamples prompts, keeping each prompt's two answers together.
    """
    names = list(dict.fromkeys(conditions))
    figures: dict[str, Any] = {"conditions": names, "in_character": {}, "macro_f1": {}}
    for name, model_flags in flags.items():
        rates = {c: Rate.of([f for f, k in zip(model_flags, conditions, strict=True) if k == c]) for c in names}
        rates["overall"] = Rate.of(model_flags)
        figures["in_character"][name] = {c: rate.to_json() for c, rate in rates.items()}
    for name in (n for n in ("system-prompt", "dpo-only", "trained") if n in flags):
        per_condition = {}
        for condition in [*names, "overall"]:
            chosen = [i for i, k in enumerate(conditions) if condition == "overall" or k == condition]
            model = [flags[name][i] for i in chosen]
            base = [flags["base"][i] for i in chosen]
            per_condition[condition] = separation_f1(model, base, seed=seed)
        figures["macro_f1"][name] = per_condition
    return figures


def separation_f1(model: list[bool], base: list[bool], *, seed: int) -> dict[str, Any]:
    """Macro-F1 of "in character" on ``model``'s answers against "not" on ``base``'s, with a bootstrap interval."""

    def f1(indices: Sequence[int]) -> float:
        hits = sum(model[i] for i in indices)  # the model's answers called in character
        false = sum(base[i] for i in indices)  # the base model's answers called in character
        missed, right = len(indices) - hits, len(indices) - false
        positive = 2 * hits / (2 * hits + false + missed) if hits + false + missed else 0.0
        negative = 2 * right / (2 * right + missed + false) if right + missed + false else 0.0
        return (positive + negative) / 2

    low, high = bootstrap_interval(len(model), f1, seed=seed)
    return {"value": f1(range(len(model))), "ci": [low, high], "n": len(model)}


def matches_asked(summary: dict[str, Any]) -> int:
    """Every match put to the judge: decided, dropped as a disagreement, or unreadable."""
    return summary["judged"] + summary["disagreements"] + summary["unparseable"]


def paper_caveats(results: dict[str, Any]) -> list[str]:
    """Why a figure of this evaluation cannot carry a conclusion, one sentence each (:mod:`caveats`)."""
    classifier = results["classifier"]
    controls = classifier["controls"]
    prefs = results["revealed_preferences"]
    judged = 2 * prefs["trials"]
    found = check.present(
        check.few_prompts(results["prompts"]),
        check.classifier_accuracy(classifier["heldout_accuracy"]),
        check.persona_control(PERSONA_CONTROL, controls[PERSONA_CONTROL]),
        *(check.plain_control(label, controls[label]) for label in PLAIN_CONTROLS),
        check.base_in_character(results["robustness"]["in_character"]["base"]["plain"]),
        *(check.few_matches(opponent, summary["judged"]) for opponent, summary in results["coherence"].items()),
        *(
            check.unreadable_judge(f"coherence vs {opponent}", summary["unparseable"], matches_asked(summary))
            for opponent, summary in results["coherence"].items()
        ),
        check.few_trials_per_trait(prefs["trials_per_trait"]),
        check.unreadable_judge("revealed preferences", prefs["unparseable"], judged),
        prefs["agreement"]["note"],
    )
    return found


def passed_checks(results: dict[str, Any]) -> dict[str, bool]:
    """Which figures the report may lead with: those whose instrument passed its own checks."""
    classifier = results["classifier"]
    controls = classifier["controls"]
    classifier_ok = (
        check.classifier_accuracy(classifier["heldout_accuracy"]) is None
        and check.persona_control(PERSONA_CONTROL, controls[PERSONA_CONTROL]) is None
        and all(check.plain_control(label, controls[label]) is None for label in PLAIN_CONTROLS)
    )
    prefs = results["revealed_preferences"]
    passed = {
        "in_character": classifier_ok,
        "prefill": classifier_ok,
        "revealed_preferences": (
            check.few_trials_per_trait(prefs["trials_per_trait"]) is None
            and not check.judge_is_unreadable(prefs["unparseable"], 2 * prefs["trials"])
            and prefs["agreement"]["estimable"]
        ),
    }
    for opponent, summary in results["coherence"].items():
        passed[f"coherence vs {opponent}"] = check.few_matches(opponent, summary["judged"]) is None and not (
            check.judge_is_unreadable(summary["unparseable"], matches_asked(summary))
        )
    return passed
