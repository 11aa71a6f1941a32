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
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from octrain.constitution import Constitution, find_constitution, load_constitution
from octrain.core.config import ModelRole, OctrainConfig, StageName, validate
from octrain.core.errors import ConfigError, StageError
from octrain.core.files import remove_stray_temporaries, write_text_atomic
from octrain.core.layout import CONFIG_FILE, DONE_FILE, LOG_FILE, RUN_SUMMARY_FILE, STARTED_FILE, save_config
from octrain.core.paths import constitution_dirs
from octrain.core.storage_errors import write_failures_reported
from octrain.run.lock import run_lock
from octrain.run.stage_share import copy_finished_stage, retire_directory, stage_claim
from octrain.run.workers import StageRunner, stage_runner
from octrain.stages.context import RunContext

if TYPE_CHECKING:
    from collections.abc import Callable

    from octrain.run.ranks import Launch
    from octrain.stages import StageSpec

logger = logging.getLogger(__name__)


@dataclass
class StageOutcome:
    stage: StageName
    status: str  # "ran", "skipped" (already complete) or "reused" (copied from another run)
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


def resolve_constitution_name(name: str) -> Constitution:
    """Find and validate a constitution given as a name from constitutions/ or a path."""
    return load_constitution(find_constitution(name, constitution_dirs()))


def resolve_constitution(config: OctrainConfig) -> Constitution:
    """Find and validate the configured constitution."""
    return resolve_constitution_name(config.constitution)


def preflight(config: OctrainConfig) -> None:
    """Check the backends and read every input file the selected stages need, so that a problem
    shows before any model loads."""
    from octrain.models.builtin import require_fetched
    from octrain.samplers import check_backend

    for role in ModelRole:  # a built-in that is not fetched stops here, naming the command that fetches it
        require_fetched(config.model(role).path)
    check_backend(config.sampler)
    _check_gpu(config)
    if config.sampler.data_parallel_size > 1:
        from octrain.samplers.sharded import plan_devices

        plan_devices(config.sampler)  # enough GPUs for every shard, said before any stage starts
    training = {StageName.dpo, StageName.sft} & set(config.stages)
    if training and config.trainer.backend.value not in ("trl", "tinker"):
        raise ConfigError(
            f"trainer.backend={config.trainer.backend.value}: this backend is not in this version of octrain yet; "
            "use trainer=trl or trainer=tinker"
        )
    from octrain.trainers.tinker_common import check_tinker_run

    check_tinker_run(config)  # Tinker's SDK, key, settings and served models; nothing when no stage uses Tinker
    generic = config.prompts.generic_source
    # A Hub dataset is fetched only when the stage runs: no download just to check it.
    if StageName.prompts in config.stages and config.scale.generic_prompts > 0 and not generic.startswith("hub:"):
        from octrain.stages.prompts import load_generic_pool

        load_generic_pool(generic)
    if StageName.introspect in config.stages:
        from octrain.stages.introspect import load_reflection_prompts

        load_reflection_prompts(config.introspect.reflection_prompts)
    if StageName.eval in config.stages:
        from octrain.evaluation.heldout import load_eval_prompts
        from octrain.evaluation.traits import load_traits

        load_eval_prompts(config.eval.prompts)
        load_traits(config.eval.traits)
        contrasts = [resolve_constitution_name(name).name for name in config.eval.classifier.contrast_personas]
        if contrasts:
            own = resolve_constitution(config).name
            if own in contrasts or len(set(contrasts)) < len(contrasts):
                raise ConfigError(
                    f"eval.classifier.contrast_personas: {contrasts} must name other personas than the run's own "
                    f"({own!r}), each once"
                )
    if training:
        from octrain.trainers.model_loading import check_training_settings

        check_training_settings(config)  # QLoRA's bitsandbytes, the attention kernel's package and device
        if config.trainer.num_processes > 1 and config.trainer.backend.value == "trl":
            from octrain.run.workers import DEFAULT_ACCELERATE_CONFIG
            from octrain.trainers.accelerate_configs import check_accelerate_config, find_accelerate_config
            from octrain.trainers.trl_common import gradient_checkpointing

            check_accelerate_config(
                find_accelerate_config(config.trainer.accelerate_config or DEFAULT_ACCELERATE_CONFIG),
                config.trainer.num_processes,
                gradient_checkpointing=gradient_checkpointing(config.trainer.trl)[0],
                load_in_4bit=config.trainer.trl.load_in_4bit,
            )
    if StageName.sft in config.stages:  # both trainers build their SFT mask with octrain.trainers.assistant_mask
        # Last, as the one check that reads more than a local file: the student's tokenizer (never
        # its weights). A template the loss mask cannot handle, or a tokenizer that cannot be loaded
        # (offline, gated), would otherwise stop the sft stage after DPO and introspection have run.
        from octrain.models.builtin import resolve_model_path
        from octrain.trainers.assistant_mask import check_chat_template

        student = config.student
        check_chat_template(
            resolve_model_path(student.path),
            model_name=f"student.path={student.path}",
            template_kwargs={"enable_thinking": student.enable_thinking},
        )
    from octrain.evaluation.judge_check import check_judge
    from octrain.stages.from_file import prepare_imports

    check_judge(config)
    prepare_imports(config)


