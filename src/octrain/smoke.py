"""Smoke runs before a run at paper scale: the full run starts only when they pass.

(Being written: see issue 10, item 5.)
"""

from __future__ import annotations

from pathlib import Path

from octrain.config import OctrainConfig


def check_smoke_runs(config: OctrainConfig, run_dir: Path) -> None:
    """Run the smoke runs ``config.smoke`` asks for before a scale=full or scale=paper run.

    Raises:
        StageError: a smoke run failed; the message names the smoke run, the stage and why.
    """
    del config, run_dir
