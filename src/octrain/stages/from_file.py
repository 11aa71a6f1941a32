"""Stages ``pairs`` and ``introspect`` from a file: train on data the user already has.

With ``pairs.source=FILE`` the ``pairs`` stage samples nothing: it checks and imports the file
(:mod:`octrain.core.data_import`) into ``pairs/pairs.jsonl``, and ``dpo`` trains on it as on generated
pairs; ``introspect.source=FILE`` does the same for ``introspect/sft.jsonl`` and ``sft``. The
stage keeps its name, output files and place in the pipeline, so everything after it (training,
resuming, reuse between runs, force) works unchanged, and its report and done summary say where
the data came from: the file's path, its SHA-256, the format found and the counts.

Only the file's content shapes the imported output, so it is the stage's whole fingerprint: an
edited file imports afresh and trains afresh, a renamed or moved one does not. Preflight reads the
whole file, so a bad record stops the run before any model loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from octrain.core.config import OctrainConfig, StageName
from octrain.core.data_import import ImportReport, file_sha256, read_pairs, read_transcripts
from octrain.core.files import write_text_atomic
from octrain.core.layout import PAIRS_FILE, REPORT_FILE, SFT_FILE
from octrain.core.records import save_records
from octrain.stages.context import RunContext

logger = logging.getLogger(__name__)

# Bumped when the same file would import differently (a new id scheme, say): runs then import afresh.
IMPORTER_VERSION = 1
# Which stage a file replaces, and the training stage that reads that stage's output.
TRAINED_BY = {StageName.pairs: StageName.dpo, StageName.introspect: StageName.sft}


def imported_stages(config: OctrainConfig) -> dict[StageName, str]:
    """The stages whose output this run imports, with the file each comes from."""
    sources = {StageName.pairs: config.pairs.source, StageName.introspect: config.introspect.source}
    return {stage: source for stage, source in sources.items() if source}


def source_fingerprint(source: str) -> dict[str, Any]:
    """The fingerprint of an imported stage: the content of its file."""
    path = Path(source).expanduser()
    # The pipeline fingerprints every stage, also those a run does not select: a file that is not
    # there (yet) must not stop a run that does not import it. A run that does is stopped by preflight.
    sha256 = file_sha256(path) if path.is_file() else None
    return {"source_sha256": sha256, "importer": IMPORTER_VERSION}


def prepare_imports(config: OctrainConfig) -> None:
    """Preflight for imported stages: select them and read their files (their needs: ``stages_for``).

    Asking for ``stages=[dpo]`` with ``pairs.source`` set means "train DPO on this file": the import
    is the step before it, takes seconds and loads no model, so it is added to the stages (and the
    saved config says so) rather than stopping the run with "needs the output of stage pairs". The
    same holds for ``introspect.source`` and ``sft``.

    Raises:
        DataFormatError: naming the file, the line and the field of the first bad record.
    """
    imported = imported_stages(config)
    for stage, source in imported.items():
        trainer = TRAINED_BY[stage]
        if trainer in config.stages and stage not in config.stages:
            config.stages = sorted({*config.stages, stage}, key=list(StageName).index)
            logger.info(
                "%s.source=%s: importing it as stage %s before %s", stage.value, source, stage.value, trainer.value
            )
        if stage in config.stages:
            (read_pairs if stage is StageName.pairs else read_transcripts)(source)


def _write(ctx: RunContext, stage: StageName, name: str, records: list[Any], report: ImportReport) -> dict[str, Any]:
    out = ctx.stage_dir(stage)
    summary = report.to_json()
    save_records(out / name, records)
    write_text_atomic(out / REPORT_FILE, json.dumps(summary, indent=2) + "\n")
    logger.info(
        "%s: imported %d %s of %d records from %s (%s, sha256 %s)",
        stage.value,
        report.kept,
        report.kind,
        report.records,
        report.path,
        report.format,
        report.sha256[:12],
    )
    if report.duplicates:
        lines = ", ".join(f"{line} (= {first})" for line, first in report.duplicates[:5])
        logger.warning("%s: dropped %d duplicate records, lines %s", stage.value, len(report.duplicates), lines)
    # A file made for another persona trains that persona, whatever the run's constitution says.
    named = {name for name in summary.get("constitutions", {}) if name != "unknown"}
    if named and ctx.constitution.name not in named:
        logger.warning(
            "%s: the file's records name the constitution(s) %s, not this run's %r",
            stage.value,
            ", ".join(sorted(named)),
            ctx.constitution.name,
        )
    return {**summary, "files": [str(out / name), str(out / REPORT_FILE)]}


def import_pairs(ctx: RunContext) -> dict[str, Any]:
    """Stage ``pairs`` from ``pairs.source``: ``pairs/pairs.jsonl`` and ``pairs/report.json``."""
    assert ctx.config.pairs.source
    pairs, report = read_pairs(ctx.config.pairs.source)
    if report.details["identical_answers"]:
        logger.warning("pairs: %d pairs have the same chosen and rejected answer", report.details["identical_answers"])
    return _write(ctx, StageName.pairs, PAIRS_FILE, pairs, report)


def import_transcripts(ctx: RunContext) -> dict[str, Any]:
    """Stage ``introspect`` from ``introspect.source``: ``introspect/sft.jsonl`` and its report."""
    assert ctx.config.introspect.source
    transcripts, report = read_transcripts(ctx.config.introspect.source)
    return _write(ctx, StageName.introspect, SFT_FILE, transcripts, report)


def describe(summary: dict[str, Any]) -> str:
    """The summary line of an imported stage."""
    source = summary["source"]
    dropped = summary["duplicates"]["dropped"]
    return (
        f"imported {summary['kept']} {summary['kind']} from {Path(source['path']).name} "
        f"({source['format']}, {dropped} duplicate{'' if dropped == 1 else 's'} dropped)"
    )
