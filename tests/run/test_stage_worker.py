"""Stages in fresh processes (``execution=worker``): a whole recipe, a sweep, and a worker killed mid-stage.

On a GPU each stage must end its process so that its memory is gone before the next stage's
engine starts; here the same path runs on the CPU, as real subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli

STAGES = ("prompts", "pairs", "dpo", "introspect", "sft", "eval")


# Slow lane (the whole recipe in worker processes, ~1 min); CI runs it after the default suite.
@pytest.mark.slow
def test_the_whole_recipe_runs_stage_by_stage_in_workers(tmp_path: Path) -> None:
    first = run_cli("+recipe=pirate_tiny", "execution=worker", f"run_root={tmp_path}", timeout=900)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "pirate_tiny"
    for stage in STAGES:
        assert f"  {stage:<11}ran" in first.stdout
        assert f"{stage}: running in a worker process (pid " in first.stderr
        assert (run_dir / stage / "done.json").is_file()
        assert not (run_dir / stage / ".worker-result.json").exists()
    assert (run_dir / "eval" / "report.md").is_file()
    # The workers log into the run's log too: the stages' own lines are there, not only the parent's.
    log = (run_dir / "octrain.log").read_text()
    assert "pairs: kept 56 of 56" in log
    # prompts and pairs only sample: one worker runs both, and its teacher engine answers the prompts
    # it wrote (the tiny teacher and student are the same weights: one engine for both sides).
    assert "pairs: running in a worker process (pid " in first.stderr
    assert ", the one that ran prompts and keeps its engine" in first.stderr
    starts = [
        line.split("engine start: ")[1].split(", ready in")[0] for line in log.splitlines() if "engine start: " in line
    ]
    dpo, trained = run_dir / "dpo" / "adapter", run_dir / "sft" / "adapter"
    assert starts == [
        "transformers builtin:tiny-qwen3",  # prompts, then pairs (teacher and student)
        f"transformers builtin:tiny-qwen3 + {dpo}",  # introspect: reflections and conversations
        "transformers builtin:tiny-qwen3",  # eval: the base model
        f"transformers builtin:tiny-qwen3 + {trained}",  # the trained model
        f"transformers builtin:tiny-qwen3 + {dpo}",  # DPO alone
        "transformers builtin:tiny-qwen3",  # the teacher: classifier data, controls, judging
    ]
    again = run_cli("+recipe=pirate_tiny", "execution=worker", f"run_root={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert "worker process" not in again.stderr  # finished stages are skipped by the parent alone


@pytest.mark.slow  # two sweep jobs in stage workers (30 s): the slow lane, which CI runs
def test_a_two_job_sweep_runs_in_workers(tmp_path: Path) -> None:
    args = ["-m", "+recipe=pirate_tiny", "execution=worker", "stages=[prompts,pairs,dpo]", "dpo.beta=0.1,0.2"]
    sweep = run_cli(*args, f"run_root={tmp_path}", timeout=900)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted((tmp_path / "pirate_tiny-sweep").glob("*/dpo/done.json"))
    assert len(jobs) == 2
    assert sweep.stderr.count("dpo: running in a worker process") == 2


def worker_pids(run_dir: Path) -> list[int]:
    """The pids of stage workers working on ``run_dir`` (read from /proc, as ps would)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"octrain.run.workers" in command and str(run_dir).encode() in command:
                pids.append(int(entry.name))
    return pids


def test_a_killed_worker_is_one_line_and_the_next_run_resumes(tmp_path: Path) -> None:
    args = [
        "+recipe=pirate_tiny",
        "execution=worker",
        "stages=[prompts,pairs]",
        "pairs.chunk_size=4",
        "prompts.expansion_rounds=0",
        f"run_root={tmp_path}",
    ]
    run_dir = tmp_path / "pirate_tiny"
    marker = run_dir / "pairs" / "student" / "chunk-00002.jsonl"
    parent = subprocess.Popen(
        [sys.executable, "-m", "octrain", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert parent.poll() is None, parent.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [worker] = worker_pids(run_dir)
    os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
    _, stderr = parent.communicate(timeout=patience(120))
    assert parent.returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("octrain: error:")]
    assert errors == [
        f"octrain: error: stage pairs: its worker process (pid {worker}) was killed by SIGKILL, perhaps out of memory; "
        f"see {run_dir / 'octrain.log'}. Run the same command again to resume"
    ]
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "pairs: resuming an interrupted run" in rerun.stderr and "chunks already committed" in rerun.stderr
