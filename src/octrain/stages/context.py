"""What a stage gets to work with: the typed config, the run directory, the constitution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from octrain.constitution import Constitution
from octrain.core.config import OctrainConfig, StageName


@dataclass(frozen=True)
class RunContext:
    config: OctrainConfig
    run_dir: Path
    constitution: Constitution

    def stage_dir(self, stage: StageName) -> Path:
        """``runs/<name>/<stage>/``: a stage's outputs, and its ``done.json`` marker once complete."""
        return self.run_dir / stage.value
