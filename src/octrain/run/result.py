"""What a run did: each stage's outcome (ran, skipped or reused), and the table the run ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octrain.core.config import StageName


@dataclass
class StageOutcome:
    stage: StageName
    status: str  # "ran", "skipped" (already complete) or "reused" (copied from another run)
    seconds: float
    summary: dict[str, Any]
    description: str


@dataclass
class RunResult:
    run_dir: Path
    outcomes: list[StageOutcome] = field(default_factory=list)

    def summary_table(self) -> str:
        """A one-screen account of the run: each stage, what it did, how long, where the files are."""
        lines = [f"octrain run: {self.run_dir}", f"  {'stage':<11}{'status':<9}{'time':>9}  result"]
        for o in self.outcomes:
            lines.append(f"  {o.stage.value:<11}{o.status:<9}{o.seconds:>8.1f}s  {o.description}")
        files = [f for o in self.outcomes for f in o.summary.get("files", [])]
        if files:
            lines.append("  files:")
            lines.extend(f"    {f}" for f in files)
        return "\n".join(lines)