def _check_gpu(config: OctrainConfig) -> None:
    """Say, before any model loads, when a CUDA build of torch will not use the GPU for this run.

    A driver too old for torch's CUDA build stops the run: the card is there, and the stages would
    otherwise train in fp32 on the CPU for hours (``CUDA_VISIBLE_DEVICES=`` runs on the CPU on
    purpose). A CUDA build on a machine without a GPU is a warning. Nothing is said for a run whose
    models all run elsewhere (Tinker, the fake sampler without a training stage).
    """
    from octrain.core.config import SamplerBackend, TrainerBackend
    from octrain.core.devices import gpu_problem

    trains_here = bool({StageName.dpo, StageName.sft} & set(config.stages)) and (
        config.trainer.backend is TrainerBackend.trl
    )
    if not trains_here and config.sampler.backend not in (SamplerBackend.hf, SamplerBackend.vllm):
        return
    problem = gpu_problem()  # NVML and torch.version.cuda: no CUDA context in this process
    if problem is None:
        return
    if problem.fatal:
        raise ConfigError(problem.message)
    logger.warning("%s", problem.message)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_marker(path: Path, *, finished: bool) -> tuple[dict[str, Any] | None, str | None]:
    """A stage marker and, when it is there but cannot be used, why not.

    ``(marker, None)`` for a good one, ``(None, None)`` for none, ``(None, reason)`` for one that
    does not parse or lacks its fields (``finished``: a ``done.json``, which must hold the summary).
    A marker is written atomically, so a bad one comes from outside octrain; it never stops a run.
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


def _read_done(path: Path) -> dict[str, Any] | None:
    """A usable ``done.json``, or None (missing or damaged: either way the stage is not finished)."""
    return _read_marker(path, finished=True)[0]


class _RunLogHandler(logging.FileHandler):
    """The run's log file. When it cannot be written (a full disk) it drops the line quietly: the
    logging module would print a traceback for each one, burying the single error line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _check_inputs(ctx: RunContext, specs: list[StageSpec], fingerprints: dict[StageName, str]) -> None:
    """Fail before any stage runs (or any output is cleared) when a stage needs what this run will
    not make and the run directory does not hold: a forced stage would otherwise lose its last good
    output and then stop on its missing input."""
    for spec in specs:
        for need in spec.needs:
            if need in ctx.config.stages:
                continue  # made (or found complete) earlier in this run
            done = _read_done(ctx.stage_dir(need) / DONE_FILE)
            if done is None or done.get("fingerprint") != fingerprints[need]:
                raise StageError(
                    f"stage {spec.name.value} needs the current output of stage {need.value}, which is missing or "
                    f"out of date in {ctx.run_dir}: add it to stages (stages=[{need.value},{spec.name.value}])"
                )


