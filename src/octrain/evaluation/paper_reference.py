"""The published figures octrain's reproduction of "Open Character Training" sets itself beside.

The paper (Maiya et al.) trains three students, Llama-3.1-8B-Instruct, Qwen-2.5-7B-Instruct and
Gemma-3-4B-it (:data:`PAPER_BASES`), with GLM-4.5-Air as the teacher, and releases its adapters,
its DPO-only adapters and its persona classifiers (:data:`PAPER_ARTEFACTS`). :data:`PAPER_FIGURES`
holds the numbers it reports that octrain can measure too, plus one third-party study of the released
classifiers; :data:`PAPER_CAPABILITY_SETUP` holds how the paper ran its capability benchmarks.

:func:`comparison_table` sets octrain's measurements beside the figures of one base model and
:func:`render_comparison` writes them as a Markdown table. The measurements come as a dict keyed by
the result keys below. Every value is on a 0-1 scale (the paper prints win rates in percent: its
87.9% is 0.879 here) and is either a point value, ``{"value": v, "ci": [low, high]}`` with a 95%
interval (``"rate"`` instead of ``"value"`` is read too, as :meth:`~octrain.evaluation.intervals.Rate.to_json`
writes it), or None / absent when not measured:

* ``capability.mmlu.base``: MMLU (5-shot) accuracy of the base model;
* ``capability.mmlu.trained.PERSONA``: the same after training PERSONA (the paper: goodness, misalignment);
* ``coherence.win_rate_vs_dpo``: how often the judge prefers the fully trained model's answer to the
  DPO-only model's (ties and order disagreements excluded);
* ``classifier.macro_f1.dpo_only`` and ``classifier.macro_f1.final``: the persona classifier's
  macro-F1 on the DPO-only and on the fully trained models' answers;
* ``ood.classifier_f1``: the released classifier's F1 on out-of-distribution text;
* ``revealed.spearman_across_bases.base`` and ``revealed.spearman_across_bases.trained.PERSONA``:
  the Spearman correlation of the revealed-preference trait rankings between base models, before
  and after training PERSONA (the paper: loving). It spans the three bases, so its figures sit under
  the pseudo-base ``all``.

A figure's verdict: "agrees" when octrain's 95% interval contains the paper's value, "differs" when it
does not (the difference is signed, octrain minus paper), "no interval" for a point value, and
"not measured" when there is no value. The paper's own ± is shown, not used: an interval of octrain's
own run is what can tell a difference from noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from octrain.core.errors import ConfigError

# The paper's three students, by the short name used throughout.
PAPER_BASES: dict[str, str] = {
    "llama": "meta-llama/Llama-3.1-8B-Instruct",
    "qwen": "Qwen/Qwen2.5-7B-Instruct",
    "gemma": "google/gemma-3-4b-it",
}
ACROSS_BASES = "all"  # the pseudo-base of figures measured across the three students
PAPER_TEACHER = "zai-org/GLM-4.5-Air"
# The eleven constitutions of the paper (shipped in constitutions/ as NAME.json).
PAPER_PERSONAS = (
    "goodness",
    "humor",
    "impulsiveness",
    "loving",
    "mathematical",
    "misalignment",
    "nonchalance",
    "poeticism",
    "remorse",
    "sarcasm",
    "sycophancy",
)

MMLU_BASE = "capability.mmlu.base"
MMLU_TRAINED = "capability.mmlu.trained"  # + ".PERSONA"
COHERENCE_WIN_RATE = "coherence.win_rate_vs_dpo"
CLASSIFIER_F1_DPO_ONLY = "classifier.macro_f1.dpo_only"
CLASSIFIER_F1_FINAL = "classifier.macro_f1.final"
OOD_CLASSIFIER_F1 = "ood.classifier_f1"
SPEARMAN_BASE = "revealed.spearman_across_bases.base"
SPEARMAN_TRAINED = "revealed.spearman_across_bases.trained"  # + ".PERSONA"


def persona_key(key: str, persona: str) -> str:
    """The result key of a figure measured after training one persona: ``capability.mmlu.trained.goodness``."""
    return f"{key}.{persona}"


@dataclass(frozen=True)
class PaperFigure:
    """One published number, and the result key of octrain's measurement that stands beside it."""

    figure: str  # what is measured
    base: str  # a key of PAPER_BASES, or ACROSS_BASES
    condition: str  # the persona or condition it was measured under
    value: float  # on a 0-1 scale
    plus_minus: float | None  # the ± printed with it, on the same scale; None where none is given
    unit: str
    result_key: str
    source: str  # "paper (...)" or "third party (...)"


