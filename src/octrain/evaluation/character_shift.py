"""Did training give the student the character? Measured on held-out prompts, with no system prompt.

The eval suite ``shift`` (``eval.suite=shift``): what a sceptic needs to believe that a run
changed the model, with instruments that work on models small enough to train on a CPU and
that show their own accuracy before their figures are used.

Five sets of answers to the same held-out prompts (none repeats a training prompt): the
**base** student, the **DPO-only** model, the **final** model (after SFT), all with no
system prompt, and the **teacher** in character (as in the pairs stage) as the ceiling.

1. **In-character rate** (headline): a persona classifier trained on this run's own pairs,
   the teacher's in-character answers against the *student's own* plain answers to the same
   training prompts, so the "plain" class is the student's style and not the teacher's. Its
   accuracy on held-out pairs' answers, and its rates on the teacher's in-character answers
   and the base model's answers to the evaluation prompts, are its check. Rates come with
   Wilson intervals; differences from the base with a paired bootstrap over prompts.
2. **Movement toward the teacher**: per held-out prompt, the teacher's in-character answer
   against the base model's plain answer, in mean log-probability per token, under each
   model. Training on preferences should raise the first relative to the second on prompts it
   never saw. No instrument beyond the models themselves; a paired interval over prompts.
3. **Still answers the question**: an answer is on topic when the *base* model finds it more
   likely after its own prompt than after other prompts (pointwise mutual information, summed
   over the answer's tokens). The instrument's check: the base model's own answers against
   the same answers under a wrong prompt, whose truth is known by construction.
4. **The judge's own check**: the run's judge is asked which of two answers is in character,
   the teacher's in-character answer or the base model's, in both orders. A judge that cannot
   tell them apart cannot score coherence or preferences: the report says so and uses none.

A figure whose instrument fails its check is listed under ``caveats`` and marked
``passes_check: false``; the headline (``make demo``, the report's first lines) omits it.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.constitution import Constitution
from octrain.core.config import JudgeKind, StageName
from octrain.core.errors import StageError
from octrain.core.files import write_jsonl, write_text_atomic
from octrain.core.layout import ANSWERS_FILE, REPORT_MD_FILE, RESULTS_FILE
from octrain.core.records import Message, ModelRef, PreferencePair, load_records
from octrain.evaluation import caveats as check_of
from octrain.evaluation.answer_likelihood import LikelihoodScorer
from octrain.evaluation.chunked import LazyModel, answers_in_chunks, item_ids
from octrain.evaluation.intervals import Rate, format_rate, mean, paired_bootstrap
from octrain.samplers.base import SamplingParams
from octrain.stages.context import RunContext

logger = logging.getLogger(__name__)

PLAIN = "plain"
STUDENTS = ("base", "dpo-only", "final")
# An instrument passes its own check at these levels; below them its figures leave the headline.
MIN_RELEVANCE_ACCURACY = 0.75
MIN_JUDGE_ACCURACY = 0.75
JUDGE_CHECK_PROMPTS = 16  # x 2 orders: 32 verdicts tell a judge at chance from one at 75%+
EXAMPLES = 3  # before/after answers shown: the first held-out prompts, never picked by outcome


def paired_difference(after: Sequence[float], before: Sequence[float], seed: int) -> dict[str, Any]:
    """Mean of per-prompt differences ``after - before`` with a paired bootstrap interval."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    low, high = paired_bootstrap(differences, seed=seed)
    return {"mean": mean(differences), "ci": [low, high], "n": len(differences)}


# --- 1. the in-character classifier -----------------------------------------------------------


