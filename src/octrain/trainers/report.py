"""Training metrics as JSONL, plots of them, and the one way octrain writes a figure to disk.

A training stage's report is its ``metrics.jsonl`` (a row per logged optimizer step),
``train_summary.json`` (the step count, transformers' end-of-training row on the TRL backend,
and a note when the run was too short to read much into) and ``training.png``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from octrain.core.files import atomic_writer, write_jsonl, write_text_atomic
from octrain.core.layout import TRAIN_SUMMARY_FILE
from octrain.trainers.schedule import SHORT_RUN_STEPS

logger = logging.getLogger(__name__)


def write_metrics(path: Path, log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write the per-step training logs to ``path`` and the end-of-training row (runtime, samples/s,
    mean loss) to ``train_summary.json`` beside it. Returns the per-step rows."""
    rows = [dict(row) for row in log_history if "loss" in row and "step" in row]
    write_jsonl(path, rows)
    summary = next((row for row in reversed(log_history) if "train_runtime" in row), None)
    if summary is not None:
        write_text_atomic(path.with_name(TRAIN_SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return rows


def few_steps_note(steps: int) -> str | None:
    """What a run of ``steps`` optimizer steps should say about itself: None when it is long enough.

    Below :data:`octrain.trainers.schedule.SHORT_RUN_STEPS` the run has no warmup either; a curve of
    a handful of points says little about whether, or how well, the model learned.
    """
    if steps >= SHORT_RUN_STEPS:
        return None
    return f"{steps} optimizer {'step' if steps == 1 else 'steps'}: too few for the loss curve to mean much"


def record_steps(directory: Path, steps: int, *, stage: str) -> str | None:
    """Write the run's optimizer-step count, and the note of :func:`few_steps_note` when there is one,
    into ``directory/train_summary.json`` (kept beside what :func:`write_metrics` put there, so call
    this after it); log the note as a warning. Returns the note."""
    path = directory / TRAIN_SUMMARY_FILE
    summary = read_summary(directory)
    note = few_steps_note(steps)
    summary["optimizer_steps"] = steps
    summary.pop("note", None)
    if note:
        summary["note"] = note
        logger.warning(
            "%s: %s (fewer than %d; more data, a smaller batch or more epochs make more steps)",
            stage,
            note,
            SHORT_RUN_STEPS,
        )
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
    return note


def read_summary(directory: Path) -> dict[str, Any]:
    """``directory/train_summary.json`` as a dict (empty when there is none)."""
    path = directory / TRAIN_SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def plot_metrics(
    path: Path,
    rows: Sequence[dict[str, Any]],
    panels: Sequence[tuple[str, Sequence[str]]],
    *,
    note: str | None = None,
) -> bool:
    """Draw one panel per ``(title, metric keys)`` against the step, ``note`` above them (a run too
    short to read much into says so on its figure); False if nothing to draw."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    shown = [(title, [k for k in keys if any(k in row for row in rows)]) for title, keys in panels]
    shown = [(title, keys) for title, keys in shown if keys]
    figure, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.4), squeeze=False)
    for axis, (title, keys) in zip(axes[0], shown, strict=True):
        for key in keys:
            points = [(row["step"], row[key]) for row in rows if key in row]
            axis.plot(
                [p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None, label=key
            )
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if note:
        figure.suptitle(note, fontsize=9, color="firebrick")
    save_figure(figure, path)
    return True


def save_figure(figure: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` written by :func:`write_metrics` (empty if there is none)."""
    from octrain.core.files import iter_jsonl

    return [row for _, row in iter_jsonl(path)] if path.is_file() else []