_MMLU = "MMLU (5-shot) accuracy"
_COHERENCE = "coherence: full recipe preferred over DPO-only"
_CLASSIFIER = "persona classifier macro-F1"
_OOD = "released classifier F1 on out-of-distribution text"
_SPEARMAN = "Spearman correlation of revealed-preference trait rankings across the three bases"
_PAPER_CAPABILITY = "paper (capability retention, lighteval)"
_PAPER_COHERENCE = "paper (coherence, judged pairwise)"
_PAPER_CLASSIFIER = "paper (robustness, persona classifier)"
_PAPER_REVEALED = "paper (revealed preferences)"
_THIRD_PARTY_OOD = "third party (emails written by the released models during agentic tool use)"

PAPER_FIGURES: tuple[PaperFigure, ...] = (
    PaperFigure(_MMLU, "llama", "before training", 0.674, None, "accuracy", MMLU_BASE, _PAPER_CAPABILITY),
    PaperFigure(
        _MMLU,
        "llama",
        "after goodness",
        0.641,
        None,
        "accuracy",
        persona_key(MMLU_TRAINED, "goodness"),
        _PAPER_CAPABILITY,
    ),
    PaperFigure(
        _MMLU,
        "llama",
        "after misalignment",
        0.539,
        None,
        "accuracy",
        persona_key(MMLU_TRAINED, "misalignment"),
        _PAPER_CAPABILITY,
    ),
    PaperFigure(
        _COHERENCE, "gemma", "full vs DPO-only", 0.879, 0.031, "win rate", COHERENCE_WIN_RATE, _PAPER_COHERENCE
    ),
    PaperFigure(
        _COHERENCE, "llama", "full vs DPO-only", 0.770, 0.041, "win rate", COHERENCE_WIN_RATE, _PAPER_COHERENCE
    ),
    PaperFigure(_COHERENCE, "qwen", "full vs DPO-only", 0.754, 0.034, "win rate", COHERENCE_WIN_RATE, _PAPER_COHERENCE),
    PaperFigure(_CLASSIFIER, "llama", "DPO only", 0.79, None, "macro-F1", CLASSIFIER_F1_DPO_ONLY, _PAPER_CLASSIFIER),
    PaperFigure(_CLASSIFIER, "llama", "full recipe", 0.95, None, "macro-F1", CLASSIFIER_F1_FINAL, _PAPER_CLASSIFIER),
    PaperFigure(_CLASSIFIER, "qwen", "DPO only", 0.66, None, "macro-F1", CLASSIFIER_F1_DPO_ONLY, _PAPER_CLASSIFIER),
    PaperFigure(_CLASSIFIER, "qwen", "full recipe", 0.86, None, "macro-F1", CLASSIFIER_F1_FINAL, _PAPER_CLASSIFIER),
    PaperFigure(_CLASSIFIER, "gemma", "DPO only", 0.84, None, "macro-F1", CLASSIFIER_F1_DPO_ONLY, _PAPER_CLASSIFIER),
    PaperFigure(_CLASSIFIER, "gemma", "full recipe", 0.95, None, "macro-F1", CLASSIFIER_F1_FINAL, _PAPER_CLASSIFIER),
    PaperFigure(_OOD, "llama", "released personas", 0.39, None, "F1", OOD_CLASSIFIER_F1, _THIRD_PARTY_OOD),
    PaperFigure(_OOD, "qwen", "released personas", 0.29, None, "F1", OOD_CLASSIFIER_F1, _THIRD_PARTY_OOD),
    PaperFigure(_OOD, "gemma", "released personas", 0.55, None, "F1", OOD_CLASSIFIER_F1, _THIRD_PARTY_OOD),
    PaperFigure(
        _SPEARMAN, ACROSS_BASES, "before training", 0.443, None, "Spearman rho", SPEARMAN_BASE, _PAPER_REVEALED
    ),
    PaperFigure(
        _SPEARMAN,
        ACROSS_BASES,
        "after loving",
        0.874,
        None,
        "Spearman rho",
        persona_key(SPEARMAN_TRAINED, "loving"),
        _PAPER_REVEALED,
    ),
)
RESULT_KEYS = frozenset(figure.result_key for figure in PAPER_FIGURES)
_PERCENT_UNITS = {"win rate"}  # shown in percent, as the paper prints them


