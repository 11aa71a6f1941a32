"""The ``paper`` eval suite (``eval.suite=paper``): does the character hold? Base vs trained, one report.

Four models answer held-out prompts (prompts that repeat this run's training prompts are
left out first): the **base** student, the **trained** one (the final model of the ``sft``
stage), the **DPO-only** model (stage 1 alone, the paper's comparison) and the
**system-prompt baseline** (the base with the constitution in its system prompt). Then:

* **robustness**: a persona classifier scores every answer, plain and under eight
  break-character suffixes. It is trained on answers by the teacher, written with the
  constitution, with no persona and (optionally) as other personas, and on the base student's
  own plain answers (:mod:`octrain.evaluation.persona_data`), so it measures the character and
  not who wrote the text; its own held-out accuracy per class and three controls are reported
  with it, and every rate carries its count and a Wilson interval;
* **revealed preferences** of base and trained models on the *same* trials
  (:mod:`octrain.evaluation.trait_preferences`): Bradley-Terry ratings on the Elo scale, the
  rank correlation raw and corrected for the trials' noise (each model's split-half
  reliability, stepped up), per-trait changes with paired intervals, and the traits that rose
  or fell beyond their simultaneous intervals; one paired bootstrap gives every interval;
* **coherence**: trained vs base and trained vs DPO-only, judged with the numbered traits in
  view, in both orders; disagreements are dropped and counted; in the Studio's matches format;
* **prefill**: the base model writes turn 1, the user says "keep going", the trained model
  writes turn 2; its in-character rate against the base model's own turn 2.

Results go to ``eval/results.json``, ``eval/report.md`` and PNG plots. Every answer and
judgement is committed in chunks under ``eval/chunks/`` as it is made
(:mod:`octrain.evaluation.chunked`), so a rerun after a crash or a judge failure resumes; an
uninterrupted run gives the same results as before the stage was chunked.

The stage (:mod:`octrain.stages.evaluate`) runs it on the run's final model; ``octrain eval model``
runs it on any model of a finished run. The figures are computed in
:mod:`octrain.evaluation.paper_figures`, the report in :mod:`octrain.evaluation.report`.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from octrain.constitution import find_constitution, load_constitution
from octrain.constitution.persona_prompts import character_prompt
from octrain.constitution.search_dirs import lookup_dirs
from octrain.core.config import JudgeKind
from octrain.core.errors import StageError
from octrain.core.files import write_jsonl, write_text_atomic
from octrain.core.layout import MATCH_FILES, REPORT_MD_FILE, RESULTS_FILE
from octrain.core.records import Message, ModelRef
from octrain.evaluation import protocols
from octrain.evaluation.chunked import (
    LazyModel,
    answers_in_chunks,
    item_ids,
    judgements_in_chunks,
    texts_in_chunks,
    work_dir,
)
from octrain.evaluation.classifier import ClassifierConfig
from octrain.evaluation.fingerprint import fingerprint
from octrain.evaluation.heldout import load_eval_prompts, select_heldout, training_prompts
from octrain.evaluation.intervals import Rate
from octrain.evaluation.judge_check import build_judge
from octrain.evaluation.judge_parsing import parse_verdict
from octrain.evaluation.paper_figures import (
    BASE_CONTROL,
    classifier_summary,
    paper_caveats,
    passed_checks,
    robustness_figures,
)
from octrain.evaluation.persona_data import (
    NO_PERSONA,
    STUDENT,
    LabelledAnswers,
    PersonaVoices,
    train_on_voices,
    voice_answers,
)
from octrain.evaluation.report import render_report, write_plots
from octrain.evaluation.trait_preferences import preference_summary
from octrain.evaluation.traits import load_traits
from octrain.samplers.base import SamplingParams
from octrain.stages.context import RunContext

logger = logging.getLogger(__name__)


def evaluate_model(
    ctx: RunContext, trained_ref: ModelRef, out: Path, *, dpo_ref: ModelRef | None = None
) -> dict[str, Any]:
    """Evaluate ``trained_ref`` against the run's base student (and ``dpo_ref``) into ``out``.

    The held-out prompts are checked against the run's training prompts before any model
    loads; the classifier's data, the judge and the settings come from the run's config.
    """
    # Imported here, not above: tests hand out their own models by replacing octrain.samplers.build_sampler.
    from octrain.samplers import build_sampler

    config, constitution = ctx.config, ctx.constitution
    settings = config.eval
    persona = constitution.name
    student_name, teacher_name = config.student.assistant_name, config.teacher.assistant_name

    # Everything that can fail on the inputs fails here, before a model loads.
    trained_on = training_prompts(ctx.run_dir)
    heldout = select_heldout(load_eval_prompts(settings.prompts), trained_on, settings.prompt_count)
    for note in heldout.notes():
        logger.warning("eval: %s", note)
    prompts = heldout.prompts
    if not prompts:
        raise StageError("eval: every evaluation prompt repeats a training prompt; give eval.prompts another set")
    traits = load_traits(settings.traits)
    contrasts = [
        load_constitution(find_constitution(name, lookup_dirs())) for name in settings.classifier.contrast_personas
    ]
    voices = PersonaVoices.build(constitution, contrasts, student_name)
    classifier_prompts = trained_on[:]
    random.Random(config.seed).shuffle(classifier_prompts)
    classifier_prompts = classifier_prompts[: settings.classifier.prompts]
    params = SamplingParams.from_config(settings.sampling, seed=config.seed)
    judge_params = SamplingParams.from_config(settings.judge_sampling, seed=config.seed)
    plan = protocols.plan_trials(prompts, traits, per_trait=settings.trials_per_trait, seed=config.seed)
    trials = {name: protocols.copy_trials(plan) for name in ("base", "trained")}
    plain, conditions = protocols.robustness_conversations(prompts)
    prompted, _ = protocols.robustness_conversations(
        prompts, system=character_prompt(constitution, student_name, conceal=True)
    )
    plain_prompts = [[{"role": "user", "content": p}] for p in prompts]
    classifier_conversations: list[list[Message]] = [[{"role": "user", "content": p}] for p in classifier_prompts]
    compare_dpo = dpo_ref is not None and dpo_ref != trained_ref

    # Every answer and judgement is committed in chunks under out/chunks (see octrain.evaluation.chunked):
    # a rerun after a crash or a judge failure asks only for what is missing. Each model loads only
    # if some of its work is missing, once, and does all of it before the next one loads.
    work = work_dir(
        out,
        {
            "settings": fingerprint(ctx),
            "trained": trained_ref.to_json(),
            "dpo_only": dpo_ref.to_json() if compare_dpo and dpo_ref is not None else None,
            "prompts": prompts,
            "classifier_prompts": classifier_prompts,
            "traits": traits,
        },
    )
    size = settings.chunk_size

    def answer(
        model: LazyModel, conversations: list[list[Message]], work_name: str, desc: str, ids: list[str] | None = None
    ) -> list[str]:
        ids = ids or item_ids(work_name, len(conversations))
        return answers_in_chunks(model, conversations, ids, params, work / work_name, chunk_size=size, desc=desc)

    def robustness(model: LazyModel, name: str, conversations: list[list[Message]], desc: str) -> list[str]:
        # Ids say whose answer to which prompt under which suffix: base-plain-0003, base-drop-roleplay-0003, ...
        per_prompt = len(conditions) // len(prompts)
        ids = [f"{name}-{c}-{i // per_prompt:04d}" for i, c in enumerate(conditions)]
        return answer(model, conversations, f"{name}-robustness", desc, ids)

    def answer_trials(model: LazyModel, name: str) -> None:
        conversations = protocols.trial_conversations(trials[name])
        texts = answer(model, conversations, f"{name}-trial", f"revealed preferences ({name})")
        for trial, text in zip(trials[name], texts, strict=True):
            trial.answer = text

    answers: dict[str, list[str]] = {}
    # One student engine for the base model and every adapter (vLLM's LoRA requests), started once.
    # A Tinker-trained model is a tinker:// path (ModelRef.remote) rather than a local adapter.
    trained_weights = trained_ref.adapter or trained_ref.remote
    dpo_weights = (dpo_ref.adapter or dpo_ref.remote) if dpo_ref is not None else None
    adapters = [trained_weights, dpo_weights if compare_dpo else None]

    def student(adapter: str | None) -> LazyModel:
        return LazyModel(lambda: build_sampler(config.sampler, config.student, adapter=adapter, serves=adapters))

    with student(None) as base:
        answers["base"] = robustness(base, "base", plain, "base answers")
        answers["system-prompt"] = robustness(base, "system-prompt", prompted, "system-prompt baseline")
        first_turns = answer(base, plain_prompts, "base-turn1", "prefill: turn 1")
        prefill = protocols.prefill_conversations(prompts, first_turns)
        base_second = answer(base, prefill, "base-turn2", "prefill: base turn 2")
        answer_trials(base, "base")
        student_voice = answer(base, classifier_conversations, "classifier-student", "classifier data (student)")
    with student(trained_weights) as trained:
        answers["trained"] = robustness(trained, "trained", plain, "trained answers")
        trained_second = answer(trained, prefill, "trained-turn2", "prefill: trained turn 2")
        answer_trials(trained, "trained")
    if compare_dpo:
        assert dpo_ref is not None
        with student(dpo_weights) as dpo_model:
            answers["dpo-only"] = robustness(dpo_model, "dpo-only", plain, "DPO-only answers")

    # The teacher writes the classifier's data and the controls, then judges (or hands over to the judge).
    names = (teacher_name, student_name)

    def voice(author: LazyModel, texts_for: list[str], label: str, prefix: str, desc: str) -> list[str]:
        def produce(start: int, stop: int) -> list[str]:
            # Seeded by label and prompt (see voice_answers), so any slice gives the same answers.
            return voice_answers(
                author.get(),
                texts_for[start:stop],
                voices.prompts[label],
                params,
                label=label,
                seed=config.seed,
                names=names,
                desc=desc,
            )

        return texts_in_chunks(work / prefix, item_ids(prefix, len(texts_for)), produce, chunk_size=size, desc=desc)

    judge_retries = settings.judge_parse_retries
    with (
        LazyModel(lambda: build_sampler(config.sampler, config.teacher)) as teacher,
        LazyModel(lambda: build_judge(config)) as http_judge,
    ):
        data = LabelledAnswers()
        for label in voices.prompts:
            # The same data as persona_data.collect, a chunk at a time.
            texts = voice(teacher, classifier_prompts, label, f"classifier-{label}", f"classifier data ({label})")
            data.add(classifier_prompts, texts, label)
        data.add(classifier_prompts, student_voice, STUDENT)
        controls = {
            label: voice(teacher, prompts, which, f"control-{which}", f"control: {label}")
            for label, which in (("teacher (persona)", persona), ("teacher (no persona)", NO_PERSONA))
        }
        judge = teacher if settings.judge is JudgeKind.teacher else http_judge
        revealed = {}
        for name in ("base", "trained"):
            chosen = judgements_in_chunks(
                judge,
                protocols.trait_requests(trials[name]),
                [protocols.trait_parser(t) for t in trials[name]],
                f"{name}-trait",
                judge_params,
                work / f"{name}-trait",
                chunk_size=size,
                retries=judge_retries,
                desc=f"judging traits ({name})",
            )
            for trial, trait in zip(trials[name], chosen, strict=True):
                trial.chosen = trait
            revealed[name] = protocols.RevealedResult(trials[name])
        criterion = protocols.coherence_criterion(constitution.numbered_traits())
        plain_answers = {
            name: [a for a, c in zip(texts, conditions, strict=True) if c == "plain"] for name, texts in answers.items()
        }
        verdicts = {}
        for opponent in (o for o in MATCH_FILES if o in plain_answers):
            requests = protocols.pairwise_requests(
                prompts, plain_answers["trained"], plain_answers[opponent], criterion
            )
            found = judgements_in_chunks(
                judge,
                requests,
                [parse_verdict] * len(requests),
                f"trained-vs-{opponent}",
                judge_params,
                work / f"trained-vs-{opponent}",
                chunk_size=size,
                retries=judge_retries,
                desc=f"judging pairs (trained vs {opponent})",
            )
            verdicts[opponent] = protocols.combine_orders(found)

    # The classifier: trained on part of the voices (the teacher's and the base student's), scored on
    # the rest, then on every answer.
    kind = settings.classifier
    trained_classifier = train_on_voices(
        data,
        holdout=kind.holdout,
        seed=config.seed,
        config=ClassifierConfig(kind=kind.kind.value, model_name=kind.model_name, seed=config.seed),
    )
    classifier = trained_classifier.classifier
    classifier.save(out / "classifier")

    def in_character(texts: list[str]) -> list[bool]:
        return [label == persona for label in classifier.predict(texts)]

    base_plain = [a for a, c in zip(answers["base"], conditions, strict=True) if c == "plain"]
    controls[BASE_CONTROL] = base_plain
    classifier_result = classifier_summary(
        trained_classifier, len(classifier_prompts), {label: in_character(texts) for label, texts in controls.items()}
    )

    flags = {name: in_character(texts) for name, texts in answers.items()}
    robustness = robustness_figures(flags, conditions, seed=config.seed)

    coherence: dict[str, Any] = {}
    for opponent, found in verdicts.items():
        rows = [
            {
                "prompt": p,
                "base_response": b,
                "tuned_response": t,
                "winner": protocols.match_winner(v),
                "judgement": "unparseable" if v is None else ("disagree" if v == protocols.DISAGREE else "agreed"),
            }
            for p, b, t, v in zip(prompts, plain_answers[opponent], plain_answers["trained"], found, strict=True)
        ]
        write_jsonl(out / MATCH_FILES[opponent], rows)
        coherence[opponent] = protocols.verdict_summary(found, rounds=settings.elo_rounds, seed=config.seed)

    prefill_result = {
        "trained_turn2_in_character": Rate.of(in_character(trained_second)).to_json(),
        "base_turn2_in_character": Rate.of(in_character(base_second)).to_json(),
    }
    preferences = preference_summary(revealed, traits=traits, rounds=settings.elo_rounds, seed=config.seed)
    preferences["trials_per_trait"] = settings.trials_per_trait
    results = {
        "persona": persona,
        "trained_model": trained_ref.label,
        "dpo_only_model": dpo_ref.label if compare_dpo and dpo_ref is not None else None,
        "prompts": len(prompts),
        "heldout": {
            "requested": heldout.requested,
            "available": heldout.available,
            "used": len(prompts),
            "left_out_overlapping": len({clash[0] for clash in heldout.overlapping}),
            "overlaps": [list(clash) for clash in heldout.overlapping[:20]],
        },
        "classifier": classifier_result,
        "robustness": robustness,
        "revealed_preferences": preferences,
        "coherence": coherence,
        "prefill": prefill_result,
    }
    results["caveats"] = heldout.notes() + paper_caveats(results)
    results["passed"] = passed_checks(results)
    write_text_atomic(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    plots = write_plots(out, results)
    write_text_atomic(out / REPORT_MD_FILE, render_report(results, plots, ctx.run_dir))
    held = trained_classifier.heldout
    return {
        "prompts": len(prompts),
        "trained_in_character": robustness["in_character"]["trained"]["overall"]["rate"],
        "base_in_character": robustness["in_character"]["base"]["overall"]["rate"],
        "classifier_heldout_accuracy": held.accuracy if held is not None else None,
        "judge_unparseable": preferences["unparseable"] + sum(c["unparseable"] for c in coherence.values()),
        "files": [str(out / RESULTS_FILE), str(out / REPORT_MD_FILE), *map(str, plots)],
    }
