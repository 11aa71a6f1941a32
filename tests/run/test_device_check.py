"""benchmarks/device_check.py, the prepared GPU check of issue 24, in its smoke mode on the CPU.

Every section runs its real code (the fork probes in fresh processes, the tiny recipe in stage workers,
the inline training and release, the training benchmark); what needs a CUDA device reports null
verdicts and says so, and nothing fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, patience

SCRIPT = REPO / "benchmarks" / "device_check.py"


def device_check(out_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(out_dir), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(900),
    )
    report_file = out_dir / "device_check.json"
    return done, json.loads(report_file.read_text()) if report_file.is_file() else {}


def test_without_a_gpu_it_asks_for_the_smoke_mode(tmp_path: Path) -> None:
    done, report = device_check(tmp_path)
    assert done.returncode == 2 and report == {}
    assert "no usable CUDA GPU here: run with --smoke" in done.stderr


def test_the_fork_probes_run_in_fresh_processes(tmp_path: Path) -> None:
    done, report = device_check(tmp_path, "--smoke", "--sections", "machine,fork_probe")
    assert done.returncode == 0, done.stderr[-3000:]
    probes = report["sections"]["fork_probe"]["probes"]
    assert {name: probe["status"] for name, probe in probes.items()} == {
        "torch_default": "ok",
        "octrain_parent": "ok",
        "spawn_after_cuinit": "ok",
        "vllm_engine": "skipped",  # vLLM is not installed on a CPU machine
    }
    parent = probes["octrain_parent"]
    # octrain's import sets the environment itself (the probe starts without it).
    assert parent["environment"] == {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    assert parent["precision"] == [False, False] and parent["torch_initialised"] is False
    assert probes["torch_default"]["child"]["method"] == "fork"
    assert probes["spawn_after_cuinit"]["child"]["method"] == "spawn"
    assert set(report["sections"]["fork_probe"]["verdicts"].values()) == {None}  # no CUDA here to tell


@pytest.mark.slow
def test_the_whole_device_check_runs_in_smoke_mode(tmp_path: Path) -> None:
    done, report = device_check(tmp_path, "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    sections = report["sections"]
    assert {name: part["status"] for name, part in sections.items()} == dict.fromkeys(
        ("machine", "fork_probe", "stage_workers", "release", "training"), "ok"
    )
    workers = sections["stage_workers"]
    assert workers["verdicts"] == {
        "every_stage_in_a_worker": True,
        "trained_in_fp32": True,
        "parent_never_initialised_cuda": True,
    }
    assert workers["adapter_folded_before_sft"] is True
    assert len({workers["worker_pids"][stage] for stage in ("pairs", "dpo", "introspect", "sft")}) == 4
    release = sections["release"]
    assert release["before_release"]["models_alive"] > 0 and release["after_release"]["models_alive"] == 0
    assert sections["training"]["returncode"] == 0 and "dpo-octrain-ckpt-b2 | ok" in sections["training"]["table"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.json", "gpu_training.json", "stage_workers.log"]
