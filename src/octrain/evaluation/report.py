"""The evaluation's ``report.md`` and plots, rendered from its ``results.json`` dict.

The report leads with what each figure measures and how far to trust it: the persona
classifier's own held-out accuracy and its controls before any in-character rate, the
dropped disagreements beside each win rate, and the interval and noise floor beside the
revealed-preference correlation. Any caveat (too few samples, a failed control, prompts
left out) is listed at the top, not buried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from octrain.evaluation.intervals import format_rate

ROBUSTNESS_MODELS = ("base", "system-prompt", "dpo-only", "trained")
COMPARES = (
    "How to read these: each model's traits are rated by Bradley-Terry on the Elo scale from the same trials. "
    "The agreement is the Spearman correlation of the two rankings divided by the square root of the product of "
    "their reliabilities, so it estimates how alike the underlying rankings are; 1 means training left what the "
    "model prefers to be unchanged. A trait is listed as rising or falling only when its interval, widened for "
    "the number of traits compared, excludes 0, so under no change a list is empty 95% of the time. Every "
    "interval comes from one paired bootstrap over trials. The paper compares rankings across base models "
    "instead; see docs/revealed-preferences.md."
)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    """``robustness.png`` (in-character rate and macro-F1 per suffix) and ``elo_deltas.png`` when traits moved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from octrain.trainers.report import save_figure

    plots = []
    robustness = results["robustness"]
    models = [m for m in ROBUSTNESS_MODELS if m in robustness["in_character"]]
    scored = [m for m in models if m in robustness["macro_f1"]]
    figure, (rate_axis, f1_axis) = plt.subplots(1, 2, figsize=(13, 3.8))
    conditions = robustness["conditions"]
    positions = range(len(conditions))
    width = 0.8 / len(models)
    for offset, name in enumerate(models):
        values = [robustness["in_character"][name][c]["rate"] for c in conditions]
        centre = offset - (len(models) - 1) / 2
        rate_axis.bar([i + centre * width for i in positions], values, width, label=name)
    f1_width = 0.8 / max(1, len(scored))
    for offset, name in enumerate(scored):
        values = [robustness["macro_f1"][name][c]["value"] for c in conditions]
        centre = offset - (len(scored) - 1) / 2
        f1_axis.bar([i + centre * f1_width for i in positions], values, f1_width, label=name)
    for axis, label in ((rate_axis, "in-character rate"), (f1_axis, "macro-F1 vs base answers")):
        axis.set_xticks(list(positions), conditions, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(label)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=8)
    rate_axis.set_title("Answers the classifier calls in character")
    f1_axis.set_title("Macro-F1 per break-character suffix")
    plots.append(save_figure(figure, out / "robustness.png"))

    moved = results["revealed_preferences"]["rose"][:15] + results["revealed_preferences"]["fell"][:15]
    if moved:
        figure, axis = plt.subplots(figsize=(7, 0.3 * len(moved) + 1.2))
        deltas = [d for _, d, _, _ in moved]
        errors = [[d - low for _, d, low, _ in moved], [high - d for _, d, _, high in moved]]
        axis.barh(
            [t for t, *_ in moved], deltas, xerr=errors, color=["tab:green" if d > 0 else "tab:red" for d in deltas]
        )
        axis.axvline(0, color="black", linewidth=0.8)
        axis.invert_yaxis()
        axis.set_xlabel("Elo change, trained - base (simultaneous 95% interval)")
        axis.set_title("Revealed preferences: traits that rose and fell beyond their intervals")
        plots.append(save_figure(figure, out / "elo_deltas.png"))
    return plots


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _classifier_lines(classifier: dict[str, Any]) -> list[str]:
    held = classifier["heldout"]
    lines = [
        "## The persona classifier",
        "",
        f"Trained on answers to {classifier['prompts']} of this run's training prompts, one class per voice: "
        f"{', '.join(f'`{label}`' for label in classifier['labels'])}. The teacher writes every class but one "
        "(`none` = the teacher with no system prompt, the others with a constitution); `student` is the base "
        "student's own plain answers, so the student's style is a class of its own and cannot pass for the "
        "character.",
        "",
    ]
    if held is None:
        lines.append("No held-out answers: its accuracy is unmeasured, and no rate it gives counts.")
    else:
        lines += [
            f"Its own accuracy on answers to prompts it never saw: {format_rate(classifier['heldout_accuracy'])}, "
            f"macro-F1 {held['macro_f1']:.2f}.",
            "",
            "| class | held-out answers | precision | recall |",
            "| --- | --- | --- | --- |",
            *(
                f"| {label} | {scores['n']} | {_score(scores['precision'])} | {_score(scores['recall'])} |"
                for label, scores in held["per_class"].items()
            ),
            "",
            "| true \\ predicted | " + " | ".join(held["labels"]) + " |",
            "| --- |" + " --- |" * len(held["labels"]),
            *(
                f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                for label, row in zip(held["labels"], held["confusion"], strict=True)
            ),
        ]
    expected = {"teacher (persona)": "high"}
    lines += [
        "",
        "Controls on the held-out evaluation prompts (plain), the share called in character (95% Wilson interval):",
        "",
        "| control | in character | expected |",
        "| --- | --- | --- |",
        *(
            f"| {label} | {format_rate(rate)} | {expected.get(label, 'near 0')} |"
            for label, rate in classifier["controls"].items()
        ),
        "",
    ]
    return lines


