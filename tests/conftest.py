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


# The smallest run that still trains both stages (no prompt expansion, no eval): a real finished run
# with a registry, for the tests of what users do with a trained model (registry, sample, chat, export).
TINY_TRAINED_RUN = (
    "+recipe=pirate_tiny",
    "prompts.expansion_rounds=0",
    "scale.prompts_per_trait=1",
    "scale.reflections=8",
    "scale.interactions=2",
    "stages=[prompts,pairs,dpo,introspect,sft]",
)


@pytest.fixture(scope="session")
def trained_tiny_root(tmp_path_factory: pytest.TempPathFactory, octrain_cache: Path) -> Path:
    """A run root holding one finished tiny run, ``pirate_tiny``, trained through sft and registered.

    Trained once per test session (about 15 s); a test that changes files works on a copy.
    """
    root = tmp_path_factory.mktemp("trained-runs")
    result = run_cli(*TINY_TRAINED_RUN, f"run_root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "pirate_tiny" / "sft" / "done.json").is_file()
    return root


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


def kill_when_exists(command: list[str], path: Path, timeout: float = 180) -> None:
    """Start ``command`` and SIGKILL it as soon as ``path`` exists (a real crash, mid-work).

    Fails if the command ends on its own first or ``path`` never appears.
    """
    import signal
    import time

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not path.exists():
            assert process.poll() is None, f"{command} ended before {path} appeared"
            assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
