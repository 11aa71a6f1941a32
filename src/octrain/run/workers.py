"""Where the stages run: in the parent process, or in fresh worker processes that take their memory with them.

A process that trains and then starts a vLLM engine fails on a GPU: TRL's patched forward keeps
the trained model alive until a garbage collection, PyTorch keeps its CUDA cache, and vLLM does not
free its own memory inside a process either. With ``execution=worker`` (the default on CUDA, see
:func:`uses_workers`) the pipeline's parent process only orchestrates: it checks, fingerprints,
writes the markers and the summary, and hands each stage to a worker,

    python -m octrain.run.workers RUN_DIR

which reads the resolved ``config.yaml`` of the run directory (no Hydra), then runs the stages the
parent sends it one line at a time on its standard input, answering each on its standard output
once the stage's summary (or its error) is in ``STAGE/.worker-result.json``; its own prints go to
standard error. Consecutive stages that only sample share one worker, so an engine loaded by one
(the teacher writing the prompts) serves the next (the teacher answering them; see
:mod:`octrain.samplers.engine_pool`); a stage that trains gets a worker of its own, which ends
before the next stage starts. The parent holds the run's lock meanwhile. A worker that dies (an
OOM kill, SIGKILL) gives the parent one line naming the stage and the log, and the stage's committed
chunks and checkpoints make the next run resume. An error the worker can explain (an
:class:`~octrain.core.errors.OctrainError`) travels back in the result file and is raised by the parent
as it is. ``python -m octrain.run.workers RUN_DIR STAGE ...`` runs the named stages and exits.

In-process (``execution=inline``, the CPU default) the same rule holds through
:func:`octrain.samplers.release_engines`: engines stay loaded across stages that only sample and
are closed before a stage that trains.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Protocol

from octrain.core.config import Execution, OctrainConfig, StageName
from octrain.core.devices import gpu_usable
from octrain.core.errors import OctrainError, StageError
from octrain.core.files import write_text_atomic
from octrain.core.layout import CONFIG_FILE, LOG_FILE, WORKER_RESULT_FILE, load_config
from octrain.run.preflight import resolve_constitution
from octrain.run.ranks import environment_without_launch, is_main_process
from octrain.run.run_log import LOG_FORMAT
from octrain.run.training_launch import checked_accelerate_setup
from octrain.samplers import release_engines
from octrain.stages.context import RunContext
from octrain.stages.table import StageSpec, stages_for
from octrain.trainers.accelerate_configs import launch_command

logger = logging.getLogger(__name__)


def uses_workers(config: OctrainConfig) -> bool:
    """``execution=auto``: workers on a CUDA machine (memory), in-process on the CPU (speed)."""
    if config.execution is Execution.auto:
        return gpu_usable()  # from NVML: the parent that only orchestrates never initialises CUDA
    return config.execution is Execution.worker


class StageRunner(Protocol):
    """Runs stages for the pipeline, and lets their engines go when told."""

    def run(self, spec: StageSpec) -> dict[str, Any]:
        """The stage's own work; its summary."""
        ...

    def release(self) -> None:
        """Free what the stages run so far hold (engines, a worker process): a stage that trains comes."""
        ...


