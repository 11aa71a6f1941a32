"""Reusing a stage another run made: the one place that decides a stage is copied rather than made.

A generation stage named in ``reuse`` (the prompts and pairs by default) whose fingerprint matches
a finished stage of another run is copied from that run: a sweep over DPO settings samples its
pairs once. Other runs are looked for under ``run_root`` and beside the run directory (the jobs
of a sweep), at two fixed depths, by reading their ``done.json`` markers: a run writes nothing
outside its own directory to be found later. A sibling that is making the same stage right now is
waited for through a claim (:func:`octrain.run.stage_share.stage_claim`), and a copy counts only
when its source stayed the same finished stage while it was read
(:func:`octrain.run.stage_share.copy_finished_stage`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from octrain.core.config import OctrainConfig, StageName
from octrain.core.layout import DONE_FILE
from octrain.run.markers import read_done
from octrain.run.stage_share import copy_finished_stage, stage_claim
from octrain.stages.context import RunContext
from octrain.stages.table import StageSpec

logger = logging.getLogger(__name__)

# Where runs that can share a stage's output live, relative to a root: runs (``<root>/<run>``)
# and the jobs of a sweep (``<root>/<name>-sweep/<overrides>``). Two fixed depths keep the search a
# bounded glob, never a walk of the whole tree.
SIBLING_RUN_PATTERNS = ("*", "*/*")


def reuse_roots(config: OctrainConfig, run_dir: Path) -> list[Path]:
    """The directories under which other runs may have made a stage: run_root and the run's parent."""
    roots: list[Path] = []
    for root in (Path(config.run_root), run_dir.parent):
        resolved = root.resolve()
        if resolved.is_dir() and resolved not in roots:
            roots.append(resolved)
    return roots


def find_reusable(config: OctrainConfig, run_dir: Path, stage: StageName, fingerprint: str) -> Path | None:
    """The newest finished ``stage`` directory of another run with this fingerprint, or None.

    Read-only: it globs for ``done.json`` markers at the depths of ``SIBLING_RUN_PATTERNS`` and
    reads them.
    """
    own = (run_dir / stage.value).resolve()
    markers: dict[Path, float] = {}
    for root in reuse_roots(config, run_dir):
        for pattern in SIBLING_RUN_PATTERNS:
            for marker in root.glob(f"{pattern}/{stage.value}/{DONE_FILE}"):
                try:
                    markers.setdefault(marker.resolve(), marker.stat().st_mtime)
                except OSError:  # removed since the glob saw it
                    continue
    for marker in sorted(markers, key=markers.__getitem__, reverse=True):
        done = read_done(marker)
        if marker.parent != own and done is not None and done.get("fingerprint") == fingerprint:
            return marker.parent
    return None


def _copy_from_another_run(ctx: RunContext, spec: StageSpec, fingerprint: str) -> bool:
    """Copy a finished stage with the same fingerprint from another run; True if one was found."""
    source = find_reusable(ctx.config, ctx.run_dir, spec.name, fingerprint)
    if source is None:
        return False
    # The copy appears whole or not at all, and counts only if the source stayed the same finished
    # stage while it was read (a sibling may be clearing it to run it afresh).
    if not copy_finished_stage(source, ctx.stage_dir(spec.name), DONE_FILE):
        return False
    logger.info("%s: same settings and inputs as %s: reusing its output", spec.name.value, source)
    return True


@contextlib.contextmanager
def reused_or_claimed(ctx: RunContext, spec: StageSpec, fingerprint: str, *, forced: bool) -> Iterator[bool]:
    """True when the stage was copied from another run; else False, for the block to make it here.

    Only a stage named in ``reuse`` is copied, and never a forced one. While the block makes a
    shared stage, this run holds the claim on it, so that siblings needing the same stage wait
    for it rather than make it too.
    """
    shared = spec.name in ctx.config.reuse
    if not shared:
        yield False
        return
    if not forced and _copy_from_another_run(ctx, spec, fingerprint):
        yield True
        return
    # A sibling run (a job of the same sweep) may be making this very stage now: wait for it and copy
    # its output rather than sample it a second time. A forced stage is made here whatever the others
    # do: it only claims the stage if nobody holds it, so that they wait for it.
    with stage_claim(ctx.run_dir, spec.name.value, fingerprint, wait=not forced) as claim:
        # Looked for again under the claim: the sibling waited for (or one that ended just before the
        # claim was taken) has left a finished copy.
        if not forced and _copy_from_another_run(ctx, spec, fingerprint):
            yield True
            return
        if claim.waited_for is not None:
            logger.info("%s: %s left no finished output to reuse: making it here", spec.name.value, claim.waited_for)
        yield False