def run(config: OctrainConfig, run_dir: str | Path) -> RunResult:
    """Run the configured stages into ``run_dir``; finished, unchanged stages are skipped.

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
    from octrain.run.ranks import world_size
    from octrain.run.smoke import check_smoke_runs

    if world_size() > 1:
        return _run_launched(config, run_path, constitution)
    # Hours of GPU time at paper scale: prove the same models and settings end to end on tiny counts first.
    check_smoke_runs(config, run_path)
    # The lock is the first write into the run directory: a read-only one stops here, before any stage.
    with write_failures_reported(run_path), run_lock(run_path):
        return _run_locked(config, run_path, constitution)


def _run_launched(config: OctrainConfig, run_path: Path, constitution: Constitution) -> RunResult:
    """``run`` in one rank of ``accelerate launch -m octrain``: rank 0 runs the pipeline, the others
    join its training stages (see :mod:`octrain.run.ranks`)."""
    from octrain.run.ranks import follow, meet
    from octrain.run.smoke import check_smoke_runs
    from octrain.stages import stages_for

    if config.trainer.num_processes > 1:
        raise ConfigError(
            "trainer.num_processes: octrain was started by a launcher (accelerate launch, torchrun), which already "
            "made the training processes; drop trainer.num_processes, or run plain python -m octrain with it"
        )
    launch = meet(run_path, OmegaConf.to_yaml(OmegaConf.structured(config)))
    check_smoke_runs(config, run_path)  # each smoke run is a launch of its own, on every rank alike
    if not launch.main:
        ctx = RunContext(config=config, run_dir=run_path, constitution=constitution)
        training = [spec for spec in stages_for(config).values() if spec.trains and spec.name in config.stages]
        follow(launch, [(spec.name.value, lambda spec=spec: spec.run(ctx)) for spec in training])
        return RunResult(run_path)
    try:
        with write_failures_reported(run_path), run_lock(run_path):
            launch.forget_earlier_launches()  # under the lock: no other launch is working here now
            result = _run_locked(config, run_path, constitution, launch=launch)
    except BaseException as exc:
        launch.tell("end", "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    launch.tell("end", "end")
    return result


def _run_locked(
    config: OctrainConfig, run_path: Path, constitution: Constitution, *, launch: Launch | None = None
) -> RunResult:
    from octrain.stages import stages_for

    handler = _RunLogHandler(run_path / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("octrain")
    package_logger.addHandler(handler)
    try:
        # Left by a process killed while writing the config, the summary or a reused stage; the lock
        # says no other process is writing them now.
        for stray in remove_stray_temporaries(run_path):
            logger.info("removed %s, left by an interrupted run", stray)
        save_config(config, run_path / CONFIG_FILE)
        if constitution.source:
            source = Path(constitution.source)
            shutil.copyfile(source, run_path / f"constitution{source.suffix}")
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
        stages = stages_for(config)
        for spec in stages.values():
            upstream = {need.value: fingerprints.get(need) for need in spec.needs}
            fingerprints[spec.name] = _digest({"stage": spec.fingerprint(ctx), "upstream": upstream})
        selected = [spec for spec in stages.values() if spec.name in config.stages]
        _check_inputs(ctx, selected, fingerprints)
        # A stage that ran again (forced, say) may have new output: the stages after it run again too.
        upstream_ran = False
        runner = stage_runner(ctx, run_path / LOG_FILE, launched=launch is not None)
        try:
            for spec in selected:
                if spec.trains:
                    runner.release()  # the sampling engines go before training needs the memory
                # Under a launcher the other ranks train with this one: they start when told to.
                tell = _teller(launch, spec) if launch is not None and spec.trains else None
                outcome = _run_stage(ctx, spec, runner, fingerprints, upstream_ran=upstream_ran, tell=tell)
                if spec.trains:
                    runner.release()  # and the trained model goes before the next engine starts
                if spec.trains and outcome.status == "ran":
                    from octrain.use.registry import register_stage

                    register_stage(run_path, spec.name.value, Path(config.run_root))  # a warning if it cannot
                upstream_ran = upstream_ran or outcome.status == "ran"
                result.outcomes.append(outcome)
        finally:
            runner.release()
        write_text_atomic(run_path / RUN_SUMMARY_FILE, result.summary_table() + "\n")
        return result
    finally:
        package_logger.removeHandler(handler)
        handler.close()


def _teller(launch: Launch, spec: StageSpec) -> Callable[[str], None]:
    def tell(action: str) -> None:
        launch.tell(spec.name.value, action)

    return tell


# Where runs that can share a stage's output live, relative to a root: runs (``<root>/<run>``)
# and the jobs of a sweep (``<root>/<name>-sweep/<overrides>``). Two fixed depths keep the search a
# bounded glob, never a walk of the whole tree.
_SIBLING_RUN_PATTERNS = ("*", "*/*")


def _reuse_roots(config: OctrainConfig, run_dir: Path) -> list[Path]:
    """The directories under which other runs may have made a stage: run_root and the run's parent."""
    roots: list[Path] = []
    for root in (Path(config.run_root), run_dir.parent):
        resolved = root.resolve()
        if resolved.is_dir() and resolved not in roots:
            roots.append(resolved)
    return roots


