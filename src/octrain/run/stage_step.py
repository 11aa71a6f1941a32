"""One stage of a run: skip it when it is finished, reuse it from another run, or make it here.

A stage is skipped when its ``done.json`` carries the current fingerprint
(:mod:`octrain.run.markers`) and nothing forces it; it is copied from another run when
:func:`octrain.run.reuse.reused_or_claimed` finds one; otherwise it is made here, resuming its
own partial work when that was begun with the same settings, and starting afresh when not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from octrain.core.config import StageName
from octrain.core.files import remove_stray_temporaries
from octrain.core.layout import DONE_FILE, STARTED_FILE
from octrain.core.storage_errors import write_failures_reported
from octrain.run.markers import read_done, read_marker, require_current_input, write_done, write_started
from octrain.run.result import StageOutcome
from octrain.run.reuse import reused_or_claimed
from octrain.run.stage_share import retire_directory
from octrain.run.workers import StageRunner
from octrain.stages.context import RunContext
from octrain.stages.table import StageSpec

logger = logging.getLogger(__name__)


def run_stage(
    ctx: RunContext,
    spec: StageSpec,
    runner: StageRunner,
    fingerprints: dict[StageName, str],
    *,
    upstream_ran: bool,
    tell: Callable[[str], None] | None = None,
) -> StageOutcome:
    """Run, skip or reuse one stage. ``tell`` (under a launcher, for a training stage) hears "train"
    just before the stage's work starts, and "skip" when it does not run."""
    outcome = _run_or_skip_stage(ctx, spec, runner, fingerprints, upstream_ran=upstream_ran, tell=tell)
    if tell is not None and outcome.status != "ran":
        tell("skip")
    return outcome


def _run_or_skip_stage(
    ctx: RunContext,
    spec: StageSpec,
    runner: StageRunner,
    fingerprints: dict[StageName, str],
    *,
    upstream_ran: bool,
    tell: Callable[[str], None] | None,
) -> StageOutcome:
    done_path = ctx.stage_dir(spec.name) / DONE_FILE
    for need in spec.needs:
        require_current_input(ctx, spec, need, fingerprints)
    fingerprint = fingerprints[spec.name]
    # A stage after one that ran again (forced, say) may have new input: it runs again too.
    forced = spec.name in ctx.config.force or (upstream_ran and bool(spec.needs))
    done, damaged = read_marker(done_path, finished=True)
    if damaged:
        logger.warning("%s: %s is %s: treating the stage as not finished", spec.name.value, done_path, damaged)
    if done is not None and not forced and done.get("fingerprint") == fingerprint:
        logger.info("%s: complete, skipping (force=[%s] reruns it)", spec.name.value, spec.name.value)
        return StageOutcome(spec.name, "skipped", 0.0, done["summary"], spec.describe(done["summary"]))
    with reused_or_claimed(ctx, spec, fingerprint, forced=forced) as reused:
        if reused:
            copied = read_done(done_path) or {}
            return StageOutcome(spec.name, "reused", 0.0, copied["summary"], spec.describe(copied["summary"]))
        return _make_stage(ctx, spec, runner, fingerprint, forced=forced, done=done, tell=tell)


def _make_stage(
    ctx: RunContext,
    spec: StageSpec,
    runner: StageRunner,
    fingerprint: str,
    *,
    forced: bool,
    done: dict[str, Any] | None,
    tell: Callable[[str], None] | None,
) -> StageOutcome:
    """Run the stage here, resuming its own partial work when that was made with the same settings."""
    stage_dir = ctx.stage_dir(spec.name)
    started_path = stage_dir / STARTED_FILE
    started, unknown_start = read_marker(started_path, finished=False)
    if (
        forced
        or unknown_start
        or (started is not None and started.get("fingerprint") != fingerprint)
        or (done is not None and done.get("fingerprint") != fingerprint)
    ):
        # Partial work made with other settings (or settings no marker tells) must not mix with new
        # work: start this stage afresh.
        if stage_dir.exists():
            if forced:
                reason = "rerun"
            elif unknown_start:
                reason = f"{started_path} is {unknown_start}, so its partial work cannot be trusted"
            else:
                reason = "its settings or inputs changed since it last ran"
            logger.info("%s: %s: clearing %s and running it afresh", spec.name.value, reason, stage_dir)
            retire_directory(stage_dir)  # in one rename: a run copying it meanwhile sees it whole or gone
    elif started is not None:
        logger.info("%s: resuming an interrupted run", spec.name.value)
        # A kill between writing a temporary and renaming it leaves the temporary; the run lock is held.
        for stray in remove_stray_temporaries(stage_dir, recursive=True):
            logger.info("%s: removed %s, left by the interrupted run", spec.name.value, stray)
    with write_failures_reported(stage_dir):  # a full disk names the stage's directory when torch does not
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_started(stage_dir, fingerprint)
        logger.info("%s: running", spec.name.value)
        began = time.perf_counter()
        if tell is not None:
            tell("train")
        summary = runner.run(spec)  # here or in a worker process (``execution``)
        seconds = time.perf_counter() - began
        write_done(stage_dir, fingerprint, seconds, summary)
    logger.info("%s: done in %.1fs: %s", spec.name.value, seconds, spec.describe(summary))
    return StageOutcome(spec.name, "ran", seconds, summary, spec.describe(summary))
