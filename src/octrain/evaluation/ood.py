"""Does the character hold off the training distribution? In- vs out-of-distribution, side by side.

A run trains on single-turn questions with no system prompt. Users meet the model elsewhere: as an
agent reading a tool's result, answering in JSON for a program, reviewing code, deep in a long
conversation (:mod:`octrain.evaluation.ood_prompts` holds 60 such conversations, 15 per kind). A
persona classifier that was right on held-out training-style answers can be wrong there: a third
party found the paper's released classifiers' F1 fall to 0.29-0.55 on emails written during
agentic tool use. So the instrument is checked on each slice before its rates are read.

For the in-distribution slice (held-out evaluation prompts, none a training prompt) and each
out-of-distribution category, with the same seeds for every model:

* the **teacher in character** (its context as in the pairs stage, merged with the conversation's
  own system message) and the **base student** answer: labelled answers, persona and plain;
* the **classifier's accuracy** on them: the same classifier the ``shift`` suite trains on this
  run's pairs; its accuracy and macro-F1 over both labels, its recall on the teacher and how
  often it calls the base in character. A slice passes when accuracy reaches 80% on at least 40
  answers, the teacher is called in character at least 70% of the time and the base at most 20%
  (:mod:`octrain.evaluation.caveats`, the thresholds every suite uses);
* the **in-character rates** of the base and the trained model (Wilson intervals) and the
  trained model's gain over the base (a paired bootstrap over conversations), counted only on a
  slice whose classifier passed.

Answers are committed in chunks (``OUT/chunks``) and a rerun resumes; the ``eval`` stage runs this
with ``eval.ood.enabled=true`` and ``octrain eval ood MODEL`` on any model of a finished run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.constitution.persona_prompts import teacher_context, with_context
from octrain.core.config import StageName
from octrain.core.config_sections import OodEvalSettings
from octrain.core.errors import StageError
from octrain.core.files import write_jsonl, write_text_atomic
from octrain.core.layout import ANSWERS_FILE, PAIRS_FILE
from octrain.core.records import Message, ModelRef, PreferencePair, load_records
from octrain.evaluation import caveats as check_of
from octrain.evaluation.chunked import LazyModel, answers_in_chunks, work_dir
from octrain.evaluation.heldout import load_eval_prompts, select_heldout, training_prompts
from octrain.evaluation.intervals import Rate
from octrain.evaluation.ood_prompts import OodPrompt, load_ood_prompts
from octrain.evaluation.shift_instruments import PLAIN, paired_difference, pairs_classifier
from octrain.samplers.base import SamplingParams
from octrain.stages.context import RunContext
from octrain.stages.pairs import swap_name

logger = logging.getLogger(__name__)

OOD_FILE = "ood.json"
OOD_REPORT = "ood.md"
IN_DISTRIBUTION = "in-distribution"
OUT_OF_DISTRIBUTION = "out-of-distribution (all)"


def _f1(true: Sequence[bool], predicted: Sequence[bool]) -> float:
    """Macro-F1 over the two labels (in character, plain)."""
    scores = []
    for positive in (True, False):
        tp = sum(t == positive and p == positive for t, p in zip(true, predicted, strict=True))
        fp = sum(t != positive and p == positive for t, p in zip(true, predicted, strict=True))
        fn = sum(t == positive and p != positive for t, p in zip(true, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / 2


def classifier_on_slice(teacher_flags: Sequence[bool], base_flags: Sequence[bool]) -> dict[str, Any]:
    """The classifier's figures on one slice: the teacher's answers are persona, the base's plain."""
    truth = [True] * len(teacher_flags) + [False] * len(base_flags)
    called = [*teacher_flags, *base_flags]
    accuracy = Rate(sum(t == c for t, c in zip(truth, called, strict=True)), len(truth)).to_json()
    teacher = Rate.of(teacher_flags).to_json()
    base = Rate.of(base_flags).to_json()
    problems = check_of.present(
        check_of.classifier_accuracy(accuracy),
        check_of.persona_control("teacher (persona)", teacher),
        check_of.plain_control("base student", base),
    )
    return {
        "accuracy": accuracy,
        "macro_f1": _f1(truth, called),
        "teacher_called_in_character": teacher,
        "base_called_in_character": base,
        "problems": problems,
        "passes_check": not problems,
    }


def _slices(ood: Sequence[OodPrompt], heldout_count: int) -> dict[str, list[int]]:
    """Which conversations (by index into held-out + OOD) make each slice."""
    slices = {IN_DISTRIBUTION: list(range(heldout_count))}
    for index, prompt in enumerate(ood, start=heldout_count):
        slices.setdefault(prompt.category, []).append(index)
    slices[OUT_OF_DISTRIBUTION] = list(range(heldout_count, heldout_count + len(ood)))
    return slices


