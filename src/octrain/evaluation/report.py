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

ROBUSTNESS_MODELS = ("base", "system-prompt", "dpo-only", "trained")
COMPARES = (
    "Spearman correlation between the student's trait ranking before training (base) and after (trained), "
    "from the same trials; 1 means training left what the model prefers to be unchanged. The paper compares "
    "rankings across base models instead. Read it against the split-half reliability: the correlation of "
    "each model's ranking from its even-numbered trials with the ranking from its odd-numbered ones."
)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    """``robustness.png`` (in-character rate and macro-F1 per suffix) and ``elo_deltas.png`` when traits moved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from octrain.training_report import save_figure

    plots = []
    robustness = results["robustness"]
    models = [m for m in ROBUSTNESS_MODELS if m in robustness["in_character"]]
    scored = [m for m in models if m in robustness["macro_f1"]]
    figure, (rate_axis, f1_axis) = plt.subplots(1, 2, figsize=(13, 3.8))
    conditions = robustness["conditions"]
    positions = range(len(conditions))
    width = 0.8 / len(models)
    for offset, name in enumerate(models):
        values = [robustness["in_character"][name][c] for c in conditions]
        centre = offset - (len(models) - 1) / 2
        rate_axis.bar([i + centre * width for i in positions], values, width, label=name)
    f1_width = 0.8 / max(1, len(scored))
    for offset, name in enumerate(scored):
        values = [robustness["macro_f1"][name][c] for c in conditions]
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

    moved = results["revealed_preferences"]["rose"] + results["revealed_preferences"]["fell"]
    if moved:
        figure, axis = plt.subplots(figsize=(7, 0.3 * len(moved) + 1.2))
        axis.barh(
            [t for t, _ in moved], [d for _, d in moved], color=["tab:green" if d > 0 else "tab:red" for _, d in moved]
        )
        axis.invert_yaxis()
        axis.set_xlabel("Elo change, trained - base")
        axis.set_title("Revealed preferences: traits that rose and fell")
        plots.append(save_figure(figure, out / "elo_deltas.png"))
    return plots


def _classifier_lines(classifier: dict[str, Any]) -> list[str]:
    held = classifier["heldout"]
    lines = [
        "## The persona classifier",
        "",
        f"Trained on answers by one author (the teacher) to {classifier['prompts']} of this run's training prompts, "
        f"once per voice: {', '.join(classifier['labels'])} (`none` = no system prompt). So style shared by every "
        "class cannot separate them; only the character can.",
        "",
    ]
    if held is None:
        lines.append("No held-out answers: its accuracy is unmeasured.")
    else:
        lines.append(
            f"Its own accuracy on {classifier['heldout_answers']} held-out answers (prompts it never saw): "
            f"accuracy {held['accuracy']:.2f}, macro-F1 {held['macro_f1']:.2f}."
        )
        header = "| true \\ predicted | " + " | ".join(held["labels"]) + " |"
        lines += ["", header, "| --- |" + " --- |" * len(held["labels"])]
        lines += [
            f"| {label} | " + " | ".join(str(n) for n in row) + " |"
            for label, row in zip(held["labels"], held["confusion"], strict=True)
        ]
    controls = classifier["controls"]
    lines += [
        "",
        "Controls on the held-out evaluation prompts (plain), the share called in character:",
        "",
        "| control | in character | expected |",
        "| --- | --- | --- |",
        f"| teacher with the constitution | {_fmt(controls['teacher (persona)'])} | high |",
        f"| teacher with no persona (the trained style, no character) | {_fmt(controls['teacher (no persona)'])} | "
        "near 0 |",
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


def _preference_lines(prefs: dict[str, Any]) -> list[str]:
    interval = prefs["spearman_ci"]
    split = prefs["split_half"]
    return [
        "## Revealed preferences",
        "",
        f"{prefs['trials']} trials ({prefs['trials_per_trait']} per trait, the same trials for both models), "
        f"{prefs['unparseable']} judge answers unparseable (discarded).",
        "",
        f"Spearman base vs trained: {_fmt(prefs['spearman'])}"
        + (f" (95% CI {interval[0]:.2f} to {interval[1]:.2f})" if interval else " (no interval: too few matches)")
        + f"; split-half reliability: base {_fmt(split.get('base'))}, trained {_fmt(split.get('trained'))}.",
        "",
        COMPARES,
        "",
        "Rose: " + (", ".join(f"{t} (+{d})" for t, d in prefs["rose"]) or "none"),
        "",
        "Fell: " + (", ".join(f"{t} ({d})" for t, d in prefs["fell"]) or "none"),
        "",
    ]


def render_report(results: dict[str, Any], plots: list[Path], run_dir: Path) -> str:
    robustness = results["robustness"]
    rates = robustness["in_character"]
    models = [m for m in ROBUSTNESS_MODELS if m in rates]
    f1 = robustness["macro_f1"]
    scored = [m for m in models if m in f1]
    lines = [f"# Evaluation: {results['persona']}", ""]
    if results["caveats"]:
        lines += ["**Read with care:**", "", *(f"- {caveat}" for caveat in results["caveats"]), ""]
    lines += [
        f"{results['prompts']} held-out prompts; each answered plain and under {len(robustness['conditions']) - 1} "
        "break-character suffixes.",
        "",
        *_classifier_lines(results["classifier"]),
        "## Robustness",
        "",
        "| model | in character (plain) | in character (all conditions) |",
        "| --- | --- | --- |",
        *(f"| {name} | {rates[name]['plain']:.2f} | {rates[name]['overall']:.2f} |" for name in models),
        "",
        "Macro-F1 telling each model's answers from the base model's, all conditions: "
        + ", ".join(f"{name} {f1[name]['overall']:.2f}" for name in scored)
        + ".",
        "",
        "| suffix | " + " | ".join(f"{name} macro-F1" for name in scored) + " |",
        "| --- |" + " --- |" * len(scored),
        *(f"| {c} | " + " | ".join(f"{f1[name][c]:.2f}" for name in scored) + " |" for c in robustness["conditions"]),
        "",
        *_preference_lines(results["revealed_preferences"]),
        *_coherence_lines(results["coherence"]),
        "## Prefill",
        "",
        "Turn 2 in character after a base-model turn 1: "
        f"trained {results['prefill']['trained_turn2_in_character']:.2f}, "
        f"base {results['prefill']['base_turn2_in_character']:.2f}.",
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
