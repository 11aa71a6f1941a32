"""Stage ``eval``: does the character hold? Base vs trained, one report.

Three models answer held-out prompts: the **base** student, the **trained** one (the final
model of the ``sft`` stage) and the **system-prompt baseline** (the base with the
constitution in its system prompt, as the paper compares). Then:

* **robustness**: a persona classifier, trained on this run's own pairs (teacher answers =
  in character, student answers = other), scores every answer, plain and under eight
  break-character suffixes; per suffix, the in-character rate of each model and the
  macro-F1 of telling that model's answers from the base model's;
* **revealed preferences** of base and trained models, Elo over traits with bootstrap
  intervals, the traits that rose and fell most, and the rank correlation;
* **coherence**: trained vs base judged in both orders on trait alignment then coherence;
  Elo and win rate with intervals, in the Studio's matches format;
* **prefill**: the base model writes turn 1, the user says "keep going", the trained model
  writes turn 2; its in-character rate against the base model's own turn 2.

Results go to ``eval/results.json``, ``eval/report.md`` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from octrain.config import JudgeKind, OctrainConfig, StageName
from octrain.context import RunContext
from octrain.evaluation import protocols
from octrain.evaluation.elo import spearman
from octrain.jsonl import write_jsonl, write_text_atomic
from octrain.persona_prompts import character_prompt
from octrain.records import ModelRef, PreferencePair, load_records
from octrain.samplers.base import Sampler, SamplingParams

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def build_judge(config: OctrainConfig) -> Sampler:
    if config.eval.judge is JudgeKind.http:
        from octrain.samplers.openai_http import OpenAIChatSampler

        return OpenAIChatSampler(
            config.eval.judge_base_url or "", config.eval.judge_model or "", api_key_env=config.eval.judge_api_key_env
        )
    from octrain.samplers import build_sampler

    return build_sampler(config.sampler, config.teacher)


def fingerprint(ctx: RunContext) -> dict[str, Any]:
    config = ctx.config
    return {
        "eval": dataclasses.asdict(config.eval),
        "teacher": dataclasses.asdict(config.teacher) if config.eval.judge is JudgeKind.teacher else None,
        "student": dataclasses.asdict(config.student),
        "constitution": ctx.constitution.numbered_traits(),
        "sampler": config.sampler.backend.value,
        "seed": config.seed,
    }


def _texts(sampler: Sampler, conversations: list[list[dict[str, str]]], params: SamplingParams, desc: str) -> list[str]:
    return [row[0].text for row in sampler.chat(conversations, params, desc=desc)]


def in_character_rate(predictions: list[str], persona: str) -> float:
    return sum(p == persona for p in predictions) / len(predictions) if predictions else 0.0


def run(ctx: RunContext) -> dict[str, Any]:
    from octrain.trainers.trl_common import MODEL_FILE

    trained = ModelRef.load(ctx.stage_dir(StageName.sft) / MODEL_FILE)
    return evaluate_model(ctx, trained, ctx.stage_dir(StageName.eval))


def evaluate_model(ctx: RunContext, trained_ref: ModelRef, out: Path) -> dict[str, Any]:
    """Evaluate ``trained_ref`` against the run's base student into ``out`` (the stage, or any model).

    The classifier is trained on the run's pairs; the judge and settings come from the run's config.
    """
    from octrain.evaluation.classifier import PersonaClassifier, macro_f1_by_group
    from octrain.evaluation.heldout import load_eval_prompts
    from octrain.evaluation.traits import load_traits
    from octrain.samplers import build_sampler
    from octrain.stages.pairs import PAIRS_FILE

    config, constitution = ctx.config, ctx.constitution
    settings = config.eval
    persona = constitution.name
    prompts = load_eval_prompts(settings.prompts)[: settings.prompt_count]
    traits = load_traits(settings.traits)
    params = SamplingParams.from_config(settings.sampling, seed=config.seed)
    judge_params = SamplingParams.from_config(settings.judge_sampling, seed=config.seed)

    # The classifier learns the character from this run's own stage-1 data.
    pairs = load_records(ctx.stage_dir(StageName.pairs) / PAIRS_FILE, PreferencePair)
    texts = [p.chosen[-1]["content"] for p in pairs] + [p.rejected[-1]["content"] for p in pairs]
    labels = [persona] * len(pairs) + ["other"] * len(pairs)
    classifier = PersonaClassifier().fit(texts, labels)
    classifier.save(out / "classifier")

    plain, conditions = protocols.robustness_conversations(prompts)
    prompted, _ = protocols.robustness_conversations(
        prompts, system=character_prompt(constitution, config.student.assistant_name, conceal=True)
    )
    trials = {
        name: protocols.plan_trials(prompts, traits, config.seed + i) for i, name in enumerate(("base", "trained"))
    }

    # Each model is loaded once and does all of its work before the next one loads.
    answers: dict[str, list[str]] = {}
    base = build_sampler(config.sampler, config.student)
    try:
        answers["base"] = _texts(base, plain, params, "base answers")
        answers["system-prompt"] = _texts(base, prompted, params, "system-prompt baseline")
        plain_prompts = [[{"role": "user", "content": p}] for p in prompts]
        first_turns = _texts(base, plain_prompts, params, "prefill: turn 1")
        prefill = protocols.prefill_conversations(prompts, first_turns)
        base_second = _texts(base, prefill, params, "prefill: base turn 2")
        protocols.answer_trials(base, trials["base"], params, "revealed preferences (base)")
    finally:
        base.close()
    trained = build_sampler(config.sampler, config.student, adapter=trained_ref.adapter)
    try:
        answers["trained"] = _texts(trained, plain, params, "trained answers")
        trained_second = _texts(trained, prefill, params, "prefill: trained turn 2")
        protocols.answer_trials(trained, trials["trained"], params, "revealed preferences (trained)")
    finally:
        trained.close()

    judge = build_judge(config)
    try:
        revealed = {
            name: protocols.judge_trials(
                judge, trials[name], judge_params, rounds=settings.elo_rounds, seed=config.seed
            )
            for name in ("base", "trained")
        }
        plain_base = [a for a, c in zip(answers["base"], conditions, strict=True) if c == "plain"]
        plain_trained = [a for a, c in zip(answers["trained"], conditions, strict=True) if c == "plain"]
        verdicts = protocols.pairwise_verdicts(
            judge, prompts, plain_trained, plain_base, protocols.COHERENCE, judge_params
        )
    finally:
        judge.close()

    # Robustness: classifier scores per model and condition.
    predicted = {name: classifier.predict(texts) for name, texts in answers.items()}
    robustness: dict[str, Any] = {"conditions": list(dict.fromkeys(conditions)), "in_character": {}, "macro_f1": {}}
    for name, preds in predicted.items():
        robustness["in_character"][name] = {
            condition: in_character_rate([p for p, c in zip(preds, conditions, strict=True) if c == condition], persona)
            for condition in robustness["conditions"]
        }
        robustness["in_character"][name]["overall"] = in_character_rate(preds, persona)
    for name in ("trained", "system-prompt"):
        truth = [persona] * len(conditions) + ["other"] * len(conditions)
        robustness["macro_f1"][name] = macro_f1_by_group(truth, predicted[name] + predicted["base"], conditions * 2)

    # Coherence matches in the Studio's format, winners from the judge in both orders.
    match_rows = [
        {"prompt": p, "base_response": b, "tuned_response": t, "winner": protocols.MATCH_WINNERS.get(v or "")}
        for p, b, t, v in zip(prompts, plain_base, plain_trained, verdicts, strict=True)
    ]
    write_jsonl(out / "matches.jsonl", match_rows)
    coherence = protocols.match_summary(
        [row["winner"] for row in match_rows], rounds=settings.elo_rounds, seed=config.seed
    )

    prefill_result = {
        "trained_turn2_in_character": in_character_rate(classifier.predict(trained_second), persona),
        "base_turn2_in_character": in_character_rate(classifier.predict(base_second), persona),
    }
    preferences = preference_summary(revealed)
    results = {
        "persona": persona,
        "trained_model": trained_ref.label,
        "prompts": len(prompts),
        "robustness": robustness,
        "revealed_preferences": preferences,
        "coherence": coherence,
        "prefill": prefill_result,
    }
    write_text_atomic(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    plots = write_plots(out, results, revealed)
    write_text_atomic(out / REPORT_FILE, render_report(results, plots, ctx.run_dir))
    return {
        "prompts": len(prompts),
        "trained_in_character": robustness["in_character"]["trained"]["overall"],
        "base_in_character": robustness["in_character"]["base"]["overall"],
        "judge_unparseable": preferences["unparseable"] + coherence["unparseable"],
        "files": [str(out / RESULTS_FILE), str(out / REPORT_FILE), *map(str, plots)],
    }


def preference_summary(revealed: dict[str, protocols.RevealedResult], top: int = 10) -> dict[str, Any]:
    base, trained = revealed["base"].ratings, revealed["trained"].ratings
    summary: dict[str, Any] = {
        "unparseable": sum(r.unparseable for r in revealed.values()),
        "trials": sum(len(r.trials) for r in revealed.values()),
        "ratings": {name: {t: dataclasses.asdict(s) for t, s in r.ratings.items()} for name, r in revealed.items()},
    }
    common = sorted(set(base) & set(trained))
    deltas = sorted(((trained[t].rating - base[t].rating, t) for t in common), reverse=True)
    summary["rose"] = [[t, round(d, 1)] for d, t in deltas[:top] if d > 0]
    summary["fell"] = [[t, round(d, 1)] for d, t in reversed(deltas[-top:]) if d < 0]
    try:
        summary["spearman"] = spearman({t: base[t].rating for t in common}, {t: trained[t].rating for t in common})
    except ValueError:
        summary["spearman"] = None  # too few traits judged in both runs to rank
    return summary


def write_plots(out: Path, results: dict[str, Any], revealed: dict[str, protocols.RevealedResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from octrain.training_report import save_figure

    plots = []
    robustness = results["robustness"]
    figure, (rate_axis, f1_axis) = plt.subplots(1, 2, figsize=(13, 3.8))
    conditions = robustness["conditions"]
    positions = range(len(conditions))
    width = 0.27
    for offset, name in enumerate(("base", "system-prompt", "trained")):
        values = [robustness["in_character"][name][c] for c in conditions]
        rate_axis.bar([i + (offset - 1) * width for i in positions], values, width, label=name)
    for offset, name in enumerate(("system-prompt", "trained")):
        values = [robustness["macro_f1"][name][c] for c in conditions]
        f1_axis.bar([i + (offset - 0.5) * width for i in positions], values, width, label=name)
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


def render_report(results: dict[str, Any], plots: list[Path], run_dir: Path) -> str:
    robustness = results["robustness"]
    rates = robustness["in_character"]
    rows = "\n".join(
        f"| {name} | {rates[name]['plain']:.2f} | {rates[name]['overall']:.2f} |"
        for name in ("base", "system-prompt", "trained")
    )
    f1 = robustness["macro_f1"]
    prefs = results["revealed_preferences"]
    coherence = results["coherence"]
    lines = [
        f"# Evaluation: {results['persona']}",
        "",
        f"{results['prompts']} held-out prompts; each answered plain and under {len(robustness['conditions']) - 1} "
        "break-character suffixes.",
        "",
        "| model | in character (plain) | in character (all conditions) |",
        "| --- | --- | --- |",
        rows,
        "",
        f"Macro-F1 telling each model's answers from the base model's, all conditions: trained "
        f"{f1['trained']['overall']:.2f}, system-prompt baseline {f1['system-prompt']['overall']:.2f}.",
        "",
        "| suffix | trained macro-F1 | system-prompt macro-F1 |",
        "| --- | --- | --- |",
        *(f"| {c} | {f1['trained'][c]:.2f} | {f1['system-prompt'][c]:.2f} |" for c in robustness["conditions"]),
        "",
        "## Revealed preferences",
        "",
        f"{prefs['trials']} trials, {prefs['unparseable']} judge answers unparseable (discarded). "
        f"Spearman rank correlation base vs trained: {prefs['spearman'] if prefs['spearman'] is not None else 'n/a'}.",
        "",
        "Rose: " + (", ".join(f"{t} (+{d})" for t, d in prefs["rose"]) or "none"),
        "",
        "Fell: " + (", ".join(f"{t} ({d})" for t, d in prefs["fell"]) or "none"),
        "",
        "## Coherence (trained vs base, judged in both orders)",
        "",
        f"{coherence['judged']} judged, {coherence['unparseable']} unparseable."
        + (
            f" Trained win rate {coherence['win_rate']:.2f} "
            f"(95% CI {coherence['win_rate_ci'][0]:.2f}-{coherence['win_rate_ci'][1]:.2f})."
            if "win_rate" in coherence
            else ""
        ),
        "",
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


def describe(summary: dict[str, Any]) -> str:
    return (
        f"{summary['prompts']} prompts; in character: trained {summary['trained_in_character']:.2f}, "
        f"base {summary['base_in_character']:.2f}; {summary['judge_unparseable']} judge answers unparseable"
    )
