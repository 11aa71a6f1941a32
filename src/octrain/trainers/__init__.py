"""Trainer backends behind one stage-level interface, built from the config (imported lazily)."""

from __future__ import annotations

from pathlib import Path

from octrain.config import DpoStageConfig, TrainerBackend, TrainerConfig
from octrain.errors import ConfigError
from octrain.records import ModelRef
from octrain.trainers.base import Trainer

__all__ = ["TRLTrainer", "Trainer", "build_trainer"]


class TRLTrainer:
    """Local LoRA training with TRL (CPU or CUDA; ``accelerate launch`` for several GPUs)."""

    def __init__(self, config: TrainerConfig, *, seed: int = 0) -> None:
        self.options = config.trl
        self.seed = seed

    def train_dpo(self, pairs_path: Path, start: ModelRef, output_dir: Path, config: DpoStageConfig) -> ModelRef:
        from octrain.trainers.trl_dpo import train_dpo

        return train_dpo(pairs_path, start, output_dir, config, self.options, seed=self.seed)


def build_trainer(config: TrainerConfig, *, seed: int = 0) -> Trainer:
    if config.backend is TrainerBackend.trl:
        return TRLTrainer(config, seed=seed)
    raise ConfigError(
        f"trainer.backend={config.backend.value}: this backend is not in this version of octrain yet; use trainer=trl"
    )
