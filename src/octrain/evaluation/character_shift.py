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

This module runs the suite; the instruments and their checks are
:mod:`octrain.evaluation.shift_instruments`, the caveats, headline and report
:mod:`octrain.evaluation.shift_report`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from octrain.constitution.persona_prompts import teacher_context
from octrain.core.config import JudgeKind, StageName
from octrain.core.errors import StageError
from octrain.core.files import write_jsonl, write_text_atomic
from octrain.core.layout import ANSWERS_FILE, PAIRS_FILE, REPORT_MD_FILE, RESULTS_FILE
from octrain.core.records import Message, ModelRef, PreferencePair, load_records
from octrain.evaluation import caveats as check_of
from octrain.evaluation.answer_likelihood import LikelihoodScorer
from octrain.evaluation.chunked import LazyModel, answers_in_chunks, item_ids
from octrain.evaluation.heldout import load_eval_prompts, select_heldout, training_prompts
from octrain.evaluation.intervals import Rate, mean
from octrain.evaluation.judge_check import build_judge
from octrain.evaluation.judge_parsing import parse_verdict
from octrain.evaluation.shift_instruments import (
    JUDGE_CHECK_PROMPTS,
    MIN_JUDGE_ACCURACY,
    MIN_RELEVANCE_ACCURACY,
    NEUTRAL_PROMPT,
    derangement,
    judge_criterion,
    judge_requests,
    neutral_logprobs,
    paired_difference,
    pairs_classifier,
    relevance_margins,
)
from octrain.evaluation.shift_report import control_checks, render_shift_report, shift_caveats
from octrain.samplers.base import SamplingParams
from octrain.stages.context import RunContext
from octrain.stages.pairs import swap_name

logger = logging.getLogger(__name__)

EXAMPLES = 3  # before/after answers shown: the first held-out prompts, never picked by outcome


def evaluate_shift(ctx: RunContext, final_ref: ModelRef, out: Path, *, dpo_ref: ModelRef | None) -> dict[str, Any]:
    """The ``shift`` suite for ``final_ref`` (and ``dpo_ref``) against the run's base student, into ``out``."""
    # Imported here, not above: tests hand out their own models by replacing octrain.samplers.build_sampler.
    from octrain.samplers import build_sampler

    config, constitution = ctx.config, ctx.constitution
    settings = config.eval
    persona = constitution.name
    seed = config.seed

    # Inputs first, before any model loads.
    heldout = select_heldout(load_eval_prompts(settings.prompts), training_prompts(ctx.run_dir), settings.prompt_count)
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
