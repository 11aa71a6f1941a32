"""Run one stage in a fresh process, so that the memory it used is gone before the next stage starts.

A process that trains and then starts a vLLM engine fails on a GPU: TRL's patched forward keeps
the trained model alive until a garbage collection, PyTorch keeps its CUDA cache, and vLLM does not
free its own memory inside a process either. With ``execution=worker`` (the default on CUDA, see
:func:`uses_workers`) the pipeline's parent process only orchestrates: it checks, fingerprints,
writes the markers and the summary, and starts each stage as

    python -m octrain.stage_worker RUN_DIR STAGE

The worker reads the resolved ``config.yaml`` of the run directory (no Hydra), runs the stage's
``run(ctx)``, writes its summary to ``STAGE/.worker-result.json`` and exits; the parent holds the
run's lock meanwhile. A worker that dies (an OOM kill, SIGKILL) gives the parent one line naming
the stage and the log, and the stage's committed chunks and checkpoints make the next run resume.
An error the worker can explain (an :class:`~octrain.errors.OctrainError`) travels back in the
result file and is raised by the parent as it is.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from octrain.config import Execution, OctrainConfig, StageName
from octrain.context import RunContext
from octrain.errors import OctrainError, StageError
from octrain.jsonl import write_text_atomic

logger = logging.getLogger(__name__)

RESULT_FILE = ".worker-result.json"


def uses_workers(config: OctrainConfig) -> bool:
    """``execution=auto``: workers on a CUDA machine (memory), in-process on the CPU (speed)."""
    if config.execution is Execution.auto:
        import torch

        return torch.cuda.is_available()
    return config.execution is Execution.worker


def run_in_worker(ctx: RunContext, stage: StageName, log_file: Path) -> dict[str, Any]:
    """Run ``stage`` in a child process and return its summary.

    Raises:
        StageError: the worker died or failed without an explanation (the message names the
            stage, how it ended and the log).
        OctrainError: the worker's own one-line error, re-raised here.
    """
    result_path = ctx.stage_dir(stage) / RESULT_FILE
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "octrain.stage_worker", str(ctx.run_dir), stage.value]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    logger.info("%s: running in a worker process (pid %d)", stage.value, process.pid)
    try:
        code = process.wait()
    except BaseException:
        process.kill()  # the parent is interrupted (Ctrl-C): the worker must not go on alone
        process.wait()
        raise
    result = _read_result(result_path)
    result_path.unlink(missing_ok=True)
    if code == 0 and result is not None and "summary" in result:
        return result["summary"]
    if result is not None and "error" in result:
        raise StageError(result["error"])
    # A worker killed mid-line (a progress bar half drawn) leaves the cursor there: end its line first.
    sys.stderr.write("\n")
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    raise StageError(
        f"stage {stage.value}: its worker process (pid {process.pid}) {how}, perhaps out of memory; see {log_file}. "
        "Run the same command again to resume"
    )


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def main(argv: list[str]) -> int:
    """The worker: ``RUN_DIR STAGE``; exit 0 with the summary written, 2 with the error written."""
    from octrain.pipeline import CONFIG_FILE, LOG_FILE, load_config, resolve_constitution
    from octrain.stages import stages_for

    run_dir, stage = Path(argv[0]), StageName(argv[1])
    result_path = run_dir / stage.value / RESULT_FILE
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("octrain")
    package_logger.addHandler(handler)
    try:
        config = load_config(run_dir / CONFIG_FILE)
        package_logger.setLevel(config.log_level.upper())
        ctx = RunContext(config=config, run_dir=run_dir, constitution=resolve_constitution(config))
        summary = stages_for(config)[stage].run(ctx)
    except OctrainError as exc:
        write_text_atomic(result_path, json.dumps({"error": str(exc)}) + "\n")
        return 2
    finally:
        package_logger.removeHandler(handler)
        handler.close()
    write_text_atomic(result_path, json.dumps({"summary": summary}) + "\n")
    return 0


if __name__ == "__main__":
    from octrain.telemetry import disable_telemetry

    disable_telemetry()
    sys.exit(main(sys.argv[1:]))
