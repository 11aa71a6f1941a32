"""``octrain eval quick``: a few held-out prompts, base and trained side by side, each answer classified.

A glance after training, not a measurement: a handful of prompts the run did not train on,
answered by the base model and by the trained one with the same seeds, and the persona
classifier's verdict on every answer (the label and the persona's probability). The
classifier is the one the run's ``eval`` stage trained (``RUN_DIR/eval/classifier``), or any
saved by ``octrain eval classifier --out DIR``; its own held-out accuracy is reported beside
its verdicts, and the base model's answers are the control: a classifier that calls the base
in character as often as the trained model tells nothing. The in-character counts come with a
note saying how few answers they rest on; ``octrain eval model`` is the measurement.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.layout import RESULTS_FILE
from octrain.use.model_choice import ChosenModel

CLASSIFIER_DIR = Path("eval") / "classifier"
RUN_RESULTS = Path("eval") / RESULTS_FILE
CLASSIFIER_REPORT = "report.json"  # what `octrain eval classifier --out DIR` writes beside the classifier


def find_classifier(chosen: ChosenModel, given: Path | None) -> Path:
    """The classifier directory to use: ``given``, else the model's run's eval classifier."""
    from octrain.evaluation.classifier import MANIFEST

    if given is not None:
        if not (given / MANIFEST).is_file():
            raise ConfigError(f"--classifier {given}: no {MANIFEST} there (save one with `octrain eval classifier`)")
        return given
    if chosen.run_dir is not None and (chosen.run_dir / CLASSIFIER_DIR / MANIFEST).is_file():
        return chosen.run_dir / CLASSIFIER_DIR
    where = f"{chosen.run_dir / CLASSIFIER_DIR}" if chosen.run_dir is not None else "no run directory"
    raise ConfigError(
        f"{chosen.label}: no persona classifier ({where}): run the run's eval stage, "
        "or pass --classifier DIR (one saved by `octrain eval classifier --out DIR`)"
    )


def classifier_accuracy(classifier_dir: Path) -> float | None:
    """The classifier's own held-out accuracy, where the run or `eval classifier` recorded it."""
    candidates = [(classifier_dir / CLASSIFIER_REPORT, ("accuracy",))]
    if classifier_dir.name == CLASSIFIER_DIR.name and classifier_dir.parent.name == CLASSIFIER_DIR.parent.name:
        candidates.append((classifier_dir.parent / RUN_RESULTS.name, ("classifier", "heldout", "accuracy")))
    for path, keys in candidates:
        try:
            value: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            return float(value)
    return None


def quick_look(
    chosen: ChosenModel,
    *,
    classifier_dir: Path | None = None,
    count: int = 5,
    prompts_source: str = "builtin",
    backend: str | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Answer ``count`` held-out prompts with base and trained, and classify every answer.

    Everything that can fail on the inputs (the classifier, the persona, the prompts) fails
    before a model loads.
    """
    import dataclasses

    from octrain.core.config import SamplingConfig
    from octrain.evaluation.classifier import PersonaClassifier
    from octrain.evaluation.side_by_side import base_and_trained, heldout_prompts, user_turns
    from octrain.samplers.base import SamplingParams
    from octrain.use.model_choice import sampler_settings

    if count < 1:
        raise ConfigError(f"--prompts-count must be at least 1, got {count}")
    found = find_classifier(chosen, classifier_dir)
    persona = chosen.persona
    classifier = PersonaClassifier.load(found)
    if persona is None:
        raise ConfigError(f"{chosen.label}: its persona is unknown (no run): the classifier needs one of its labels")
    if persona not in classifier.labels:
        raise DataFormatError(f"{found}: the classifier knows {', '.join(classifier.labels)}, not persona {persona!r}")
    config = chosen.run_config()
    run_seed = config.seed if config is not None else 0
    seed = run_seed if seed is None else seed
    prompts, notes = heldout_prompts(chosen, prompts_source, count, seed=seed)
    sampling = config.eval.sampling if config is not None else SamplingConfig(max_new_tokens=512)
    if max_new_tokens is not None:
        sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens)
    params = SamplingParams.from_config(sampling, seed=seed)

    answers: dict[str, list[str]] = {}
    with base_and_trained(chosen, sampler_settings(chosen, backend)) as model:
        for name, trained in (("base", False), ("trained", True)):
            rows = model(trained).chat(user_turns(prompts), params, desc=f"quick: {name} answers")
            answers[name] = [row[0].text for row in rows]

    verdicts = {name: classifier.predict_proba(texts) for name, texts in answers.items()}
    rows = []
    for index, prompt in enumerate(prompts):
        row: dict[str, Any] = {"prompt": prompt}
        for name in answers:
            probabilities = verdicts[name][index]
            label = max(probabilities, key=probabilities.__getitem__)
            row[name] = {"text": answers[name][index], "label": label, "persona_p": probabilities.get(persona, 0.0)}
        rows.append(row)
    in_character = {name: sum(row[name]["label"] == persona for row in rows) for name in answers}
    notes.append(
        f"{len(rows)} answers per model: a glance, not a measurement (one answer more or less moves the rate by "
        f"{1 / len(rows):.0%}); `octrain eval model` measures on hundreds"
    )
    accuracy = classifier_accuracy(found)
    if accuracy is None:
        notes.append(f"{found}: the classifier's own accuracy is not recorded: its verdicts are unverified")
    return {
        "model": chosen.label,
        "persona": persona,
        "classifier": {"path": str(found), "labels": classifier.labels, "heldout_accuracy": accuracy},
        "prompts": len(rows),
        "in_character": in_character,
        "rows": rows,
        "notes": notes,
    }


def render_quick(result: dict[str, Any], width: int = 100) -> str:
    """The side-by-side answers as text: per prompt the base answer, then the trained one, each labelled."""
    persona = result["persona"]
    lines = []
    for number, row in enumerate(result["rows"], start=1):
        lines.append(f"[{number}] {row['prompt']}")
        for name in ("base", "trained"):
            answer = row[name]
            mark = "in character" if answer["label"] == persona else f"classified {answer['label']}"
            lines.append(f"  {name} ({mark}, p({persona}) = {answer['persona_p']:.2f}):")
            text = " ".join(answer["text"].split()) or "(empty answer)"
            lines.extend(textwrap.wrap(text, width=width, initial_indent="    ", subsequent_indent="    "))
        lines.append("")
    accuracy = result["classifier"]["heldout_accuracy"]
    counts = result["in_character"]
    lines.append(
        f"in character: trained {counts['trained']}/{result['prompts']}, base {counts['base']}/{result['prompts']} "
        f"(classifier held-out accuracy {'unknown' if accuracy is None else f'{accuracy:.2f}'})"
    )
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)
