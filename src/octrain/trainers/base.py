"""The trainer interface: one call trains a whole stage.

The granularity is the stage, not the step, because TRL owns its own training loop (with
accumulation, checkpointing, logging and ``accelerate`` scale-out) while a hosted service
such as Tinker exposes only steps: a stage-level call lets each backend keep its own loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from octrain.core.config import DpoStageConfig, SdftSettings
from octrain.core.records import Message, ModelRef


@runtime_checkable
class Trainer(Protocol):
    def train_dpo(self, pairs_path: Path, start: ModelRef, output_dir: Path, config: DpoStageConfig) -> ModelRef:
        """Train a LoRA adapter on the preference pairs in ``pairs_path`` (TRL conversational format).

        ``start`` is the model before training; the DPO reference is that same model. Writes
        the adapter, ``model.json``, ``metrics.jsonl`` and ``training.png`` under
        ``output_dir``, resumes from the last checkpoint there, and returns the trained model.
        """
        ...

    def train_sdft(
        self,
        pairs_path: Path,
        start: ModelRef,
        output_dir: Path,
        config: SdftSettings,
        context: Sequence[Message],
        *,
        enable_thinking: bool = False,
        teacher: ModelRef | None = None,
    ) -> ModelRef:
        """Stage 1 by on-policy self-distillation (``distill.method=sdft``) on the pairs' prompts.

        The student answers the prompts itself and learns, token by token, what the same model says
        with ``context`` (the teacher's persona context) before the prompt; with ``teacher``, that
        model (frozen, the student's vocabulary) reads the context and grades instead of the
        student's own base. Same outputs and resuming as :meth:`train_dpo`; a backend that cannot do
        it raises ConfigError.
        """
        ...