def _coherence_lines(coherence: dict[str, Any]) -> list[str]:
    lines = [
        "## Coherence (judged in both orders, trait alignment first)",
        "",
        "The judge sees the numbered traits. A match counts only when both orders agree; a disagreement is dropped "
        "and counted, not scored as a tie.",
        "",
        "| trained vs | judged | disagreements dropped | unparseable | trained win rate (95% CI) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for opponent, summary in coherence.items():
        if summary is None:
            continue
        rate = (
            f"{summary['win_rate']:.2f} ({summary['win_rate_ci'][0]:.2f}-{summary['win_rate_ci'][1]:.2f})"
            if "win_rate" in summary
            else "n/a"
        )
        lines.append(
            f"| {opponent} | {summary['judged']} | {summary['disagreements']} | {summary['unparseable']} | {rate} |"
        )
    return [*lines, ""]


def _interval(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """``0.81 [0.70, 0.90]`` from a dict with ``point``/``low``/``high`` (``n/a`` where undefined)."""
    if not entry or entry.get("point") is None:
        return "n/a"
    if entry.get("low") is None or entry.get("high") is None:
        return f"{entry['point']:.{digits}f} (no interval)"
    return f"{entry['point']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _moved(entries: list[list[Any]], top: int) -> str:
    shown = ", ".join(f"{trait} {delta:+.0f} [{low:+.0f}, {high:+.0f}]" for trait, delta, low, high in entries[:top])
    more = f" and {len(entries) - top} more" if len(entries) > top else ""
    return (shown + more) or "none"


def _agreement(prefs: dict[str, Any]) -> str:
    agreement = prefs["agreement"]
    if not agreement["estimable"]:
        return f"not estimable ({agreement['note']})"
    point, low, high = agreement["shown"]
    return f"{point:.2f} [{low:.2f}, {high:.2f}]"


def preference_headline(prefs: dict[str, Any]) -> str:
    """One line: whether training changed the trait ranking, by the corrected agreement and the traits that moved."""
    verdict = "training changed the trait ranking" if prefs["changed"] else "no sign that training changed it"
    return (
        f"{verdict}: agreement of base and trained rankings, corrected for the trials' noise, {_agreement(prefs)} "
        f"(1 = unchanged); traits that rose beyond their intervals: {len(prefs['rose'])}, fell: {len(prefs['fell'])}"
    )


def preference_figures(prefs: dict[str, Any], top: int = 10) -> list[str]:
    """The revealed-preference figures, one per line, each with its interval (for the report and the CLI)."""
    reliability = prefs["reliability"]
    return [
        preference_headline(prefs) + ".",
        f"Raw Spearman of the two fitted rankings: {_interval(prefs['spearman'])}; pulled toward 0 by the trials' "
        "noise, by the rankings' reliabilities (split-half, Spearman-Brown stepped up to all trials): base "
        + _interval({**reliability["base"], "point": reliability["base"]["stepped_up"]})
        + ", trained "
        + _interval({**reliability["trained"], "point": reliability["trained"]["stepped_up"]})
        + ".",
        f"Rose (trained - base, Elo points, interval widened for the traits compared): {_moved(prefs['rose'], top)}.",
        f"Fell: {_moved(prefs['fell'], top)}.",
    ]


def _preference_lines(prefs: dict[str, Any]) -> list[str]:
    return [
        "## Revealed preferences",
        "",
        f"{prefs['trials']} trials ({prefs['trials_per_trait']} per trait, the same trials for both models), "
        f"{prefs['unparseable']} of {2 * prefs['trials']} judge answers unparseable (each left out of its own "
        "model's ratings).",
        "",
        *(f"- {line}" for line in preference_figures(prefs)),
        "",
        COMPARES,
        "",
        *(f"- note: {note}" for note in prefs["notes"]),
        "",
    ]


def headline(results: dict[str, Any]) -> list[str]:
    """The figures whose instruments passed their checks, one line each, with counts and intervals."""
    passed = results.get("passed", {})
    lines = []
    rates = results["robustness"]["in_character"]
    if passed.get("in_character"):
        lines.append(
            "In character, plain prompts (persona classifier, held-out accuracy "
            f"{format_rate(results['classifier']['heldout_accuracy'])}): "
            + "; ".join(f"{name} {format_rate(rates[name]['plain'])}" for name in ROBUSTNESS_MODELS if name in rates)
        )
        lines.append(
            "In character under all eight break-character suffixes and plain: "
            + "; ".join(f"{name} {format_rate(rates[name]['overall'])}" for name in ROBUSTNESS_MODELS if name in rates)
        )
    for opponent, summary in results["coherence"].items():
        if passed.get(f"coherence vs {opponent}") and "win_rate" in summary:
            low, high = summary["win_rate_ci"]
            lines.append(
                f"Coherence, trained vs {opponent}: trained wins {summary['win_rate']:.2f} [{low:.2f}, {high:.2f}] "
                f"of {summary['judged']} decided matches"
            )
    if passed.get("revealed_preferences"):
        lines.append("Revealed preferences: " + preference_headline(results["revealed_preferences"]))
    if passed.get("prefill"):
        prefill = results["prefill"]
        lines.append(
            "Prefill (turn 2 after a base-model turn 1) in character: trained "
            f"{format_rate(prefill['trained_turn2_in_character'])}, "
            f"base {format_rate(prefill['base_turn2_in_character'])}"
        )
    return [f"- {line}" for line in lines] or ["No figure passed its instrument's checks: see *Read with care*."]


def render_report(results: dict[str, Any], plots: list[Path], run_dir: Path) -> str:
    robustness = results["robustness"]
    rates = robustness["in_character"]
    models = [m for m in ROBUSTNESS_MODELS if m in rates]
    f1 = robustness["macro_f1"]
    scored = [m for m in models if m in f1]
    lines = [
        f"# Evaluation: {results['persona']}",
        "",
        f"{results['prompts']} held-out prompts; each answered plain and under {len(robustness['conditions']) - 1} "
        "break-character suffixes. Every rate is given with its 95% interval in brackets and its count (n): "
        "the interval is the range of true rates these answers are consistent with, so two figures whose "
        "intervals overlap widely are not shown to differ.",
        "",
        "## Figures that passed their checks",
        "",
        *headline(results),
        "",
    ]
    if results["caveats"]:
        lines += ["## Read with care", "", *(f"- {caveat}" for caveat in results["caveats"]), ""]
    lines += [
        *_classifier_lines(results["classifier"]),
        "## Robustness",
        "",
        "| model | in character (plain) | in character (all conditions) |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {format_rate(rates[name]['plain'])} | {format_rate(rates[name]['overall'])} |"
            for name in models
        ),
        "",
        "Macro-F1 telling each model's answers from the base model's to the same prompts (interval: prompts "
        "resampled), all conditions: " + ", ".join(f"{name} {_figure(f1[name]['overall'])}" for name in scored) + ".",
        "",
        "| suffix | " + " | ".join(f"{name} macro-F1" for name in scored) + " |",
        "| --- |" + " --- |" * len(scored),
        *(f"| {c} | " + " | ".join(_figure(f1[name][c]) for name in scored) + " |" for c in robustness["conditions"]),
        "",
        *_preference_lines(results["revealed_preferences"]),
        *_coherence_lines(results["coherence"]),
        "## Prefill",
        "",
        "Turn 2 in character after a base-model turn 1: "
        f"trained {format_rate(results['prefill']['trained_turn2_in_character'])}, "
        f"base {format_rate(results['prefill']['base_turn2_in_character'])}.",
        "",
        "## Plots",
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        *(
            f"![{stage} training](../{stage}/training.png)"
            for stage in ("dpo", "sft")
            if (run_dir / stage / "training.png").is_file()
        ),
        "",
    ]
    return "\n".join(lines)


def _figure(entry: dict[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:.2f} [{low:.2f}, {high:.2f}] (n={entry['n']})"