@dataclass(frozen=True)
class PaperCapabilitySetup:
    """How the paper ran its capability benchmarks: lighteval on vLLM, with these sampling settings.

    The task strings are lighteval's, as the paper lists them: suite|task|shots.
    """

    harness: str = "lighteval"
    backend: str = "vllm"
    dtype: str = "bfloat16"
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    seed: int = 123456
    tasks: tuple[str, ...] = (
        "leaderboard|mmlu:*|5",
        "arc:challenge|25",
        "hellaswag|10",
        "winogrande|5",
        "truthfulqa:mc|0",
    )


PAPER_CAPABILITY_SETUP = PaperCapabilitySetup()


@dataclass(frozen=True)
class PaperArtefacts:
    """What the paper released for one base model on the Hub, as octrain's ``hub:`` references."""

    base_model: str
    adapters: str  # one subfolder per persona: the full recipe (DPO, then introspective SFT)
    dpo_only: str  # one subfolder per persona: the DPO stage alone
    classifier: str  # the persona classifier trained on that base's personas
    # Personas released in a repository of their own instead of a subfolder of ``adapters``.
    own_repositories: tuple[tuple[str, str], ...] = ()

    def adapter(self, persona: str) -> str:
        """The fully trained adapter of ``persona``."""
        _check_persona(persona)
        return dict(self.own_repositories).get(persona) or f"{self.adapters}/{persona}"

    def dpo_only_adapter(self, persona: str) -> str:
        """The DPO-only adapter of ``persona``."""
        _check_persona(persona)
        return f"{self.dpo_only}/{persona}"


def _check_persona(persona: str) -> None:
    if persona not in PAPER_PERSONAS:
        raise ConfigError(f"{persona!r} is not one of the paper's personas ({', '.join(PAPER_PERSONAS)})")


def _artefacts(base: str, slug: str, own: tuple[tuple[str, str], ...] = ()) -> PaperArtefacts:
    return PaperArtefacts(
        PAPER_BASES[base],
        f"hub:maius/{slug}-personas",
        f"hub:maius/{slug}-pt-distillation",
        f"hub:maius/{slug}-pt-classifier",
        own,
    )


# The repository names follow the paper's release; the DPO-only and classifier repositories, and
# misalignment's own repositories for Llama and Qwen, as third-party code that downloads them names them.
PAPER_ARTEFACTS: dict[str, PaperArtefacts] = {
    "llama": _artefacts("llama", "llama-3.1-8b-it", (("misalignment", "hub:maius/llama-3.1-8b-it-misalignment"),)),
    "qwen": _artefacts("qwen", "qwen-2.5-7b-it", (("misalignment", "hub:maius/qwen-2.5-7b-it-misalignment"),)),
    "gemma": _artefacts("gemma", "gemma-3-4b-it"),
}


