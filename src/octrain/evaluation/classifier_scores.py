"""How far a classifier's predicted labels match the truth: accuracy, macro-F1, confusion, per class.

:func:`octrain.evaluation.classifier.evaluate` predicts with a persona classifier and hands the
labels to :func:`score_predictions`; :func:`macro_f1_by_group` breaks the score down by slice
(an adversarial suffix, a prompt source). The figures are scikit-learn's, imported inside the
functions so that importing this module stays light.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClassifierReport:
    """How well a classifier's predictions match the true labels of a labelled set.

    Attributes:
        accuracy: Fraction of texts whose predicted label is the true one.
        macro_f1: Unweighted mean of per-label F1 over the labels that occur in the truth or
            the predictions (a label absent from both says nothing, so it is left out).
        labels: Row and column order of ``confusion``.
        confusion: ``confusion[i][j]`` counts texts whose true label is ``labels[i]`` and
            predicted label is ``labels[j]``.
        support: Number of texts with each true label (every label in ``labels`` appears).
        per_class: For each label, its count in the truth (``n``), ``precision`` (of the texts
            predicted as it, the share truly it; None when none was) and ``recall`` (of the texts
            truly it, the share found; None when there were none).
    """

    accuracy: float
    macro_f1: float
    labels: list[str]
    confusion: list[list[int]]
    support: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return asdict(self)

    def to_json(self) -> str:
        """The report as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def score_predictions(truth: Sequence[str], predicted: Sequence[str], order: Sequence[str]) -> ClassifierReport:
    """The report of ``predicted`` labels against the ``truth``, its rows and columns in ``order``.

    ``order`` must hold every label of ``truth`` and ``predicted``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    truth, predicted, order = list(truth), list(predicted), list(order)
    matrix = confusion_matrix(truth, predicted, labels=order)
    counts = Counter(truth)
    return ClassifierReport(
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
        labels=order,
        confusion=matrix.tolist(),
        support={label: counts.get(label, 0) for label in order},
        per_class=per_class_scores(order, matrix.tolist()),
    )


def per_class_scores(labels: Sequence[str], confusion: Sequence[Sequence[int]]) -> dict[str, dict[str, Any]]:
    """Count, precision and recall of each label from a confusion matrix (rows: truth, columns: predicted)."""
    scores = {}
    for i, label in enumerate(labels):
        truly = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        hit = confusion[i][i]
        scores[label] = {
            "n": truly,
            "precision": hit / predicted if predicted else None,
            "recall": hit / truly if truly else None,
        }
    return scores


def macro_f1_by_group(true: Sequence[str], predicted: Sequence[str], groups: Sequence[str]) -> dict[str, float]:
    """Macro-F1 within each group of texts, plus ``"overall"`` across all of them.

    Useful to see which slice of an evaluation set breaks the character: group by the
    adversarial suffix appended to the prompt, by prompt source, and so on. Within a group,
    the average runs over the labels present in that group's truth or predictions.

    Raises:
        ValueError: the three lists differ in length or are empty, or a group is named ``"overall"``.
    """
    from sklearn.metrics import f1_score

    if not (len(true) == len(predicted) == len(groups)):
        raise ValueError(f"lengths differ: {len(true)} true, {len(predicted)} predicted, {len(groups)} groups")
    if not true:
        raise ValueError("nothing to score: no labels")
    if "overall" in groups:
        raise ValueError('"overall" is reserved for the score across all groups; rename that group')
    members: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        members.setdefault(group, []).append(position)
    scores = {
        group: float(
            f1_score([true[i] for i in positions], [predicted[i] for i in positions], average="macro", zero_division=0)
        )
        for group, positions in members.items()
    }
    scores["overall"] = float(f1_score(list(true), list(predicted), average="macro", zero_division=0))
    return scores
