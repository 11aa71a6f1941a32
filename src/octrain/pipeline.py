"""Run the stages of a character-training run, in order, into one run directory.

``run(config, run_dir)`` is the whole pipeline as a function: the CLI calls it with the
directory Hydra chose, tests and notebooks with any directory. It validates the config and
the constitution before any model loads, writes the resolved config next to the outputs,
and skips every stage whose ``done.json`` marker matches the current settings, so an
interrupted run resumes by running the same command again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from octrain.config import OctrainConfig, StageName, validate
from octrain.constitution import Constitution, find_constitution, load_constitution
from octrain.context import RunContext
from octrain.errors import StageError
from octrain.jsonl import write_text_atomic
from octrain.paths import constitution_dirs

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
DONE_FILE = "done.json"
LOG_FILE = "octrain.log"
SUMMARY_FILE = "summary.txt"


@dataclass
class StageOutcome:
    stage: StageName
    status: str  # "ran" or "skipped"
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


def resolve_constitution(config: OctrainConfig) -> Constitution:
    """Find and validate the configured constitution (a name from constitutions/ or a path)."""
    return load_constitution(find_constitution(config.constitution, constitution_dirs()))


def save_config(config: OctrainConfig, path: Path) -> None:
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.structured(config)))


def load_config(path: str | Path) -> OctrainConfig:
    """Reload a resolved ``config.yaml`` (from a run directory) into the typed config."""
    merged = OmegaConf.merge(OmegaConf.structured(OctrainConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_done(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run(config: OctrainConfig, run_dir: str | Path) -> RunResult:
    """Run the configured stages into ``run_dir``; finished, unchanged stages are skipped.

    Raises:
        ConfigError, DataFormatError: bad settings or input files, before any model loads.
        StageError: a stage cannot run (for example its inputs are missing).
    """
    from octrain.stages import STAGES

    validate(config)
    constitution = resolve_constitution(config)
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    save_config(config, run_path / CONFIG_FILE)
    if constitution.source:
        source = Path(constitution.source)
        shutil.copyfile(source, run_path / f"constitution{source.suffix}")

    handler = logging.FileHandler(run_path / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("octrain")
    package_logger.addHandler(handler)
    try:
        ctx = RunContext(config=config, run_dir=run_path, constitution=constitution)
        logger.info(
            "run %s: constitution %s (%d traits), stages %s",
            run_path,
            constitution.name,
            len(constitution.traits),
            ", ".join(s.value for s in config.stages),
        )
        result = RunResult(run_path)
        fingerprints: dict[StageName, str] = {}
        for spec in STAGES.values():
            upstream = {need.value: fingerprints.get(need) for need in spec.needs}
            fingerprints[spec.name] = _digest({"stage": spec.fingerprint(ctx), "upstream": upstream})
            if spec.name not in config.stages:
                continue
            result.outcomes.append(_run_stage(ctx, spec, fingerprints))
        write_text_atomic(run_path / SUMMARY_FILE, result.summary_table() + "\n")
        return result
    finally:
        package_logger.removeHandler(handler)
        handler.close()


def _run_stage(ctx: RunContext, spec: Any, fingerprints: dict[StageName, str]) -> StageOutcome:
    stage_dir = ctx.stage_dir(spec.name)
    done_path = stage_dir / DONE_FILE
    for need in spec.needs:
        done = _read_done(ctx.stage_dir(need) / DONE_FILE)
        if done is None:
            raise StageError(
                f"stage {spec.name.value} needs the output of stage {need.value}, which has not run in "
                f"{ctx.run_dir}: add it to stages (stages=[{need.value},{spec.name.value}])"
            )
    done = _read_done(done_path)
    fingerprint = fingerprints[spec.name]
    if done is not None and spec.name not in ctx.config.force:
        if done.get("fingerprint") == fingerprint:
            logger.info("%s: complete, skipping (force=[%s] reruns it)", spec.name.value, spec.name.value)
            return StageOutcome(spec.name, "skipped", 0.0, done["summary"], spec.describe(done["summary"]))
        logger.info("%s: settings or inputs changed since it last ran: running it afresh", spec.name.value)
    stage_dir.mkdir(parents=True, exist_ok=True)
    done_path.unlink(missing_ok=True)  # no stale marker may outlive a rerun that fails
    logger.info("%s: running", spec.name.value)
    started = time.perf_counter()
    summary = spec.run(ctx)
    seconds = time.perf_counter() - started
    record = {"fingerprint": fingerprint, "seconds": round(seconds, 3), "summary": summary}
    write_text_atomic(done_path, json.dumps(record, indent=2) + "\n")
    logger.info("%s: done in %.1fs: %s", spec.name.value, seconds, spec.describe(summary))
    return StageOutcome(spec.name, "ran", seconds, summary, spec.describe(summary))
