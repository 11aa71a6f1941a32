"""Runs the studio starts in the background, and what a run directory says about its progress.

A run is launched as the command a user would type, ``python -m octrain +recipe=NAME ...
run_root=ROOT``, in a session of its own (``start_new_session``): it is not a child of the
browser tab, so closing the tab or reloading the page does not stop it, and a stop signal to its
process group reaches the stage workers it started too. Its pid, command and stages go to
``RUN_DIR/studio-job.json`` and its console (progress bars, the final ``octrain: error:`` line)
to ``RUN_DIR/studio-console.log``: a studio restarted later still finds and stops it.

Resuming is the same command again: the pipeline skips the stages whose ``done.json`` matches.
Everything here is bookkeeping; the run itself is the pipeline's, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from octrain.core.files import write_text_atomic
from octrain.core.layout import CONFIG_FILE, DONE_FILE, LOG_FILE, STARTED_FILE, STUDIO_CONSOLE_FILE, STUDIO_JOB_FILE

ERROR_PREFIX = "octrain: error:"

# Children started by this server process, by pid: polling them reaps a finished one, which
# would otherwise linger as a zombie that os.kill(pid, 0) still finds "alive".
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class JobError(RuntimeError):
    """A launch or stop that cannot be done (a run that is already going, one that is not)."""


@dataclass
class Job:
    """One launch of a run, as ``studio-job.json`` records it."""

    run_dir: str
    pid: int
    command: list[str]
    recipe: str
    overrides: list[str]
    stages: list[str]
    started: float
    cwd: str
    stop_requested: float | None = None
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunStatus:
    """What a run directory says now: the state, each stage's marker, timings and the last error."""

    state: str  # running | finished | failed | stopped | incomplete
    stages: list[tuple[str, str]]  # (stage, done | started | missing)
    elapsed: float | None  # seconds since launch (running) or the finished stages' own seconds
    error: str | None  # the run's ``octrain: error:`` line, when it printed one
    job: Job | None

    @property
    def done_count(self) -> int:
        return sum(1 for _, marker in self.stages if marker == "done")


def run_command(recipe: str, overrides: Sequence[str], run_root: Path) -> list[str]:
    """The command line that runs ``recipe`` into ``run_root``, as a user would type it."""
    return [sys.executable, "-m", "octrain", f"+recipe={recipe}", *overrides, f"run_root={run_root}"]


def read_job(run_dir: Path) -> Job | None:
    path = run_dir / STUDIO_JOB_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Job(**data)
    except (OSError, ValueError, TypeError):
        return None  # no launch from the studio (a run from the command line), or a damaged record


def _write_job(job: Job) -> None:
    write_text_atomic(Path(job.run_dir) / STUDIO_JOB_FILE, json.dumps(asdict(job), indent=2) + "\n")


def _alive(pid: int) -> tuple[bool, int | None]:
    """Whether ``pid`` still runs an octrain command, and its exit status when this process reaped it."""
    child = _CHILDREN.get(pid)
    if child is not None:
        code = child.poll()
        return code is None, code
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None
    # A pid from an earlier studio: make sure it is still that run and not a recycled number.
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"octrain" in cmdline.read_bytes(), None
        except OSError:
            return False, None
    return True, None


