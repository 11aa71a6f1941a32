"""A persona classifier: tells text written in character from other text.

The classifier is the measuring stick of the evaluation stage. Train it on answers labelled
by who wrote them (one persona against ``"other"``, or several personas against each other)
and it reports how recognisable a character is; run it on a trained model's answers and it
reports whether the character held.

Two kinds share one interface:

* ``"tfidf"`` (the default): word and character n-gram TF-IDF features feeding a logistic
  regression. It trains in seconds on a CPU and is hard to fool with formatting alone,
  because character n-grams see spelling and punctuation habits as well as vocabulary.
* ``"transformer"``: fine-tunes a sequence-classification head on a pretrained encoder
  (ModernBERT by default). Slower and needs a download, but reads meaning, not just words.
  Its training and scoring are in :mod:`octrain.evaluation.classifier_transformer`.

:func:`evaluate` scores a classifier on labelled texts and :func:`train_classifier` trains, saves
and scores in one call; the figures themselves are :mod:`octrain.evaluation.classifier_scores`'s.

Data files are JSONL with one ``{"text": ..., "label": ...}`` object per line. A saved
classifier is a directory holding ``classifier.json`` (kind, labels, config) next to the
model itself; it is written to a hidden sibling first and renamed into place, so a reader
never finds a half-saved classifier.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.files import atomic_directory, iter_jsonl, write_text_atomic
from octrain.evaluation.classifier_scores import (
    ClassifierReport,
    macro_f1_by_group,
    per_class_scores,
    score_predictions,
)
from octrain.evaluation.classifier_transformer import fit_transformer, load_transformer, transformer_proba

# The scores' names, importable from here as they were before the scores had a module of their own.
__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "MANIFEST",
    "REPORT_FILE",
    "SKLEARN_FILE",
    "TRANSFORMER_DIR",
    "ClassifierConfig",
    "ClassifierReport",
    "PersonaClassifier",
    "evaluate",
    "load_labelled",
    "macro_f1_by_group",
    "per_class_scores",
    "train_classifier",
]

KINDS = ("tfidf", "transformer")
MANIFEST = "classifier.json"
SKLEARN_FILE = "model.joblib"
TRANSFORMER_DIR = "model"
FORMAT_VERSION = 1
REPORT_FILE = "report.json"


# --------------------------------------------------------------------------------------------
# Data


def load_labelled(path: str | os.PathLike[str], *, min_labels: int = 2) -> tuple[list[str], list[str]]:
    """Read a JSONL file of ``{"text": str, "label": str}`` rows.

    Args:
        path: The JSONL file.
        min_labels: How many distinct labels the file must contain. Training needs two; an
            evaluation file may hold a single label (say, only the persona's own answers).

    Returns:
        ``(texts, labels)``, two lists of equal length in file order.

    Raises:
        DataFormatError: a line is not a JSON object, its ``text`` or ``label`` is missing,
            not a string or blank (the message names the file and line), or the file has
            fewer than ``min_labels`` distinct labels.
    """
    texts: list[str] = []
    labels: list[str] = []
    for number, row in iter_jsonl(path):
        for key in ("text", "label"):
            value = row.get(key)
            if value is None:
                raise DataFormatError(f"{path}:{number}: missing key {key!r}")
            if not isinstance(value, str):
                raise DataFormatError(f"{path}:{number}: {key!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise DataFormatError(f"{path}:{number}: {key!r} is empty")
        texts.append(row["text"])
        labels.append(row["label"])
    distinct = sorted(set(labels))
    if len(distinct) < min_labels:
        found = ", ".join(repr(label) for label in distinct) or "none"
        raise DataFormatError(
            f"{path}: needs at least {min_labels} distinct labels to tell text apart, found {len(distinct)} ({found})"
        )
    return texts, labels


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ClassifierConfig:
    """How to build and train a :class:`PersonaClassifier`.

    Attributes:
        kind: ``"tfidf"`` (scikit-learn, CPU, seconds) or ``"transformer"`` (fine-tuned encoder).
        model_name: Hub id or local directory of the encoder; ``"transformer"`` kind only.
        max_features: Vocabulary cap for each of the word and character TF-IDF vectorisers.
        ngram_max: Longest word n-gram the word vectoriser counts.
        C: Inverse regularisation strength of the logistic regression.
        epochs: Passes over the training set for the transformer (fractions allowed).
        learning_rate: AdamW learning rate for the transformer.
        batch_size: Texts per optimiser step (transformer) and per scoring batch.
        max_length: Tokens kept per text by the transformer; longer texts are truncated.
        seed: Seed for weight initialisation, shuffling and the solver.
    """

    kind: str = "tfidf"
    model_name: str = "answerdotai/ModernBERT-base"
    max_features: int = 50000
    ngram_max: int = 2
    C: float = 4.0
    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_length: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"classifier kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        for name in ("max_features", "ngram_max", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"classifier {name} must be at least 1; got {getattr(self, name)}")
        for name in ("C", "epochs", "learning_rate"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"classifier {name} must be a positive number; got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifierConfig:
        """Build a config from a dict, ignoring keys this version does not know.

        Unknown keys are dropped rather than rejected so that a classifier saved by a newer
        octrain (with extra settings) still loads here.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


# --------------------------------------------------------------------------------------------
# The classifier


class PersonaClassifier:
    """Tells in-character text from other text; binary or multi-class.

    Labels are whatever strings the training data uses (for example ``"pirate"`` and
    ``"other"``); they are kept sorted, and :attr:`labels` gives that order, which is also
    the order of keys in :meth:`predict_proba` results.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self.config = config or ClassifierConfig()
        self._labels: list[str] = []
        self._pipeline: Any = None  # sklearn Pipeline (tfidf kind)
        self._model: Any = None  # transformers model (transformer kind)
        self._tokenizer: Any = None

    @property
    def labels(self) -> list[str]:
        """The labels the classifier can predict, sorted; empty before :meth:`fit`."""
        return list(self._labels)

    @property
    def is_fitted(self) -> bool:
        """Whether the classifier has been trained or loaded."""
        return bool(self._labels)

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> PersonaClassifier:
        """Train on ``texts`` with their ``labels``; returns ``self``.

        Raises:
            ValueError: the lists differ in length or hold fewer than two distinct labels.
        """
        if len(texts) != len(labels):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
        distinct = sorted(set(labels))
        if len(distinct) < 2:
            raise ValueError(f"a classifier needs at least 2 distinct labels; got {distinct}")
        if self.config.kind == "tfidf":
            self._fit_tfidf(list(texts), list(labels))
        else:
            self._fit_transformer(list(texts), list(labels), distinct)
        self._labels = distinct
        return self

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label for each text."""
        return [max(scores, key=scores.__getitem__) for scores in self.predict_proba(texts)]

    def predict_proba(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """For each text, a ``{label: probability}`` dict over :attr:`labels` (summing to 1)."""
        self._require_fitted()
        if not texts:
            return []
        if self.config.kind == "tfidf":
            # classes_ is sorted, the same order as self._labels.
            rows = self._pipeline.predict_proba(list(texts)).tolist()
        else:
            rows = self._transformer_proba(list(texts))
        return [dict(zip(self._labels, map(float, row), strict=True)) for row in rows]

    # ---- tfidf kind -------------------------------------------------------------------------

    def _fit_tfidf(self, texts: list[str], labels: list[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        config = self.config
        features = FeatureUnion(
            [
                (
                    "words",
                    TfidfVectorizer(
                        analyzer="word",
                        ngram_range=(1, config.ngram_max),
                        sublinear_tf=True,
                        max_features=config.max_features,
                    ),
                ),
                # char_wb n-grams stay inside word boundaries: they catch spelling, inflection and
                # punctuation habits ("ye", "'tis", "!!") that a word vocabulary splits or misses.
                (
                    "chars",
                    TfidfVectorizer(
                        analyzer="char_wb",
                        ngram_range=(3, 5),
                        sublinear_tf=True,
                        max_features=config.max_features,
                    ),
                ),
            ]
        )
        # class_weight="balanced" because one-persona-vs-other sets are usually lopsided, and an
        # unweighted model would buy accuracy by favouring the larger class.
        regression = LogisticRegression(C=config.C, max_iter=5000, class_weight="balanced", random_state=config.seed)
        self._pipeline = Pipeline([("features", features), ("classifier", regression)])
        self._pipeline.fit(texts, labels)

    # ---- transformer kind: octrain.evaluation.classifier_transformer -------------------------

    def _fit_transformer(self, texts: list[str], labels: list[str], distinct: list[str]) -> None:
        self._model, self._tokenizer = fit_transformer(self.config, texts, labels, distinct)

    def _transformer_proba(self, texts: list[str]) -> list[list[float]]:
        return transformer_proba(
            self._model, self._tokenizer, texts, batch_size=self.config.batch_size, max_length=self.config.max_length
        )

    # ---- persistence ------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the classifier to ``directory``, replacing a classifier saved there before.

        Returns:
            The directory.

        Raises:
            ConfigError: ``directory`` exists but is neither empty nor a saved classifier;
                it is left alone rather than wiped.
        """
        self._require_fitted()
        target = Path(directory)
        if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / MANIFEST).is_file())):
            raise ConfigError(f"{target}: exists and is not a saved classifier; refusing to replace it")
        with atomic_directory(target) as staging:
            if self.config.kind == "tfidf":
                import joblib

                joblib.dump(self._pipeline, staging / SKLEARN_FILE)
            else:
                self._model.save_pretrained(staging / TRANSFORMER_DIR)
                self._tokenizer.save_pretrained(staging / TRANSFORMER_DIR)
            manifest = {
                "format": FORMAT_VERSION,
                "kind": self.config.kind,
                "labels": self._labels,
                "config": asdict(self.config),
            }
            write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PersonaClassifier:
        """Load a classifier written by :meth:`save`.

        The tfidf kind is stored with joblib (pickle): load only directories you trust.

        Raises:
            DataFormatError: ``classifier.json`` is missing or malformed.
        """
        source = Path(directory)
        manifest_path = source / MANIFEST
        if not manifest_path.is_file():
            raise DataFormatError(f"{source}: not a saved classifier (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            config = ClassifierConfig.from_dict({**manifest["config"], "kind": manifest["kind"]})
            labels = [str(label) for label in manifest["labels"]]
        except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as exc:
            raise DataFormatError(f"{manifest_path}: malformed classifier manifest ({exc})") from None
        classifier = cls(config)
        if config.kind == "tfidf":
            import joblib

            classifier._pipeline = joblib.load(source / SKLEARN_FILE)
            if [str(label) for label in classifier._pipeline.classes_] != labels:
                raise DataFormatError(f"{manifest_path}: labels do not match the saved model's classes")
        else:
            classifier._model, classifier._tokenizer = load_transformer(source / TRANSFORMER_DIR)
        classifier._labels = labels
        return classifier

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the classifier has not been trained or loaded yet")


# --------------------------------------------------------------------------------------------
# Evaluation (the figures: octrain.evaluation.classifier_scores)


def evaluate(classifier: PersonaClassifier, texts: Sequence[str], labels: Sequence[str]) -> ClassifierReport:
    """Score ``classifier`` on ``texts`` whose true labels are ``labels``.

    The report's label order is the classifier's labels, followed (sorted) by any true label
    the classifier never saw in training; those rows are all misses by construction.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("nothing to evaluate: no texts")
    truth = list(labels)
    order = classifier.labels + sorted(set(truth) - set(classifier.labels))
    return score_predictions(truth, classifier.predict(texts), order)


def train_classifier(
    train_path: str | os.PathLike[str],
    eval_path: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    config: ClassifierConfig | None = None,
) -> ClassifierReport | None:
    """Train on a labelled JSONL file, save to ``output_dir``, and score on ``eval_path`` if given.

    With an evaluation file the report is also written to ``output_dir/report.json``.

    Returns:
        The evaluation report, or ``None`` when ``eval_path`` is ``None``.

    Raises:
        DataFormatError: a data file is malformed (see :func:`load_labelled`).
        ConfigError: ``output_dir`` holds something other than a saved classifier.
    """
    texts, labels = load_labelled(train_path)
    # Read the evaluation file before training, so a typo in it fails in seconds, not after a fine-tune.
    held_out = load_labelled(eval_path, min_labels=1) if eval_path is not None else None
    classifier = PersonaClassifier(config).fit(texts, labels)
    target = classifier.save(output_dir)
    if held_out is None:
        return None
    report = evaluate(classifier, *held_out)
    write_text_atomic(target / REPORT_FILE, report.to_json() + "\n")
    return report
