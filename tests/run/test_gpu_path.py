"""The GPU path's process rules, shown on the CPU in a fake GPU world (``tests/gpu_world``).

Issue 24: vLLM forks its engine core unless told otherwise, and a child forked after ``cuInit``
cannot use CUDA; a parent that only orchestrates must not hold a CUDA context on GPU 0; an engine
that is done must be shut down, not left to the garbage collector. The runs below are real octrain
runs (real stages, real stage workers, real DPO on the tiny model) in processes that record every
CUDA-initialising ``torch.cuda`` call and every vLLM engine start and shutdown. What is faked is
what a CPU machine lacks and octrain does not own: vLLM's offline API, NVML reporting a card, and
``torch.cuda.is_available()`` answering True in the one process that pretends to have a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO, patience

WORLD = REPO / "tests" / "gpu_world"
RUN = (
    "+recipe=pirate_tiny",
    "sampler=vllm",
    "prompts.expansion_rounds=0",
    "scale.prompts_per_trait=1",
)


def in_world(tmp_path: Path, command: list[str], *, card: str = "H100") -> tuple[Any, list[dict[str, Any]]]:
    """Run ``command`` (a Python command line) in the fake GPU world; its result and each process's record."""
    logs = tmp_path / "cuda-log"
    logs.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(WORLD), os.environ.get("PYTHONPATH")) if p),
        "OCTRAIN_CUDA_LOG_DIR": str(logs),
        "OCTRAIN_PRETEND_GPU": card,
        "PYTHONUNBUFFERED": "1",
    }
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=patience(600), env=env
    )
    return result, [json.loads(path.read_text()) for path in sorted(logs.glob("*.json"))]


def initialising(events: list[dict[str, Any]]) -> list[str]:
    return [event["call"] for event in events if event["event"] == "cuda" and event["initialises"]]


def engine_starts(process: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ``LLM(...)`` of the process, with the CUDA-initialising calls that came before it."""
    starts, before = [], []
    for event in process["events"]:
        if event["event"] == "cuda" and event["initialises"]:
            before.append(event["call"])
        elif event["event"] == "vllm.LLM":
            starts.append({**event, "initialised_before": list(before)})
    return starts


def check_engines(process: dict[str, Any]) -> int:
    """Every engine of ``process`` started on a CUDA-clean process, with spawn, and was shut down."""
    starts = engine_starts(process)
    for start in starts:
        assert start["initialised_before"] == [], start  # the forked engine core would have no CUDA
        assert start["multiproc_method"] == "spawn", start
    shutdowns = sum(event["event"] == "vllm.shutdown" for event in process["events"])
    assert shutdowns == len(starts), process["events"]  # closed explicitly, not by the garbage collector
    return len(starts)


def test_stage_workers_start_engines_on_clean_processes_and_the_parent_never_touches_cuda(tmp_path: Path) -> None:
    command = ["-m", "octrain", *RUN, "execution=auto", "stages=[prompts,pairs,dpo]", f"run_root={tmp_path}"]
    result, processes = in_world(tmp_path, command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "pirate_tiny" / "dpo" / "done.json").is_file()
    [parent] = [p for p in processes if p["pretend"]]
    # On a machine with a GPU (NVML says so) execution=auto puts the stages in workers ...
    assert "prompts: running in a worker process" in result.stderr
    assert "dpo: running in a worker process" in result.stderr
    # ... and the parent, which only orchestrates, never initialised CUDA: no context on GPU 0.
    assert initialising(parent["events"]) == []
    assert engine_starts(parent) == []
    workers = [p for p in processes if not p["pretend"] and any("stage_worker" in arg for arg in p["argv"])]
    assert len(workers) == 2  # prompts and pairs share one; dpo trains in its own
    assert sum(check_engines(worker) for worker in workers) == 1  # the teacher's engine served both stages


def test_an_inline_run_starts_its_engine_on_a_clean_process(tmp_path: Path) -> None:
    command = ["-m", "octrain", *RUN, "execution=inline", "stages=[prompts,pairs]", f"run_root={tmp_path}"]
    result, processes = in_world(tmp_path, command)
    assert result.returncode == 0, result.stderr[-3000:]
    [parent] = [p for p in processes if p["pretend"]]
    assert check_engines(parent) == 1
    assert "worker process" not in result.stderr


PARENT_CHECKS = """
import json
from octrain.trainers.accelerate_configs import find_accelerate_config, launch_command
from octrain.core.compose import compose_config
from octrain.run.pipeline import preflight
from octrain.trainers.precision import precision

config = compose_config("pirate_tiny", ["trainer.num_processes=2", "stages=[dpo]"])
preflight(config)  # reads the accelerate config and decides gradient checkpointing for the launch
command = launch_command(find_accelerate_config("ddp"), 2, ["octrain.run.workers", "RUN", "dpo"])
print("RESULT " + json.dumps({"precision": precision(), "command": command}))
"""


def parent_checks(tmp_path: Path, card: str) -> dict[str, Any]:
    result, [process] = in_world(tmp_path, ["-c", PARENT_CHECKS], card=card)
    assert result.returncode == 0, result.stderr[-3000:]
    assert initialising(process["events"]) == []  # preflight and launch_command opened no CUDA context
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_the_parent_decides_bf16_for_a_launch_from_nvml(tmp_path: Path) -> None:
    h100 = parent_checks(tmp_path / "h100", "H100")
    assert h100["precision"] == [True, True]
    assert h100["command"][h100["command"].index("--mixed_precision") + 1] == "bf16"
    # Compute capability 7.5: torch's is_bf16_supported() would say True (emulated); octrain trains in fp32.
    t4 = parent_checks(tmp_path / "t4", "T4")
    assert t4["precision"] == [True, False]
    assert t4["command"][t4["command"].index("--mixed_precision") + 1] == "no"
