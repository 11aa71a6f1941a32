"""Run the stages of a character-training run, in order, into one run directory.

``run(config, run_dir)`` is the whole pipeline as a function: the CLI calls it with the
directory Hydra chose, tests and notebooks with any directory. It validates the config and
the constitution before any model loads, writes the resolved config next to the outputs,
and skips every stage whose ``done.json`` marker matches the current settings, so an
interrupted run resumes by running the same command again.

Whatever a crash leaves must not stop that rerun: a marker that does not parse counts as "not
finished", the temporaries of a killed writer are deleted, and the run holds a lock on its
directory (:mod:`octrain.run.lock`) so that no second process works there at the same time. A full
disk or a read-only place stops the run with one line naming the path
(:mod:`octrain.core.storage_errors`), and the next run resumes once it is fixed.

The steps live in the modules of this room, each named in :func:`run` and :func:`_run_locked`:
:mod:`~octrain.run.preflight` (checks), :mod:`~octrain.run.smoke` (smoke runs),
:mod:`~octrain.run.ranks` (under ``accelerate launch``), :mod:`~octrain.run.lock`,
:mod:`~octrain.run.run_log`, :mod:`~octrain.run.markers` (fingerprints, started and done),
:mod:`~octrain.run.stage_step` (skip, reuse or make one stage), :mod:`~octrain.run.reuse`
(copying a stage from another run) and :mod:`~octrain.run.workers` (where a stage runs).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import OmegaConf

from octrain.constitution import Constitution
from octrain.core.config import OctrainConfig, StageName, validate
from octrain.core.errors import ConfigError
from octrain.core.files import remove_stray_temporaries, write_text_atomic
from octrain.core.layout import CONFIG_FILE, LOG_FILE, RUN_SUMMARY_FILE, save_config
from octrain.core.storage_errors import write_failures_reported
from octrain.run.lock import run_lock
from octrain.run.markers import check_inputs, stage_fingerprints
from octrain.run.preflight import preflight, resolve_constitution, resolve_constitution_name
from octrain.run.ranks import Launch, follow, meet, world_size
from octrain.run.result import RunResult, StageOutcome
from octrain.run.run_log import run_log
from octrain.run.smoke import check_smoke_runs
from octrain.run.stage_step import run_stage
from octrain.run.workers import stage_runner
from octrain.stages.context import RunContext
from octrain.stages.table import StageSpec, stages_for
from octrain.use.registry import register_stage

# Imported from here by the front ends, the tests and the benchmarks.
__all__ = ["RunResult", "StageOutcome", "preflight", "resolve_constitution", "resolve_constitution_name", "run"]

logger = logging.getLogger(__name__)


def run(config: OctrainConfig, run_dir: str | Path, *, records: Mapping[str, str] | None = None) -> RunResult:
    """Run the configured stages into ``run_dir``; finished, unchanged stages are skipped.

    ``records`` are files that say how the run was started (a path relative to ``run_dir``, and
    its text): the command line's ``.hydra/`` files. They are written once the run holds its
    lock, beside the resolved config, so that a second process refused by the lock leaves the
    first one's record as it was.

    Raises:
        ConfigError, DataFormatError: bad settings or input files, before any model loads.
        StageError: a stage cannot run (for example its inputs are missing), or another process
            holds the run directory.
        StorageError: the run directory cannot be written, or the disk filled up.
    """
    validate(config)
    constitution = resolve_constitution(config)
    preflight(config)
    run_path = Path(run_dir)
    if world_size() > 1:
        return _run_launched(config, run_path, constitution, records or {})
    # Hours of GPU time at paper scale: prove the same models and settings end to end on tiny counts first.
    check_smoke_runs(config, run_path, constitution, run_pipeline=run)
    # The lock is the first write into the run directory: a read-only one stops here, before any stage.
    with write_failures_reported(run_path), run_lock(run_path):
        return _run_locked(config, run_path, constitution, records or {})


def _run_launched(
    config: OctrainConfig, run_path: Path, constitution: Constitution, records: Mapping[str, str]
) -> RunResult:
    """``run`` in one rank of ``accelerate launch -m octrain``: rank 0 runs the pipeline, the others
    join its training stages (see :mod:`octrain.run.ranks`)."""
    if config.trainer.num_processes > 1:
        raise ConfigError(
            "trainer.num_processes: octrain was started by a launcher (accelerate launch, torchrun), which already "
            "made the training processes; drop trainer.num_processes, or run plain python -m octrain with it"
        )
    launch = meet(run_path, OmegaConf.to_yaml(OmegaConf.structured(config)))
    # Each smoke run is a launch of its own, on every rank alike.
    check_smoke_runs(config, run_path, constitution, run_pipeline=run)
    if not launch.main:
        ctx = RunContext(config=config, run_dir=run_path, constitution=constitution)
        training = [spec for spec in stages_for(config).values() if spec.trains and spec.name in config.stages]
        follow(launch, [(spec.name.value, lambda spec=spec: spec.run(ctx)) for spec in training])
        return RunResult(run_path)
    try:
        with write_failures_reported(run_path), run_lock(run_path):
            launch.forget_earlier_launches()  # under the lock: no other launch is working here now
            result = _run_locked(config, run_path, constitution, records, launch=launch)
    except BaseException as exc:
        launch.tell("end", "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    launch.tell("end", "end")
    return result


def _run_locked(
    config: OctrainConfig,
    run_path: Path,
    constitution: Constitution,
    records: Mapping[str, str],
    *,
    launch: Launch | None = None,
) -> RunResult:
    """The run, holding its directory's lock: record its settings, then run, skip or reuse each stage."""
    with run_log(run_path / LOG_FILE):
        _record_settings(config, run_path, constitution, records)
        ctx = RunContext(config=config, run_dir=run_path, constitution=constitution)
        logger.info(
            "run %s: constitution %s (%d traits), stages %s",
            run_path,
            constitution.name,
            len(constitution.traits),
            ", ".join(s.value for s in config.stages),
        )
        stages = stages_for(config)
        fingerprints = stage_fingerprints(ctx, stages.values())
        selected = [spec for spec in stages.values() if spec.name in config.stages]
        check_inputs(ctx, selected, fingerprints)
        result = RunResult(run_path)
        result.outcomes = _run_stages(ctx, selected, fingerprints, launch)
        write_text_atomic(run_path / RUN_SUMMARY_FILE, result.summary_table() + "\n")
        return result