def launch(
    recipe: str,
    overrides: Sequence[str],
    *,
    run_dir: Path,
    run_root: Path,
    stages: Sequence[str],
    cwd: Path | None = None,
) -> Job:
    """Start the run in the background; refuses when this run directory already has a live launch."""
    previous = read_job(run_dir)
    if previous is not None and _alive(previous.pid)[0]:
        raise JobError(f"{run_dir} is already running (pid {previous.pid}); stop it first")
    command = run_command(recipe, overrides, run_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(cwd or Path.cwd())
    with open(run_dir / STUDIO_CONSOLE_FILE, "ab") as console:
        console.write(f"\n$ {' '.join(command)}\n".encode())
        console.flush()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: outlives the page, and stops as one
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _CHILDREN[process.pid] = process
    job = Job(
        run_dir=str(run_dir),
        pid=process.pid,
        command=command,
        recipe=recipe,
        overrides=list(overrides),
        stages=list(stages),
        started=time.time(),
        cwd=str(workdir),
    )
    _write_job(job)
    return job


HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"


def launch_of(run_dir: Path) -> tuple[str, list[str], Path] | None:
    """How to run ``run_dir`` again: its recipe, its other overrides and its run root.

    A studio launch recorded them; a run started from a shell has Hydra's own record of the
    command line (``.hydra/overrides.yaml``). None when neither is there.
    """
    job = read_job(run_dir)
    if job is not None:
        root = next((a.split("=", 1)[1] for a in reversed(job.command) if a.startswith("run_root=")), None)
        return job.recipe, list(job.overrides), Path(root) if root else run_dir.parent
    try:
        import yaml

        given = yaml.safe_load((run_dir / HYDRA_OVERRIDES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(given, list):
        return None
    recipe = next((str(a).split("=", 1)[1] for a in given if str(a).lstrip("+").startswith("recipe=")), None)
    if recipe is None:
        return None
    rest = [str(a) for a in given if not str(a).lstrip("+").startswith(("recipe=", "run_root="))]
    root = next((str(a).split("=", 1)[1] for a in given if str(a).startswith("run_root=")), None)
    return recipe, rest, Path(root) if root else run_dir.parent


def resume(run_dir: Path) -> Job:
    """Run the same command again: the pipeline skips what finished and continues the rest."""
    found = launch_of(run_dir)
    if found is None:
        raise JobError(f"{run_dir}: no record of the command that started it; run it again from a shell")
    recipe, overrides, run_root = found
    job = read_job(run_dir)
    stages = job.stages if job is not None else run_stages(run_dir, None)
    return launch(
        recipe, overrides, run_dir=run_dir, run_root=run_root, stages=stages, cwd=Path(job.cwd) if job else None
    )


def stop(run_dir: Path) -> Job:
    """SIGTERM to the run's process group (the run and its stage workers)."""
    job = read_job(run_dir)
    if job is None or not _alive(job.pid)[0]:
        raise JobError(f"{run_dir} is not running")
    with contextlib.suppress(ProcessLookupError):  # it ended between the check and the signal
        os.killpg(job.pid, signal.SIGTERM)
    job.stop_requested = time.time()
    _write_job(job)
    return job


def tail(path: Path, lines: int = 40, *, chunk: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a text file (read from its end: logs grow large).

    Progress bars redraw themselves with carriage returns: only the last drawing of each line is kept.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chunk))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    rows = [row.rstrip("\r").rsplit("\r", 1)[-1] for row in data.split("\n")]
    while rows and not rows[-1]:
        rows.pop()
    return rows[-lines:]


def run_stages(run_dir: Path, job: Job | None) -> list[str]:
    """The stages the run was asked for: its saved config's, else the launch's, else every stage."""
    from octrain.core.config import StageName

    if (run_dir / CONFIG_FILE).is_file():
        try:
            from octrain.core.layout import load_config

            return [stage.value for stage in load_config(run_dir / CONFIG_FILE).stages]
        except Exception:  # a config this version cannot read: show the markers that are there
            pass
    if job is not None and job.stages:
        return list(job.stages)
    return [stage.value for stage in StageName]


def stage_marker(stage_dir: Path) -> str:
    if (stage_dir / DONE_FILE).is_file():
        return "done"
    if (stage_dir / STARTED_FILE).is_file():
        return "started"
    return "missing"


def _stage_seconds(stage_dir: Path) -> float:
    try:
        return float(json.loads((stage_dir / DONE_FILE).read_text(encoding="utf-8")).get("seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def status(run_dir: Path) -> RunStatus:
    """The run's state, from its launch record, its stage markers and its console."""
    job = read_job(run_dir)
    stages = run_stages(run_dir, job)
    markers = [(stage, stage_marker(run_dir / stage)) for stage in stages]
    error = next(
        (line for line in reversed(tail(run_dir / STUDIO_CONSOLE_FILE, 200)) if line.startswith(ERROR_PREFIX)), None
    )
    running = False
    if job is not None:
        running, code = _alive(job.pid)
        if code is not None and job.returncode != code:
            job.returncode = code
            _write_job(job)  # remembered for a studio started later, which cannot reap it
    all_done = bool(markers) and all(marker == "done" for _, marker in markers)
    if running:
        state = "running"
    elif all_done:
        state = "finished"
    elif job is not None and job.stop_requested:
        state = "stopped"
    elif error is not None or (job is not None and job.returncode not in (None, 0)):
        state = "failed"
    else:
        state = "incomplete"
    if running and job is not None:
        elapsed: float | None = time.time() - job.started
    else:
        elapsed = sum(_stage_seconds(run_dir / stage) for stage, marker in markers if marker == "done") or None
    # An error printed by an earlier launch says nothing about a run that has since finished.
    return RunStatus(state, markers, elapsed, error if state in ("failed", "stopped") else None, job)


def list_runs(run_root: Path) -> list[Path]:
    """Run directories under the root, newest first: runs at ``ROOT/*`` and sweep jobs at ``ROOT/*/*``."""
    found = []
    for pattern in ("*", "*/*"):
        for path in run_root.glob(pattern):
            hidden = any(part.startswith(".") for part in path.relative_to(run_root).parts)  # Hydra's .hydra/
            if not hidden and path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / STUDIO_JOB_FILE).is_file()):
                found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def log_tail(run_dir: Path, lines: int = 40) -> list[str]:
    """The last lines of the run's own log (``octrain.log``)."""
    return tail(run_dir / LOG_FILE, lines)


def console_tail(run_dir: Path, lines: int = 20) -> list[str]:
    """The last lines the launched command printed (its progress bars and errors)."""
    return tail(run_dir / STUDIO_CONSOLE_FILE, lines)