class InlineRunner:
    """Every stage in this process; :func:`~octrain.samplers.release_engines` frees the engines, and
    a model a stage trained here, whether or not an engine was loaded."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def run(self, spec: StageSpec) -> dict[str, Any]:
        return spec.run(self.ctx)

    def release(self) -> None:
        release_engines()


class WorkerRunner:
    """Stages in a worker process, the same one until :meth:`release` (see the module's docstring)."""

    def __init__(self, ctx: RunContext, log_file: Path) -> None:
        self.ctx = ctx
        self.log_file = log_file
        self._process: subprocess.Popen[str] | None = None
        self._ran: list[StageName] = []

    def run(self, spec: StageSpec) -> dict[str, Any]:
        stage = spec.name
        result_path = self.ctx.stage_dir(stage) / WORKER_RESULT_FILE
        result_path.unlink(missing_ok=True)
        process = self._process
        if process is None:
            command = [sys.executable, "-m", "octrain.run.workers", str(self.ctx.run_dir)]
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                # A worker is no rank of a launch this process may belong to: vLLM would take the
                # launcher's variables for its own process group.
                env={**environment_without_launch(), "PYTHONUNBUFFERED": "1"},
            )
            self._process, self._ran = process, []
            logger.info("%s: running in a worker process (pid %d)", stage.value, process.pid)
        else:
            before = ", ".join(s.value for s in self._ran)
            logger.info(
                "%s: running in a worker process (pid %d), the one that ran %s and keeps its engine",
                stage.value,
                process.pid,
                before,
            )
        assert process.stdin is not None and process.stdout is not None
        self._ran.append(stage)
        try:
            process.stdin.write(stage.value + "\n")
            process.stdin.flush()
            answer = process.stdout.readline()
        except BrokenPipeError:
            answer = ""
        except BaseException:
            self._kill()  # the parent is interrupted (Ctrl-C): the worker must not go on alone
            raise
        result = _read_result(result_path)
        result_path.unlink(missing_ok=True)
        if answer.strip() == f"{stage.value} ok" and result is not None and "summary" in result:
            return result["summary"]
        if answer and result is not None and "error" in result:
            raise StageError(result["error"])
        raise _died(stage, "its worker process", process.pid, self._kill(), self.log_file)

    def release(self) -> None:
        """End the worker: closing its input tells it to release its engines and exit."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        try:
            process.stdin.close()
            process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise

    def _kill(self) -> int:
        """Kill the worker (if it still runs) and return how it ended."""
        process, self._process = self._process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.kill()
        return process.wait()


class AccelerateRunner:
    """A training stage on ``trainer.num_processes`` processes: ``accelerate launch`` of a worker per rank.

    Every rank trains; rank 0 writes the adapter, the metrics and the result file
    (:func:`octrain.run.ranks.is_main_process`), and the launch ends when all ranks have.
    """

    def __init__(self, ctx: RunContext, log_file: Path) -> None:
        self.ctx = ctx
        self.log_file = log_file

    def run(self, spec: StageSpec) -> dict[str, Any]:
        stage, trainer = spec.name, self.ctx.config.trainer
        setup = checked_accelerate_setup(trainer)
        config_file = setup.path
        for note in setup.notes:
            logger.info("%s: %s", stage.value, note)
        command = launch_command(
            config_file,
            trainer.num_processes,
            ["octrain.run.workers", str(self.ctx.run_dir), stage.value],
            main_process_port=0,  # a free port: two launches on one machine must not race for 29500
        )
        result_path = self.ctx.stage_dir(stage) / WORKER_RESULT_FILE
        result_path.unlink(missing_ok=True)
        process = subprocess.Popen(command, env={**environment_without_launch(), "PYTHONUNBUFFERED": "1"})
        logger.info(
            "%s: training on %d processes (accelerate launch --config_file %s, pid %d)",
            stage.value,
            trainer.num_processes,
            config_file,
            process.pid,
        )
        try:
            code = process.wait()
        except BaseException:
            process.kill()  # Ctrl-C: the launcher ends its ranks when it goes
            process.wait()
            raise
        result = _read_result(result_path)
        result_path.unlink(missing_ok=True)
        if code == 0 and result is not None and "summary" in result:
            return result["summary"]
        if result is not None and "error" in result:
            raise StageError(result["error"])
        raise _died(stage, "accelerate launch", process.pid, code, self.log_file)

    def release(self) -> None:
        pass  # its processes are gone when run() returns


class SplitRunner:
    """Sampling stages on one runner, training stages on another."""

    def __init__(self, sampling: StageRunner, training: StageRunner) -> None:
        self.sampling, self.training = sampling, training

    def run(self, spec: StageSpec) -> dict[str, Any]:
        return (self.training if spec.trains else self.sampling).run(spec)

    def release(self) -> None:
        self.sampling.release()
        self.training.release()


def stage_runner(ctx: RunContext, log_file: Path, *, launched: bool = False) -> StageRunner:
    """The runner ``execution`` and ``trainer.num_processes`` ask for.

    ``launched``: this process is rank 0 of ``accelerate launch -m octrain``, whose training stages
    must run here, in the rank, with the others (:mod:`octrain.run.ranks`).
    """
    sampling: StageRunner = WorkerRunner(ctx, log_file) if uses_workers(ctx.config) else InlineRunner(ctx)
    if launched:
        return SplitRunner(sampling, InlineRunner(ctx))
    if ctx.config.trainer.num_processes > 1:
        return SplitRunner(sampling, AccelerateRunner(ctx, log_file))
    return sampling


def _died(stage: StageName, what: str, pid: int, code: int, log_file: Path) -> StageError:
    """The one line for a worker that ended without a result."""
    # A worker killed mid-line (a progress bar half drawn) leaves the cursor there: end its line first.
    sys.stderr.write("\n")
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    return StageError(
        f"stage {stage.value}: {what} (pid {pid}) {how}, perhaps out of memory; see {log_file}. "
        "Run the same command again to resume"
    )


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _run_one(ctx: RunContext, stage: StageName) -> bool:
    """Run one stage and write its result file; False when it failed with an explained error."""
    result_path = ctx.stage_dir(stage) / WORKER_RESULT_FILE
    writes = is_main_process()  # under accelerate launch, rank 0 alone answers for the stage
    try:
        summary = stages_for(ctx.config)[stage].run(ctx)
    except OctrainError as exc:
        if writes:
            write_text_atomic(result_path, json.dumps({"error": str(exc)}) + "\n")
        return False
    if writes:
        write_text_atomic(result_path, json.dumps({"summary": summary}) + "\n")
    return True


def main(argv: list[str]) -> int:
    """The worker: ``RUN_DIR [STAGE ...]``.

    With stages named, it runs them in order and exits (0, or 2 after a failed stage, its error
    written). Without, it serves the parent: a stage name per line on standard input, answered by
    ``STAGE ok`` or ``STAGE failed`` on standard output; it exits when its input closes.
    """
    run_dir, named = Path(argv[0]), [StageName(name) for name in argv[1:]]
    answers: IO[str] | None = None
    if not named:
        # The answers get standard output to themselves: anything else printed goes to standard error.
        answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # Only rank 0 of a launch writes the run's log; the other ranks' lines go to their standard error.
    handler: logging.Handler = (
        logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8") if is_main_process() else logging.NullHandler()
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package_logger = logging.getLogger("octrain")
    package_logger.addHandler(handler)
    try:
        config = load_config(run_dir / CONFIG_FILE)
        package_logger.setLevel(config.log_level.upper())
        ctx = RunContext(config=config, run_dir=run_dir, constitution=resolve_constitution(config))
        if named:
            return 0 if all(_run_one(ctx, stage) for stage in named) else 2
        assert answers is not None
        for line in sys.stdin:
            stage = StageName(line.strip())
            answers.write(f"{stage.value} {'ok' if _run_one(ctx, stage) else 'failed'}\n")
            answers.flush()
        return 0
    finally:
        release_engines()
        package_logger.removeHandler(handler)
        handler.close()


if __name__ == "__main__":
    from octrain.core.telemetry import disable_telemetry

    disable_telemetry()
    sys.exit(main(sys.argv[1:]))