def _record_settings(
    config: OctrainConfig, run_path: Path, constitution: Constitution, records: Mapping[str, str]
) -> None:
    """Write the resolved config, the records of the command line and a copy of the constitution
    beside the outputs."""
    # Left by a process killed while writing the config, the summary or a reused stage; the lock
    # says no other process is writing them now.
    for stray in remove_stray_temporaries(run_path):
        logger.info("removed %s, left by an interrupted run", stray)
    save_config(config, run_path / CONFIG_FILE)
    for relative, text in records.items():
        record = run_path / relative
        record.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record, text)
    if constitution.source:
        source = Path(constitution.source)
        shutil.copyfile(source, run_path / f"constitution{source.suffix}")


def _run_stages(
    ctx: RunContext, selected: list[StageSpec], fingerprints: dict[StageName, str], launch: Launch | None
) -> list[StageOutcome]:
    """Each selected stage in order, through the runner ``execution`` asks for; what each did."""
    outcomes: list[StageOutcome] = []
    # A stage that ran again (forced, say) may have new output: the stages after it run again too.
    upstream_ran = False
    runner = stage_runner(ctx, ctx.run_dir / LOG_FILE, launched=launch is not None)
    try:
        for spec in selected:
            if spec.trains:
                runner.release()  # the sampling engines go before training needs the memory
            # Under a launcher the other ranks train with this one: they start when told to.
            tell = _teller(launch, spec) if launch is not None and spec.trains else None
            outcome = run_stage(ctx, spec, runner, fingerprints, upstream_ran=upstream_ran, tell=tell)
            if spec.trains:
                runner.release()  # and the trained model goes before the next engine starts
            if spec.trains and outcome.status == "ran":
                # A warning if it cannot: the model is on disk whatever the registry says.
                register_stage(ctx.run_dir, spec.name.value, Path(ctx.config.run_root))
            upstream_ran = upstream_ran or outcome.status == "ran"
            outcomes.append(outcome)
    finally:
        runner.release()
    return outcomes


def _teller(launch: Launch, spec: StageSpec) -> Callable[[str], None]:
    def tell(action: str) -> None:
        launch.tell(spec.name.value, action)

    return tell