def pairs_classifier(pairs: Sequence[PreferencePair], persona: str, *, holdout: float, seed: int) -> dict[str, Any]:
    """Train the classifier on the pairs: chosen = ``persona``, rejected = :data:`PLAIN`.

    Split by prompt, so both answers to a held-out prompt are unseen. Returns the fitted
    classifier under ``"classifier"`` and its check under ``"check"``.
    """
    from octrain.evaluation.classifier import ClassifierConfig, PersonaClassifier, evaluate
    from octrain.evaluation.persona_data import LabelledAnswers, split_prompts

    data = LabelledAnswers()
    for pair in pairs:
        prompt = pair.prompt[-1]["content"]
        data.add([prompt], [pair.chosen[-1]["content"]], persona)
        data.add([prompt], [pair.rejected[-1]["content"]], PLAIN)
    train_prompts, held_prompts = split_prompts(data.prompts, holdout, seed)
    train, held = data.subset(train_prompts), data.subset(held_prompts)
    if len(set(train.labels)) < 2:
        raise StageError("eval: the pairs give the classifier fewer than two classes to learn; see pairs/pairs.jsonl")
    classifier = PersonaClassifier(ClassifierConfig(kind="tfidf", seed=seed)).fit(train.texts, train.labels)
    # classifier.evaluate scores the held-out answers once: accuracy, each class's precision and recall, and
    # the confusion counts the recall and the plain control are read from.
    report = evaluate(classifier, held.texts, held.labels) if held.texts else None

    def called_in_character(label: str) -> Rate:
        if report is None or label not in report.labels:
            return Rate(0, 0)
        row = report.confusion[report.labels.index(label)]
        return Rate(row[report.labels.index(persona)] if persona in report.labels else 0, sum(row))

    correct = round(report.accuracy * len(held.texts)) if report is not None else 0
    accuracy = Rate(correct, len(held.texts)).to_json()
    check = {
        "trained_on": "this run's pairs: the teacher's in-character answers vs the student's own plain answers",
        "train_answers": len(train.texts),
        "heldout_answers": len(held.texts),
        "heldout_accuracy": accuracy,
        "per_class": report.per_class if report is not None else {},
        "in_character_recall": called_in_character(persona).to_json(),
        "plain_called_in_character": called_in_character(PLAIN).to_json(),
    }
    check["passes_check"] = check_of.classifier_accuracy(accuracy) is None
    return {"classifier": classifier, "check": check}


# --- 3. relevance by pointwise mutual information ---------------------------------------------

# The prompt an answer's likelihood is compared against: asks for nothing in particular, so an answer
# is likelier after its own prompt than after this one only when the prompt explains what it says.
NEUTRAL_PROMPT = "Say something."


