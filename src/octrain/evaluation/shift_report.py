"""The ``shift`` suite's caveats, headline and report, rendered from its ``results.json`` dict.

:mod:`octrain.evaluation.character_shift` writes ``report.md`` with :func:`render_shift_report`;
``octrain eval summary`` prints :func:`render_summary`. Only figures whose instrument passed its
check reach the :func:`headline`; :func:`shift_caveats` says why the others did not.
"""

from __future__ import annotations

from typing import Any

from octrain.evaluation import caveats as check_of
from octrain.evaluation.intervals import format_rate
from octrain.evaluation.shift_instruments import MIN_RELEVANCE_ACCURACY

STUDENTS = ("base", "dpo-only", "final")  # the headline's rows, in this order, before the teacher's ceiling


def control_checks(rates: dict[str, Any]) -> list[str | None]:
    """The classifier's controls on the evaluation prompts: the teacher in character, the base student."""
    return [
        check_of.persona_control("teacher in character", rates["teacher"]),
        check_of.plain_control("base student, no system prompt", rates["base"]),
    ]


def shift_caveats(results: dict[str, Any]) -> list[str]:
    """Why a figure cannot carry a conclusion, one sentence each (see :mod:`octrain.evaluation.caveats`)."""
    character = results["in_character"]
    found = check_of.present(
        check_of.few_prompts(results["prompts"]),
        check_of.classifier_accuracy(character["instrument"]["heldout_accuracy"]),
        *control_checks(character["rates"]),
    )
    if not character["instrument"]["passes_check"]:
        found.append("in-character rates are left out of the headline: their classifier failed a check above")
    relevance = results["answers_question"]["instrument"]
    if not relevance["passes_check"]:
        found.append(
            f"answers the question: the instrument told on-topic from wrong-prompt answers with balanced accuracy "
            f"{relevance['balanced_accuracy']:.2f} (needs {MIN_RELEVANCE_ACCURACY}): left out of the headline"
        )
    judge = results["judge_check"]
    unreadable = check_of.unreadable_judge("judge check", judge["unparseable"], judge["accuracy"]["n"])
    if unreadable:
        found.append(unreadable)
    if not judge["passes_check"]:
        found.append(
            f"the judge ({judge['judge']}) picked the in-character answer in {format_rate(judge['accuracy'])} "
            f"({judge['unparseable']} verdicts unparseable): it cannot judge this "
            "character, so no judged figure (coherence win rate, revealed preferences) is reported; use a larger "
            "judge (eval.judge=http) for those"
        )
    return found


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _difference(entry: dict[str, Any], percent: bool = True) -> str:
    low, high = entry["ci"]
    if percent:
        return f"{entry['mean'] * 100:+.0f} points [{low * 100:+.0f}, {high * 100:+.0f}]"
    return f"{entry['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def headline(results: dict[str, Any]) -> list[str]:
    """The figures that passed their instrument's check, one line each (what ``make demo`` prints)."""
    lines = []
    character = results["in_character"]
    if character["instrument"]["passes_check"]:
        rates = character["rates"]
        accuracy = character["instrument"]["heldout_accuracy"]
        lines.append(
            f"in character, no system prompt, {results['prompts']} held-out prompts (classifier accuracy "
            f"{format_rate(accuracy)} on held-out pairs):"
        )
        for name in (*STUDENTS, "teacher"):
            if name in rates:
                label = "teacher, in character (ceiling)" if name == "teacher" else name
                lines.append(f"  {label:<32} {format_rate(rates[name])}")
        for name, entry in character["vs_base"].items():
            lines.append(f"  {name} - base: {_difference(entry)} (paired bootstrap, 95%)")
    toward = results["toward_teacher"]
    if "final" in toward["vs_base"]:
        lines.append(
            "moved toward the teacher (log-prob per token, teacher's answer minus base's): base "
            f"{toward['margin']['base']:+.3f}, final {toward['margin']['final']:+.3f}; shift "
            f"{_difference(toward['vs_base']['final'], percent=False)}"
        )
    relevance = results["answers_question"]
    if relevance["instrument"]["passes_check"]:
        rates = relevance["rates"]
        lines.append(
            "answers its own question (instrument balanced accuracy "
            f"{relevance['instrument']['balanced_accuracy']:.2f}): base {format_rate(rates['base'])}, "
            f"final {format_rate(rates['final'])}"
        )
    return lines


def render_shift_report(results: dict[str, Any]) -> str:
    """``report.md``: the headline, the caveats, each instrument with its check, and before/after answers."""
    lines = [f"# Evaluation: did `{results['persona']}` take? (suite: shift)", ""]
    lines += ["## Headline (figures whose instrument passed its check)", "", *headline(results), ""]
    if results["caveats"]:
        lines += ["## Caveats", "", *[f"- {c}" for c in results["caveats"]], ""]
    check = results["in_character"]["instrument"]
    lines += [
        "## Instruments and their checks",
        "",
        f"- classifier: {check['trained_on']}; {check['train_answers']} training answers; held-out accuracy "
        f"{format_rate(check['heldout_accuracy'])}",
        *(
            f"  - class `{label}`: {scores['n']} held-out answers, precision {_score(scores['precision'])}, "
            f"recall {_score(scores['recall'])}"
            for label, scores in check["per_class"].items()
        ),
        f"  - controls on the evaluation prompts, called in character: teacher in character "
        f"{format_rate(results['in_character']['rates']['teacher'])} (expected high), base student "
        f"{format_rate(results['in_character']['rates']['base'])} (expected low)",
        f"- relevance: {results['answers_question']['instrument']['scored_by']}; base answers on topic "
        f"{format_rate(results['answers_question']['instrument']['base_answers_on_topic'])}; another prompt's answer "
        f"off topic {format_rate(results['answers_question']['instrument']['wrong_prompt_answers_off_topic'])}",
        f"- judge ({results['judge_check']['judge']}): {results['judge_check']['task']}: "
        f"{format_rate(results['judge_check']['accuracy'])}, {results['judge_check']['unparseable']} unparseable",
        "",
        "## Before and after (the first held-out prompts, not chosen by outcome)",
        "",
    ]
    for example in results["examples"]:
        lines += [f"**{example['prompt']}**", "", f"- base: {example['base']}", f"- final: {example['final']}", ""]
    return "\n".join(lines)


def render_summary(results: dict[str, Any]) -> str:
    """The before/after answers and the headline, for a terminal (``octrain eval summary``)."""
    lines = [f"{results['persona']}: base vs trained, no system prompt, held-out prompts", ""]
    for number, example in enumerate(results["examples"], start=1):
        lines += [
            f"[{number}] {example['prompt']}",
            f"  base : {' '.join(example['base'].split())}",
            f"  final: {' '.join(example['final'].split())}",
            "",
        ]
    lines += headline(results)
    if results["caveats"]:
        lines += ["", "caveats:", *[f"  - {c}" for c in results["caveats"]]]
    return "\n".join(lines)