def evaluate_ood(
    ctx: RunContext, trained: ModelRef, out: Path, *, settings: OodEvalSettings | None = None
) -> dict[str, Any]:
    """The in- vs out-of-distribution figures for ``trained`` against the run's base student, into ``out``."""
    from octrain.samplers import build_sampler  # here, so that tests can hand out their own models

    config, constitution = ctx.config, ctx.constitution
    settings = settings or config.eval.ood
    persona, seed = constitution.name, config.seed

    # Inputs first, before any model loads.
    ood = load_ood_prompts(settings.prompts, categories=settings.categories or None, per_category=settings.per_category)
    heldout = select_heldout(
        load_eval_prompts(config.eval.prompts), training_prompts(ctx.run_dir), config.eval.prompt_count
    )
    pairs = load_records(ctx.stage_dir(StageName.pairs) / PAIRS_FILE, PreferencePair)
    classifier_fit = pairs_classifier(pairs, persona, holdout=config.eval.classifier.holdout, seed=seed)
    classifier = classifier_fit["classifier"]
    conversations: list[list[Message]] = [[{"role": "user", "content": p}] for p in heldout.prompts]
    conversations += [list(p.messages) for p in ood]
    ids = [f"heldout-{i:04d}" for i in range(len(heldout.prompts))] + [p.id for p in ood]
    if len(set(ids)) < len(ids):
        raise StageError("eval.ood: an out-of-distribution prompt's id starts with 'heldout-'; rename it")
    context = teacher_context(constitution, config.teacher.assistant_name, config.pairs.teacher_prompt)
    teacher_conversations = [with_context(context, c) for c in conversations]
    params = SamplingParams.from_config(config.eval.sampling, seed=seed)
    work = work_dir(
        out,
        {
            "trained": trained.to_json(),
            "student": config.student.path,
            "teacher": config.teacher.path,
            "ids": ids,
            "conversations": conversations,
            "teacher_context": context,
            "sampling": dataclasses.asdict(params),
        },
    )

    def answer(model: LazyModel, which: list[list[Message]], name: str) -> list[str]:
        return answers_in_chunks(
            model,
            which,
            [f"{name}-{i}" for i in ids],
            params,
            work / name,
            chunk_size=config.eval.chunk_size,
            desc=f"ood: {name} answers",
        )

    answers: dict[str, list[str]] = {}
    adapters = [trained.adapter]
    for name, adapter in (("base", None), ("trained", trained.adapter)):
        with LazyModel(
            lambda adapter=adapter: build_sampler(config.sampler, config.student, adapter=adapter, serves=adapters)
        ) as model:
            answers[name] = answer(model, conversations, name)
    with LazyModel(lambda: build_sampler(config.sampler, config.teacher)) as teacher:
        answers["teacher"] = [
            swap_name(a, config.teacher.assistant_name, config.student.assistant_name)
            for a in answer(teacher, teacher_conversations, "teacher")
        ]

    flags = {name: [label == persona for label in classifier.predict(texts)] for name, texts in answers.items()}
    figures: dict[str, Any] = {}
    for slice_name, members in _slices(ood, len(heldout.prompts)).items():
        pick = {name: [values[i] for i in members] for name, values in flags.items()}
        check = classifier_on_slice(pick["teacher"], pick["base"])
        figures[slice_name] = {
            "conversations": len(members),
            "classifier": check,
            "in_character": {name: Rate.of(pick[name]).to_json() for name in ("base", "trained")},
            "trained_vs_base": paired_difference(
                [float(f) for f in pick["trained"]], [float(f) for f in pick["base"]], seed
            ),
            "counts": check["passes_check"],
        }
    caveats = heldout.notes() + [
        f"{name}: the classifier fails its check here ({'; '.join(f['classifier']['problems'])}): "
        "its in-character rates on this slice are not counted"
        for name, f in figures.items()
        if not f["counts"]
    ]
    results = {
        "persona": persona,
        "models": {"base": config.student.path, "trained": trained.label, "teacher": config.teacher.path},
        "classifier": {
            "trained_on": classifier_fit["check"]["trained_on"],
            "heldout_accuracy_on_pairs": classifier_fit["check"]["heldout_accuracy"],
            "labels": [persona, PLAIN],
        },
        "prompts": {"in_distribution": len(heldout.prompts), "out_of_distribution": len(ood)},
        "slices": figures,
        "caveats": caveats,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out / ANSWERS_FILE,
        [
            {"id": ids[i], "conversation": conversations[i], **{n: texts[i] for n, texts in answers.items()}}
            for i in range(len(ids))
        ],
    )
    write_text_atomic(out / OOD_FILE, json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / OOD_REPORT, render_ood(results))
    results["files"] = [str(out / OOD_FILE), str(out / OOD_REPORT), str(out / ANSWERS_FILE)]
    return results


def _rate(entry: dict[str, Any]) -> str:
    if entry["rate"] is None:
        return "n/a (n=0)"
    low, high = entry["ci"]
    return f"{entry['rate']:.0%} [{low:.0%}, {high:.0%}] (n={entry['n']})"


def render_ood(results: dict[str, Any]) -> str:
    """The report: per slice, the classifier's own accuracy first, then the rates it may be trusted for."""
    lines = [
        f"# {results['persona']}: in- vs out-of-distribution",
        "",
        "The classifier is trained on this run's pairs. Its accuracy on each slice is measured on the teacher's "
        "in-character answers (persona) and the base student's answers (plain) to that slice's conversations; "
        "a slice's in-character rates count only where it passes (accuracy >= 80% on >= 40 answers, teacher >= "
        "70%, base <= 20%).",
        "",
        "| slice | conversations | classifier accuracy | macro-F1 | base in character | trained in character "
        "| trained - base | counts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, figure in results["slices"].items():
        change = figure["trained_vs_base"]
        low, high = change["ci"]
        lines.append(
            f"| {name} | {figure['conversations']} | {_rate(figure['classifier']['accuracy'])} | "
            f"{figure['classifier']['macro_f1']:.2f} | {_rate(figure['in_character']['base'])} | "
            f"{_rate(figure['in_character']['trained'])} | {change['mean']:+.0%} [{low:+.0%}, {high:+.0%}] | "
            f"{'yes' if figure['counts'] else 'no'} |"
        )
    lines += ["", *(f"- caveat: {c}" for c in results["caveats"])]
    return "\n".join(lines).rstrip() + "\n"
