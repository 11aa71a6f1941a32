"""The checkpointed, resumable step loop both Tinker trainers run (DPO in tinker_dpo, SFT in tinker_sft).

A trainer says what one of its steps is (a :class:`StepPlan`: the learning rate, the Adam settings,
the forward-backward request and the metrics row of its answer); :class:`ResumableTraining` does the
rest, the same way for both stages:

* the optimizer steps of a training are fixed up front (:func:`step_batches`) and keyed by a hash of
  everything the training depends on (:func:`fingerprint`);
* ``save_state`` every ``trainer.tinker.save_steps`` steps (weights and Adam moments), named
  ``STAGE-step-NNNNNN``; ``tinker_progress.json`` (:class:`Progress`) names a state only once Tinker
  has confirmed it, so a rerun after a kill continues from it and each step is trained exactly once;
* ``metrics.jsonl`` is written with each saved state, and cut back to the saved step on a resume;
* at the end the state ``STAGE-final`` and the sampling weights ``STAGE-final`` are saved, and
  ``model.json`` names the latter's ``tinker://`` path.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from octrain.core.config import TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.files import write_text_atomic
from octrain.core.layout import METRICS_FILE, MODEL_FILE, PLOT_FILE, TINKER_PROGRESS_FILE
from octrain.core.records import ModelRef
from octrain.core.seeding import derive_seed
from octrain.core.settings_digest import settings_digest
from octrain.trainers.report import plot_metrics, read_metrics, record_steps, write_metrics

logger = logging.getLogger(__name__)

# What a trainer keeps from sending a step to reading its answer (the step's datums, for SFT's loss).
StepContext = TypeVar("StepContext")


@dataclass
class Progress:
    """What survives a kill: the last state checkpoint and the step it holds, in ``tinker_progress.json``.

    Written only after Tinker has confirmed the save, so the state named here is complete; a resumed
    run continues at ``step`` and no step is trained twice or skipped.
    """

    step: int = 0
    state_path: str | None = None
    fingerprint: str = ""
    final_state_path: str | None = None
    sampler_path: str | None = None

    @classmethod
    def load(cls, output_dir: Path) -> Progress | None:
        path = output_dir / TINKER_PROGRESS_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def save(self, output_dir: Path) -> None:
        write_text_atomic(output_dir / TINKER_PROGRESS_FILE, json.dumps(self.__dict__, indent=2) + "\n")


def fingerprint(*parts: object) -> str:
    """A short hash of what a training depends on: a resume with other data or settings starts afresh.

    Settings at their defaults are left out (:mod:`octrain.core.settings_digest`), so that an
    upgrade adding a setting resumes the training instead of starting it again.
    """
    return settings_digest(list(parts))


def step_batches(
    count: int, *, batch_size: int, epochs: float, seed: int, label: str, shuffle_first_epoch: bool = True
) -> list[list[int]]:
    """The record indices of every optimizer step, ``ceil(count / batch_size * epochs)`` of them.

    Each epoch is cut into batches in order; an epoch is first shuffled with its own seed
    (``label`` names the stream), except the first when ``shuffle_first_epoch`` is False, for
    records already shuffled when they were written.
    """
    steps_per_epoch = math.ceil(count / batch_size)
    total = max(1, math.ceil(steps_per_epoch * epochs))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = list(range(count))
        if epoch or shuffle_first_epoch:
            random.Random(derive_seed(seed, label, epoch)).shuffle(order)
        batches.extend(order[start : start + batch_size] for start in range(0, count, batch_size))
        epoch += 1
    return batches[:total]


def check_save_steps(options: TinkerOptions) -> None:
    """Refuse a checkpoint interval the loop cannot keep, before any request goes out."""
    if options.save_steps < 1:
        raise ConfigError(f"trainer.tinker.save_steps={options.save_steps}: must be at least 1")


@dataclass(frozen=True)
class StepPlan(Generic[StepContext]):
    """What one optimizer step of a trainer is; :meth:`ResumableTraining.run` sends and records it.

    Attributes:
        learning_rate: the LR of step ``i`` (0-based).
        adam: the ``tinker.AdamParams`` of an optimizer step at a given LR.
        send: sends step ``i``'s forward-backward request; returns its future and what
            :attr:`row` needs besides the answer.
        row: the metrics of step ``i`` from the forward-backward answer; the loop adds ``step``
            before them and ``learning_rate`` after them.
    """

    learning_rate: Callable[[int], float]
    adam: Callable[[float], Any]
    send: Callable[[int], tuple[Any, StepContext]]
    row: Callable[[int, Any, StepContext], dict[str, Any]]


@dataclass
class _SentStep(Generic[StepContext]):
    step: int
    backward: Any
    update: Any
    context: StepContext
    learning_rate: float


class ResumableTraining:
    """One stage's training on Tinker, from where its ``tinker_progress.json`` left it.

    Args:
        output_dir: the stage directory (progress file, metrics, plot, ``model.json``).
        stage: the stage's name, in log lines and in the names of the saved states.
        key: the training's :func:`fingerprint`; saved progress under another key is ignored.
        total_steps: how many optimizer steps the whole training has.
    """

    def __init__(self, output_dir: Path, *, stage: str, key: str, total_steps: int, options: TinkerOptions) -> None:
        self.output_dir = output_dir
        self.stage = stage
        self.total_steps = total_steps
        self.options = options
        progress = Progress.load(output_dir)
        if progress is not None and progress.fingerprint != key:
            logger.warning(
                "%s: %s is from other data or settings; training from the start", stage, TINKER_PROGRESS_FILE
            )
            progress = None
        self.progress = progress or Progress(fingerprint=key)

    @property
    def finished(self) -> bool:
        """Every step trained and the weights saved for sampling: nothing is left to ask of the service."""
        return bool(self.progress.sampler_path) and self.progress.step >= self.total_steps

    def open_client(self, service: Any, start: Callable[[], Any]) -> Any:
        """The training client: the saved state with its Adam moments when resuming, else ``start()``."""
        if self.progress.state_path:
            logger.info("%s: resuming at step %d from %s", self.stage, self.progress.step, self.progress.state_path)
            return service.create_training_client_from_state_with_optimizer(self.progress.state_path).result()
        return start()

    def run(self, client: Any, plan: StepPlan[StepContext]) -> None:
        """Train every step not trained yet, saving the state every ``save_steps`` and at the end."""
        progress, options, total = self.progress, self.options, self.total_steps
        metrics_path = self.output_dir / METRICS_FILE
        # Rows past the saved step belong to steps that are trained again now.
        rows = [row for row in read_metrics(metrics_path) if row.get("step", 0) <= progress.step]

        def send(step: int) -> _SentStep[StepContext]:
            learning_rate = plan.learning_rate(step)
            backward, context = plan.send(step)
            # Requests on a training client run in submission order: the optimizer step goes out at
            # once, and the next batch's forward pass after it, before this one's answers are read.
            update = client.optim_step(plan.adam(learning_rate))
            return _SentStep(step, backward, update, context, learning_rate)

        def record(sent: _SentStep[StepContext]) -> None:
            result = sent.backward.result()
            sent.update.result()
            row = {"step": sent.step + 1, **plan.row(sent.step, result, sent.context)}
            row["learning_rate"] = sent.learning_rate
            rows.append(row)

        pending: _SentStep[StepContext] | None = None
        for step in range(progress.step, total):
            sent = send(step)
            if pending is not None:
                record(pending)
            pending = sent
            done = step + 1
            if done % options.save_steps == 0 and done < total:
                record(pending)
                pending = None
                name = f"{self.stage}-step-{done:06d}"
                saved = client.save_state(name, ttl_seconds=options.checkpoint_ttl_seconds).result()
                write_metrics(metrics_path, rows)
                progress.step, progress.state_path = done, saved.path  # only now is the state known complete
                progress.save(self.output_dir)
        if pending is not None:
            record(pending)
        final_name = f"{self.stage}-final"
        final = client.save_state(final_name, ttl_seconds=options.checkpoint_ttl_seconds).result()
        sampler = client.save_weights_for_sampler(final_name, ttl_seconds=options.checkpoint_ttl_seconds).result()
        write_metrics(metrics_path, rows)
        progress.step, progress.state_path = total, final.path
        progress.final_state_path, progress.sampler_path = final.path, sampler.path
        progress.save(self.output_dir)

    def finish(self, base: str, panels: Sequence[tuple[str, Sequence[str]]]) -> ModelRef:
        """The stage's report and ``model.json``: the trained weights as ``ModelRef(base, remote=tinker://...)``."""
        note = record_steps(self.output_dir, self.progress.step, stage=self.stage)  # every step is trained by now
        plot_metrics(self.output_dir / PLOT_FILE, read_metrics(self.output_dir / METRICS_FILE), panels, note=note)
        result = ModelRef(base=base, remote=self.progress.sampler_path)
        result.save(self.output_dir / MODEL_FILE)
        return result