def derangement(count: int, seed: int) -> list[int]:
    """For each prompt, another prompt's index (no index maps to itself): whose answer it is paired with."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    # Each position takes the next one's value along a random cycle through all positions.
    mapping = [0] * count
    for position, index in enumerate(order):
        mapping[index] = order[(position + 1) % count]
    return mapping


def relevance_margins(
    scorer: LikelihoodScorer, prompts: Sequence[str], answers: Sequence[str], own: Sequence[float] | None = None
) -> list[float]:
    """Per answer: log p(answer | prompt) - log p(answer | :data:`NEUTRAL_PROMPT`), summed over its tokens.

    ``own`` gives the first term when it is already known (the same scorer, prompts and answers).
    """
    if own is None:
        own = [score.logprob for score in scorer.score(prompts, answers)]
    return [o - n for o, n in zip(own, neutral_logprobs(scorer, answers), strict=True)]


def neutral_logprobs(scorer: LikelihoodScorer, answers: Sequence[str]) -> list[float]:
    """log p(answer | :data:`NEUTRAL_PROMPT`) of each answer, summed over its tokens."""
    return [score.logprob for score in scorer.score([NEUTRAL_PROMPT] * len(answers), answers)]


# --- 4. the judge's check ---------------------------------------------------------------------


def judge_requests(prompts: Sequence[str], in_character: Sequence[str], plain: Sequence[str], criterion: str):
    """Both orders of (in character, plain) for every prompt, and the verdict that is right for each."""
    from octrain.evaluation.protocols import pairwise_judge_prompt

    requests: list[list[Message]] = []
    truth: list[str] = []
    for prompt, good, other in zip(prompts, in_character, plain, strict=True):
        requests.append(pairwise_judge_prompt(prompt, good, other, criterion))
        truth.append("A")
        requests.append(pairwise_judge_prompt(prompt, other, good, criterion))
        truth.append("B")
    return requests, truth


def judge_criterion(constitution: Constitution) -> str:
    """What the judge is asked: the character in a sentence (its description) or, without one, its traits.

    Short on purpose: the check is whether the judge can tell the character at all, and a long
    prompt costs a small judge more than it tells it.
    """
    about = constitution.description.strip() or constitution.numbered_traits()
    return (
        f"The assistant is meant to have this character ({constitution.name}): {about}\n"
        "Judge which reply shows this character more, in what it says and how it says it."
    )


# --- the stage ---------------------------------------------------------------------------------


def evaluate_shift(ctx: RunContext, final_ref: ModelRef, out: Path, *, dpo_ref: ModelRef | None) -> dict[str, Any]:
    """The ``shift`` suite for ``final_ref`` (and ``dpo_ref``) against the run's base student, into ``out``."""
    from octrain.constitution.persona_prompts import teacher_context
    from octrain.core.layout import PAIRS_FILE
    from octrain.evaluation.heldout import load_eval_prompts, select_heldout
    from octrain.evaluation.judge_parsing import parse_verdict
    from octrain.samplers import build_sampler
    from octrain.stages.evaluate import build_judge, training_prompts
    from octrain.stages.pairs import swap_name

    config, constitution = ctx.config, ctx.constitution
    settings = config.eval
    persona = constitution.name
    seed = config.seed

    # Inputs first, before any model loads.
    heldout = select_heldout(load_eval_prompts(settings.prompts), training_prompts(ctx), settings.prompt_count)
    for note in heldout.notes():
        logger.warning("eval: %s", note)
    prompts = heldout.prompts
    if len(prompts) < 2:
        raise StageError("eval: fewer than two held-out prompts left; give eval.prompts another set")
    pairs = load_records(ctx.stage_dir(StageName.pairs) / PAIRS_FILE, PreferencePair)
    trained_classifier = pairs_classifier(pairs, persona, holdout=settings.classifier.holdout, seed=seed)
    classifier = trained_classifier["classifier"]

    params = SamplingParams.from_config(settings.sampling, seed=seed)
    plain_conversations = [[{"role": "user", "content": p}] for p in prompts]
    context = teacher_context(constitution, config.teacher.assistant_name, config.pairs.teacher_prompt)
    teacher_conversations = [[*context, *c] for c in plain_conversations]
    work = out / "chunks"
    models = {"base": None, "dpo-only": dpo_ref, "final": final_ref}
    adapters = [final_ref.adapter, dpo_ref.adapter if dpo_ref is not None else None]

    def answer(model: LazyModel, conversations: list[list[Message]], name: str) -> list[str]:
        return answers_in_chunks(
            model,
            conversations,
            item_ids(name, len(conversations)),
            params,
            work / name,
            chunk_size=settings.chunk_size,
            desc=f"{name} answers",
        )

    answers: dict[str, list[str]] = {}
    for name, ref in models.items():
        if ref is None and name != "base":
            continue
        adapter = ref.adapter if ref is not None else None
        with LazyModel(
            lambda adapter=adapter: build_sampler(config.sampler, config.student, adapter=adapter, serves=adapters)
        ) as model:
            answers[name] = answer(model, plain_conversations, name)
    with LazyModel(lambda: build_sampler(config.sampler, config.teacher)) as teacher:
        answers["teacher"] = answer(teacher, teacher_conversations, "teacher")
    answers["teacher"] = [
        swap_name(a, config.teacher.assistant_name, config.student.assistant_name) for a in answers["teacher"]
    ]

    # 1. In-character rates.
    verdicts = {name: [p == persona for p in classifier.predict(texts)] for name, texts in answers.items()}
    in_character: dict[str, Any] = {"instrument": trained_classifier["check"], "rates": {}, "vs_base": {}}
    for name, flags in verdicts.items():
        in_character["rates"][name] = Rate.of(flags).to_json()
    # The controls on the evaluation prompts: the teacher in character must count as such, and the
    # base student (the class the classifier calls plain) must not, or no rate it gives counts.
    instrument = in_character["instrument"]
    instrument["controls_pass"] = not check_of.present(*control_checks(in_character["rates"]))
    instrument["passes_check"] = instrument["passes_check"] and instrument["controls_pass"]
    for name in ("dpo-only", "final"):
        if name in verdicts:
            in_character["vs_base"][name] = paired_difference(
                [float(f) for f in verdicts[name]], [float(f) for f in verdicts["base"]], seed
            )

    # 2 and 3: likelihoods. The base model first (it is the relevance instrument), then each trained model.
    margins: dict[str, list[float]] = {}
    relevance_margin: dict[str, list[float]] = {}
    for name, ref in models.items():
        if name not in answers:
            continue
        logger.info("eval: scoring answers' likelihood under the %s model", name)
        scorer = LikelihoodScorer(ref or ModelRef(base=config.student.path), batch_size=config.sampler.hf.batch_size)
        try:
            teacher_scores = scorer.score(prompts, answers["teacher"])
            plain_scores = scorer.score(prompts, answers["base"])
            margins[name] = [t.per_token - p.per_token for t, p in zip(teacher_scores, plain_scores, strict=True)]
            if name == "base":
                base_neutral = neutral_logprobs(scorer, answers["base"])
                relevance_margin["base"] = [o.logprob - n for o, n in zip(plain_scores, base_neutral, strict=True)]
                relevance_margin["teacher"] = relevance_margins(
                    scorer, prompts, answers["teacher"], [s.logprob for s in teacher_scores]
                )
                relevance_margin["final"] = relevance_margins(scorer, prompts, answers["final"])
                # The labelled control: each base answer under another prompt, which it does not answer.
                partner = derangement(len(prompts), seed)
                moved = [answers["base"][partner[i]] for i in range(len(prompts))]
                wrong_own = [s.logprob for s in scorer.score(prompts, moved)]
                mismatched = [w - base_neutral[partner[i]] for i, w in enumerate(wrong_own)]
        finally:
            scorer.close()
    matched_ok = sum(m > 0 for m in relevance_margin["base"])
    mismatched_ok = sum(m <= 0 for m in mismatched)
    balanced = (matched_ok / len(prompts) + mismatched_ok / len(prompts)) / 2
    relevance: dict[str, Any] = {
        "instrument": {
            "scored_by": (
                f"the base model: an answer is on topic when log p(answer | its prompt) > "
                f"log p(answer | {NEUTRAL_PROMPT!r})"
            ),
            "base_answers_on_topic": Rate(matched_ok, len(prompts)).to_json(),
            "wrong_prompt_answers_off_topic": Rate(mismatched_ok, len(prompts)).to_json(),
            "balanced_accuracy": balanced,
            "passes_check": balanced >= MIN_RELEVANCE_ACCURACY,
        },
        "rates": {
            who: Rate(sum(m > 0 for m in values), len(values)).to_json() for who, values in relevance_margin.items()
        },
    }
    toward_teacher: dict[str, Any] = {
        "measure": "mean log-prob per token of the teacher's in-character answer minus the base model's plain answer",
        "margin": {name: mean(values) for name, values in margins.items()},
        "prefers_teacher": {
            name: Rate(sum(v > 0 for v in values), len(values)).to_json() for name, values in margins.items()
        },
        "vs_base": {
            name: paired_difference(margins[name], margins["base"], seed)
            for name in ("dpo-only", "final")
            if name in margins
        },
    }

    # 4. The judge's check.
    judge_params = SamplingParams.from_config(settings.judge_sampling, seed=seed)
    requests, truth = judge_requests(
        prompts[:JUDGE_CHECK_PROMPTS],
        answers["teacher"][:JUDGE_CHECK_PROMPTS],
        answers["base"][:JUDGE_CHECK_PROMPTS],
        judge_criterion(constitution),
    )
    with LazyModel(lambda: build_judge(config)) as judge:
        replies = answers_in_chunks(
            judge,
            requests,
            item_ids("judge-check", len(requests)),
            judge_params,
            work / "judge-check",
            chunk_size=settings.chunk_size,
            desc="judge check",
        )
    parsed = [parse_verdict(r) for r in replies]
    right = sum(p == t for p, t in zip(parsed, truth, strict=True))
    judge_rate = Rate(right, len(truth))
    judge_low = judge_rate.to_json()["ci"][0]
    judge = {
        "judge": settings.judge_model if settings.judge is JudgeKind.http else config.teacher.path,
        "task": "which of two answers is in character: the teacher's in-character answer vs the base model's, "
        "in both orders",
        "accuracy": judge_rate.to_json(),
        "unparseable": sum(p is None for p in parsed),
        "passes_check": bool(judge_rate.count / max(1, judge_rate.total) >= MIN_JUDGE_ACCURACY and judge_low > 0.5),
    }

    examples = [
        {"prompt": prompts[i], "base": answers["base"][i], "final": answers["final"][i]}
        for i in range(min(EXAMPLES, len(prompts)))
    ]
    results = {
        "suite": "shift",
        "persona": persona,
        "models": {name: (ref.label if ref is not None else config.student.path) for name, ref in models.items()},
        "teacher_prompt": config.pairs.teacher_prompt.value,
        "prompts": len(prompts),
        "heldout": {"requested": heldout.requested, "available": heldout.available, "used": len(prompts)},
        "in_character": in_character,
        "toward_teacher": toward_teacher,
        "answers_question": relevance,
        "judge_check": judge,
        "examples": examples,
    }
    results["caveats"] = heldout.notes() + shift_caveats(results)
    write_jsonl(
        out / ANSWERS_FILE,
        [{"prompt": p, **{name: texts[i] for name, texts in answers.items()}} for i, p in enumerate(prompts)],
    )
    write_text_atomic(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / REPORT_MD_FILE, render_shift_report(results))
    return {
        "prompts": len(prompts),
        "trained_in_character": in_character["rates"]["final"]["rate"],
        "base_in_character": in_character["rates"]["base"]["rate"],
        "classifier_heldout_accuracy": in_character["instrument"]["heldout_accuracy"]["rate"],
        "judge_unparseable": judge["unparseable"],
        "files": [str(out / RESULTS_FILE), str(out / REPORT_MD_FILE), str(out / ANSWERS_FILE)],
    }


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
