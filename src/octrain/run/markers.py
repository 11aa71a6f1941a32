"""A stage's markers and the fingerprint they carry: how a run knows what is finished, and with which settings.

Each stage directory holds ``started.json`` once its work began and ``done.json`` once it
finished (with its summary and duration). Both carry the stage's *fingerprint*: a digest of what
the stage makes its output from (its settings, and the fingerprints of the stages it reads), so
a finished stage whose fingerprint still matches is skipped, and one whose fingerprint changed
is made again. Settings at their defaults are left out of the digest, so that a setting a new
release adds does not remake finished stages (:mod:`octrain.core.settings_digest`). Markers are
written atomically, so a damaged one comes from outside octrain: it counts as "not finished" and
never stops a run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from octrain.core.config import StageName
from octrain.core.errors import StageError
from octrain.core.files import write_text_atomic
from octrain.core.layout import DONE_FILE, STARTED_FILE
from octrain.core.settings_digest import settings_digest
from octrain.stages.context import RunContext
from octrain.stages.table import StageSpec


def stage_fingerprints(ctx: RunContext, specs: Iterable[StageSpec]) -> dict[StageName, str]:
    """Every stage's fingerprint, ``specs`` in pipeline order (a stage's inputs come before it)."""
    fingerprints: dict[StageName, str] = {}
    for spec in specs:
        upstream = {need.value: fingerprints.get(need) for need in spec.needs}
        fingerprints[spec.name] = settings_digest({"stage": spec.fingerprint(ctx), "upstream": upstream})
    return fingerprints


def read_marker(path: Path, *, finished: bool) -> tuple[dict[str, Any] | None, str | None]:
    """A stage marker and, when it is there but cannot be used, why not.

    ``(marker, None)`` for a good one, ``(None, None)`` for none, ``(None, reason)`` for one that
    does not parse or lacks its fields (``finished``: a ``done.json``, which must hold the summary).
    """
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    if not isinstance(value.get("fingerprint"), str):
        return None, "without a fingerprint"
    if finished and not isinstance(value.get("summary"), dict):
        return None, "without a summary"
    return value, None


def read_done(path: Path) -> dict[str, Any] | None:
    """A usable ``done.json``, or None (missing or damaged: either way the stage is not finished)."""
    return read_marker(path, finished=True)[0]


def write_started(stage_dir: Path, fingerprint: str) -> None:
    """Mark the stage's work as begun with the settings ``fingerprint`` stands for."""
    write_text_atomic(stage_dir / STARTED_FILE, json.dumps({"fingerprint": fingerprint}) + "\n")


def write_done(stage_dir: Path, fingerprint: str, seconds: float, summary: dict[str, Any]) -> None:
    """Mark the stage as finished: its fingerprint, how long it took and its summary."""
    record = {"fingerprint": fingerprint, "seconds": round(seconds, 3), "summary": summary}
    write_text_atomic(stage_dir / DONE_FILE, json.dumps(record, indent=2) + "\n")


def require_current_input(
    ctx: RunContext, spec: StageSpec, need: StageName, fingerprints: dict[StageName, str]
) -> None:
    """Stop unless the run directory holds stage ``need`` finished with its current fingerprint.

    Raises:
        StageError: naming the missing (or out-of-date) stage and the ``stages=`` that makes it.
    """
    done = read_done(ctx.stage_dir(need) / DONE_FILE)
    if done is None or done.get("fingerprint") != fingerprints[need]:
        raise StageError(
            f"stage {spec.name.value} needs the current output of stage {need.value}, which is missing or "
            f"out of date in {ctx.run_dir}: add it to stages (stages=[{need.value},{spec.name.value}])"
        )


def check_inputs(ctx: RunContext, specs: list[StageSpec], fingerprints: dict[StageName, str]) -> None:
    """Fail before any stage runs (or any output is cleared) when a stage needs what this run will
    not make and the run directory does not hold: a forced stage would otherwise lose its last good
    output and then stop on its missing input."""
    for spec in specs:
        for need in spec.needs:
            if need not in ctx.config.stages:  # else made (or found complete) earlier in this run
                require_current_input(ctx, spec, need, fingerprints)