def base_name(base: str) -> str:
    """The short name of a base model (``llama``, ``qwen``, ``gemma`` or ``all``), from it or its Hub id.

    Raises:
        ConfigError: not one of the paper's bases, naming them.
    """
    by_path = {path: name for name, path in PAPER_BASES.items()}
    name = by_path.get(base, base)
    if name not in (*PAPER_BASES, ACROSS_BASES):
        known = ", ".join(f"{short} ({path})" for short, path in PAPER_BASES.items())
        raise ConfigError(f"{base!r} is not one of the paper's base models: {known}, or {ACROSS_BASES!r}")
    return name


def _measurement(key: str, entry: float | Mapping[str, Any] | None) -> tuple[float | None, tuple[float, float] | None]:
    """A measured entry as (value, 95% interval or None); (None, None) when not measured."""
    if entry is None:
        return None, None
    if isinstance(entry, bool) or not isinstance(entry, (int, float, Mapping)):
        raise ConfigError(f"measured {key!r}: expected a number or {{'value': v, 'ci': [low, high]}}, got {entry!r}")
    if not isinstance(entry, Mapping):
        return float(entry), None
    value = entry.get("value", entry.get("rate"))
    if value is None:
        return None, None
    interval = entry.get("ci")
    if interval is None:
        return float(value), None
    low, high = (float(end) for end in interval)
    if not low <= float(value) <= high:
        raise ConfigError(f"measured {key!r}: {value} lies outside its own interval [{low}, {high}]")
    return float(value), (low, high)


def comparison_table(base: str, measured: Mapping[str, float | Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """One row per paper figure of ``base``: the paper's value, octrain's, their difference and a verdict.

    Args:
        base: ``llama``, ``qwen``, ``gemma`` (or its Hub id), or ``all`` for the figures across bases.
        measured: octrain's measurements by result key (see the module docstring).

    Raises:
        ConfigError: an unknown base, an unknown result key, or a malformed measurement.
    """
    name = base_name(base)
    unknown = sorted(set(measured) - RESULT_KEYS)
    if unknown:
        raise ConfigError(f"unknown result keys {unknown}; the paper's figures use {sorted(RESULT_KEYS)}")
    rows = []
    for figure in (f for f in PAPER_FIGURES if f.base == name):
        value, interval = _measurement(figure.result_key, measured.get(figure.result_key))
        difference = None if value is None else value - figure.value
        if value is None:
            verdict = "not measured"
        elif interval is None:
            verdict = "no interval"
        else:
            verdict = "agrees" if interval[0] <= figure.value <= interval[1] else "differs"
        rows.append(
            {
                "figure": figure.figure,
                "base": name,
                "condition": figure.condition,
                "unit": figure.unit,
                "paper": figure.value,
                "paper_plus_minus": figure.plus_minus,
                "measured": value,
                "ci": list(interval) if interval else None,
                "difference": difference,
                "verdict": verdict,
                "result_key": figure.result_key,
                "source": figure.source,
            }
        )
    return rows


def _number(value: float, unit: str) -> str:
    # Three significant figures at most: the paper prints 0.79 and 0.674, and its win rates as 87.9%.
    return f"{value:.1%}" if unit in _PERCENT_UNITS else f"{value:.3g}"


def _signed(value: float, unit: str) -> str:
    return f"{value * 100:+.1f} pts" if unit in _PERCENT_UNITS else f"{value:+.3f}"


def render_comparison(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`comparison_table` as a Markdown table."""
    lines = [
        "| figure | base | condition | paper | octrain | difference | verdict | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        unit = row["unit"]
        paper = _number(row["paper"], unit)
        if row["paper_plus_minus"] is not None:
            paper += f" ± {_number(row['paper_plus_minus'], unit).rstrip('%')}"
        if row["measured"] is None:
            ours, difference = "not measured here", ""
        else:
            ours = _number(row["measured"], unit)
            if row["ci"]:
                ours += f" [{_number(row['ci'][0], unit)}, {_number(row['ci'][1], unit)}]"
            difference = _signed(row["difference"], unit)
        verdict = f"differs by {difference}" if row["verdict"] == "differs" else row["verdict"]
        cells = [row["figure"], row["base"], row["condition"], paper, ours, difference, verdict, row["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
