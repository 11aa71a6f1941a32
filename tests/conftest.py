"""Shared fixtures: an isolated cache for the tiny model, and helpers for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def octrain_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every subprocess it starts) builds the tiny model into one fresh cache."""
    cache = Path(os.environ.get("OCTRAIN_TEST_CACHE_DIR") or tmp_path_factory.mktemp("octrain-cache"))
    os.environ["OCTRAIN_CACHE_DIR"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


@pytest.fixture(scope="session")
def tiny_model_path(octrain_cache: Path) -> str:
    from octrain.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model())


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m octrain ARGS`` as a user would run it, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "octrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