def _find_reusable(config: OctrainConfig, run_dir: Path, stage: StageName, fingerprint: str) -> Path | None:
    """The newest finished ``stage`` directory of another run with this fingerprint, or None.

    Read-only: it globs for ``done.json`` markers at the depths of ``_SIBLING_RUN_PATTERNS`` and
    reads them, so a run writes nothing outside its own directory to be found later.
    """
    own = (run_dir / stage.value).resolve()
    markers: dict[Path, float] = {}
    for root in _reuse_roots(config, run_dir):
        for pattern in _SIBLING_RUN_PATTERNS:
            for marker in root.glob(f"{pattern}/{stage.value}/{DONE_FILE}"):
                try:
                    markers.setdefault(marker.resolve(), marker.stat().st_mtime)
                except OSError:  # removed since the glob saw it
                    continue
    for marker in sorted(markers, key=markers.__getitem__, reverse=True):
        done = _read_done(marker)
        if marker.parent != own and done is not None and done.get("fingerprint") == fingerprint:
            return marker.parent
    return None


def _reuse(ctx: RunContext, spec: StageSpec, fingerprint: str) -> bool:
    """Copy a finished stage with the same fingerprint from another run; True if one was found."""
    source = _find_reusable(ctx.config, ctx.run_dir, spec.name, fingerprint)
    if source is None:
        return False
    # The copy appears whole or not at all, and counts only if the source stayed the same finished
    # stage while it was read (a sibling may be clearing it to run it afresh).
    if not copy_finished_stage(source, ctx.stage_dir(spec.name), DONE_FILE):
        return False
    logger.info("%s: same settings and inputs as %s: reusing its output", spec.name.value, source)
    return True


def _run_stage(
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
    stage_dir = ctx.stage_dir(spec.name)
    done_path = stage_dir / DONE_FILE
    for need in spec.needs:
        done = _read_done(ctx.stage_dir(need) / DONE_FILE)
        if done is None or done.get("fingerprint") != fingerprints[need]:
            raise StageError(
                f"stage {spec.name.value} needs the current output of stage {need.value}, which is missing or "
                f"out of date in {ctx.run_dir}: add it to stages (stages=[{need.value},{spec.name.value}])"
            )
    fingerprint = fingerprints[spec.name]
    forced = spec.name in ctx.config.force or (upstream_ran and bool(spec.needs))
    done, damaged = _read_marker(done_path, finished=True)
    if damaged:
        logger.warning("%s: %s is %s: treating the stage as not finished", spec.name.value, done_path, damaged)
    if done is not None and not forced and done.get("fingerprint") == fingerprint:
        logger.info("%s: complete, skipping (force=[%s] reruns it)", spec.name.value, spec.name.value)
        return StageOutcome(spec.name, "skipped", 0.0, done["summary"], spec.describe(done["summary"]))
    shared = spec.name in ctx.config.reuse
    if not forced and shared and _reuse(ctx, spec, fingerprint):
        return _reused(spec, done_path)
    if not shared:
        return _make_stage(ctx, spec, runner, fingerprint, forced=forced, done=done, tell=tell)
    # A sibling run (a job of the same sweep) may be making this very stage now: wait for it and copy
    # its output rather than sample it a second time. A forced stage is made here whatever the others
    # do: it only claims the stage if nobody holds it, so that they wait for it.
    with stage_claim(ctx.run_dir, spec.name.value, fingerprint, wait=not forced) as claim:
        # Looked for again under the claim: the sibling waited for (or one that ended just before the
        # claim was taken) has left a finished copy.
        if not forced and _reuse(ctx, spec, fingerprint):
            return _reused(spec, done_path)
        if claim.waited_for is not None:
            logger.info("%s: %s left no finished output to reuse: making it here", spec.name.value, claim.waited_for)
        return _make_stage(ctx, spec, runner, fingerprint, forced=forced, done=done, tell=tell)


def _reused(spec: StageSpec, done_path: Path) -> StageOutcome:
    reused = _read_done(done_path) or {}
    return StageOutcome(spec.name, "reused", 0.0, reused["summary"], spec.describe(reused["summary"]))


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
    done_path = stage_dir / DONE_FILE
    started_path = stage_dir / STARTED_FILE
    started, unknown_start = _read_marker(started_path, finished=False)
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
        write_text_atomic(started_path, json.dumps({"fingerprint": fingerprint}) + "\n")
        logger.info("%s: running", spec.name.value)
        began = time.perf_counter()
        if tell is not None:
            tell("train")
        summary = runner.run(spec)  # here or in a worker process (``execution``)
        seconds = time.perf_counter() - began
        record = {"fingerprint": fingerprint, "seconds": round(seconds, 3), "summary": summary}
        write_text_atomic(done_path, json.dumps(record, indent=2) + "\n")
    logger.info("%s: done in %.1fs: %s", spec.name.value, seconds, spec.describe(summary))
    return StageOutcome(spec.name, "ran", seconds, summary, spec.describe(summary))
