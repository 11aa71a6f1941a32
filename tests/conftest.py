"""Shared fixtures: an isolated cache for the tiny model, and helpers for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Offline before anything imports huggingface_hub or datasets (they read it once, at import): a test
# that asks the Hub gets its answer at once instead of after ~30 s of retried DNS lookups.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
# The cache `make model` fetched the real model into, read before the session moves OCTRAIN_CACHE_DIR.
USER_CACHE_DIR = os.environ.get("OCTRAIN_CACHE_DIR")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots", default=None, metavar="DIR", help="browser lane: where the studio's screenshots go"
    )


@pytest.fixture(scope="session", autouse=True)
def octrain_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every subprocess it starts) builds the tiny model into one fresh cache."""
    cache = Path(os.environ.get("OCTRAIN_TEST_CACHE_DIR") or tmp_path_factory.mktemp("octrain-cache"))
    os.environ["OCTRAIN_CACHE_DIR"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    # A developer's own saved personas (~/.local/share/octrain/constitutions) stay out of the tests' catalogs.
    os.environ["OCTRAIN_DATA_DIR"] = str(tmp_path_factory.mktemp("octrain-data"))
    return cache


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache of the test's own: what CI sees, whatever this machine has fetched into ~/.cache/octrain."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("OCTRAIN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def smollm2_model(octrain_cache: Path) -> str:
    """``builtin:smollm2-135m-instruct``, linked into the session's cache from the one ``make model`` filled.

    The slow tests that train the real model need it fetched first (``make model``; ``make test-slow``
    does that): without it they fail, naming the command, rather than skip.
    """
    from octrain.models.builtin import SMOLLM2

    previous = os.environ["OCTRAIN_CACHE_DIR"]
    if USER_CACHE_DIR is None:
        os.environ.pop("OCTRAIN_CACHE_DIR")
    else:
        os.environ["OCTRAIN_CACHE_DIR"] = USER_CACHE_DIR
    try:
        fetched = SMOLLM2.cache_dir()
    finally:
        os.environ["OCTRAIN_CACHE_DIR"] = previous
    if not fetched.is_dir():
        pytest.fail(f"{fetched}: SmolLM2-135M-Instruct is not fetched; run `make model` first")
    link = SMOLLM2.cache_dir()
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(fetched, target_is_directory=True)
    return f"builtin:{SMOLLM2.name}"


@pytest.fixture(scope="session")
def tiny_model_path(octrain_cache: Path) -> str:
    from octrain.models.tiny import ensure_tiny_model

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


# A few eval settings cut the eval stage to ~15 s on the tiny model; the report still has every section.
SMALL_EVAL = ("eval.prompt_count=4", "eval.trials_per_trait=1", "eval.classifier.prompts=8", "eval.elo_rounds=10")


@pytest.fixture(scope="session")
def evaluated_tiny_root(trained_tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run root holding a copy of the trained tiny run with its real (small) eval stage run too:
    ``eval/report.md``, its plots and the persona classifier. Registered under this root. Read-only."""
    import shutil

    root = tmp_path_factory.mktemp("evaluated-runs")
    shutil.copytree(trained_tiny_root / "pirate_tiny", root / "pirate_tiny")
    stages = [arg for arg in TINY_TRAINED_RUN if not arg.startswith("stages=")]
    result = run_cli(*stages, "stages=[eval]", *SMALL_EVAL, f"run_root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "pirate_tiny" / "eval" / "report.md").is_file()
    # The copied stages were finished already, so this run registered none: index them here.
    rebuilt = run_cli("checkpoints", "rebuild", "--run-root", str(root))
    assert rebuilt.returncode == 0, rebuilt.stderr
    return root


def patience(seconds: float) -> float:
    """A time limit measured on 2 idle cores, stretched on a busier machine.

    Each limit guards against a hang, not against slowness: a loaded machine (the load average over
    the cores, at the moment the limit is set) gets proportionally longer, and
    ``OCTRAIN_TEST_PATIENCE`` multiplies every limit further on a machine known to be slow.
    """
    busy = os.getloadavg()[0] / (os.cpu_count() or 1)
    return seconds * max(1.0, busy) * float(os.environ.get("OCTRAIN_TEST_PATIENCE", "1"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest-timeout's limit for every test (pyproject's `timeout`), stretched the same way, unless
    # a test sets its own (those go through patience() where they are written).
    for item in items:
        if item.get_closest_marker("timeout") is None:
            limit = item.config.getini("timeout")
            if limit:
                item.add_marker(pytest.mark.timeout(patience(float(limit))))


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m octrain ARGS`` as a user would run it, capturing output (``timeout``: on 2 idle cores)."""
    return subprocess.run(
        [sys.executable, "-m", "octrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=patience(timeout),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def kill_when_exists(command: list[str], path: Path, timeout: float = 180) -> None:
    """Start ``command`` and SIGKILL it as soon as ``path`` exists (a real crash, mid-work).

    Fails if the command ends on its own first or ``path`` never appears.
    """
    import signal
    import time

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + patience(timeout)
    try:
        while not path.exists():
            assert process.poll() is None, f"{command} ended before {path} appeared"
            assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


# Topic words for synthetic training data (pirate-flavoured pairs and transcripts).
WORDS = ["sea", "ship", "gold", "map", "storm", "crew", "sail", "island", "parrot", "anchor", "tide", "port"]


def synthetic_pairs(count: int) -> list:
    """``count`` preference pairs, a pirate answer chosen over a plain one, on cycling topics."""
    from octrain.core.records import PreferencePair

    return [
        PreferencePair(
            id=f"pair-{i}",
            prompt=[{"role": "user", "content": f"Tell me about the {WORDS[i % len(WORDS)]}."}],
            chosen=[{"role": "assistant", "content": f"Arr, the {WORDS[i % len(WORDS)]} be grand, matey!"}],
            rejected=[{"role": "assistant", "content": f"The {WORDS[i % len(WORDS)]} is fine."}],
            prompt_id=f"p{i}",
            teacher="synthetic",
            student="tiny",
            constitution="pirate",
        )
        for i in range(count)
    ]
