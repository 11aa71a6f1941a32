"""Trainer backends behind one stage-level interface, built from the config (imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from octrain.core.config import DpoStageConfig, SdftSettings, TrainerBackend, TrainerConfig
from octrain.core.errors import ConfigError
from octrain.core.records import Message, ModelRef
from octrain.trainers.base import Trainer

__all__ = ["TRLTrainer", "TinkerTrainer", "Trainer", "build_trainer"]


class TRLTrainer:
    """Local LoRA training with TRL (CPU or CUDA; ``accelerate launch`` for several GPUs)."""

    def __init__(self, config: TrainerConfig, *, seed: int = 0, attn_implementation: str = "sdpa") -> None:
        self.options = config.trl
        self.seed = seed
        self.attn_implementation = attn_implementation  # the student's kernel: a model setting, not a TRL one

    def train_dpo(self, pairs_path: Path, start: ModelRef, output_dir: Path, config: DpoStageConfig) -> ModelRef:
        from octrain.trainers.trl_dpo import train_dpo

        return train_dpo(
            pairs_path,
            start,
            output_dir,
            config,
            self.options,
            seed=self.seed,
            attn_implementation=self.attn_implementation,
        )

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
        """Stage 1 by on-policy self-distillation on the pairs' prompts (:mod:`octrain.trainers.trl_sdft`)."""
        from octrain.trainers.trl_sdft import train_sdft

        return train_sdft(
            pairs_path,
            start,
            output_dir,
            config,
            context,
            self.options,
            seed=self.seed,
            attn_implementation=self.attn_implementation,
            enable_thinking=enable_thinking,
            teacher=teacher,
        )


class TinkerTrainer:
    """Hosted LoRA training on Tinker (no local GPU); the trained weights stay there as ``tinker://`` paths."""

    def __init__(self, config: TrainerConfig, *, seed: int = 0) -> None:
        self.options = config.tinker
        self.seed = seed

    def train_dpo(self, pairs_path: Path, start: ModelRef, output_dir: Path, config: DpoStageConfig) -> ModelRef:
        from octrain.trainers.tinker_dpo import train_dpo

        return train_dpo(pairs_path, start, output_dir, config, self.options, seed=self.seed)

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
        """Stage 1 by on-policy distillation on Tinker, the sampled-token reverse KL
        (:mod:`octrain.trainers.tinker_sdft`); ``teacher`` is a Tinker model name with the student's tokenizer."""
        from octrain.trainers.tinker_sdft import train_sdft

        return train_sdft(
            pairs_path,
            start,
            output_dir,
            config,
            context,
            self.options,
            seed=self.seed,
            enable_thinking=enable_thinking,
            teacher=teacher,
        )


def build_trainer(config: TrainerConfig, *, seed: int = 0, attn_implementation: str = "sdpa") -> Trainer:
    """The backend ``config`` names; ``attn_implementation`` is ``student.attn_implementation`` (local backends)."""
    if config.backend is TrainerBackend.trl:
        return TRLTrainer(config, seed=seed, attn_implementation=attn_implementation)
    if config.backend is TrainerBackend.tinker:
        return TinkerTrainer(config, seed=seed)
    raise ConfigError(f"trainer.backend={config.backend.value}: this backend is not in this version of octrain yet")
