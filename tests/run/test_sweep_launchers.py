"""Sweeps whose jobs run at once: the SLURM and local-GPU launchers, GPU sharing, and stage reuse under races.

The launchers need the cluster extra (hydra-submitit-launcher); the local one runs here for real,
through submitit's local executor, on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, patience
from octrain.core.errors import ConfigError
from octrain.run.job_devices import claim_devices, device_groups, gpu_pool, preferred_order
from octrain.run.stage_share import copy_finished_stage, retire_directory

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra")


def _compose_hydra(*overrides: str):  # type: ignore[no-untyped-def]
    from hydra import compose, initialize_config_dir

    from octrain.core.compose import register_schema
    from octrain.core.paths import configs_dir

    register_schema()
    with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
        return compose(config_name="octrain", overrides=["+recipe=pirate_tiny", *overrides], return_hydra_config=True)


def test_the_slurm_launcher_config_composes() -> None:
    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    cfg = _compose_hydra("hydra/launcher=slurm", "run_root=/scratch/me/runs", "hydra.launcher.partition=gpu")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.octrain_launchers._submitit.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["account"] is None
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["nodes"]) == (1, 1, 1)
    assert (launcher["cpus_per_task"], launcher["mem_gb"], launcher["timeout_min"]) == (8, 64, 1440)
    assert launcher["submitit_folder"] == "/scratch/me/runs/pirate_tiny-sweep/.submitit/%j"
    assert launcher["name"] == "octrain-pirate_tiny"
    assert "export PYTHONUNBUFFERED=1" in launcher["setup"]
    assert launcher["max_num_timeout"] == 0  # a job over its time limit is not resubmitted behind your back
    # Hydra's plugin scan found the class the config names (it takes launchers only from hydra_plugins).
    assert launcher["_target_"] in Plugins.instance().class_name_to_class
    # The jobs' own config is untouched by the launcher choice.
    assert cfg.name == "pirate_tiny" and cfg.run_root == "/scratch/me/runs"


def test_the_local_gpus_launcher_config_composes() -> None:
    from hydra.core.plugins import Plugins

    cfg = _compose_hydra("hydra/launcher=local_gpus", "hydra.launcher.gpus_per_node=2")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.octrain_launchers._submitit.LocalGpuLauncher"
    assert cfg.hydra.launcher._target_ in Plugins.instance().class_name_to_class
    assert cfg.hydra.launcher.gpus_per_node == 2 and cfg.hydra.launcher.timeout_min == 10080


SLURM = ("hydra/launcher=slurm", "hydra.launcher.partition=gpu")


def test_the_command_line_prints_the_slurm_launcher_config() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "octrain", "--cfg", "hydra", "-p", "hydra.launcher", "+recipe=pirate_tiny", *SLURM],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(120),
    )
    assert shown.returncode == 0, shown.stderr
    assert "_target_: hydra_plugins.octrain_launchers._submitit.SlurmLauncher" in shown.stdout
    assert "partition: gpu" in shown.stdout and "gpus_per_node: 1" in shown.stdout


# --- which GPUs a job gets ------------------------------------------------------------------------


def test_the_pool_is_octrain_gpus_then_cuda_visible_devices_then_nvidia_smi() -> None:
    smi = lambda: ["0", "1", "2"]  # noqa: E731
    assert gpu_pool({"OCTRAIN_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "1"}, list_gpus=smi) == ["4", "5"]
    assert gpu_pool({"CUDA_VISIBLE_DEVICES": "3, 1"}, list_gpus=smi) == ["3", "1"]
    assert gpu_pool({"CUDA_VISIBLE_DEVICES": ""}, list_gpus=smi) == []  # hidden on purpose: no GPUs
    assert gpu_pool({}, list_gpus=smi) == ["0", "1", "2"]
    assert gpu_pool({"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}) == ["GPU-1a2b", "GPU-3c4d"]  # UUIDs too


def test_the_pool_is_cut_into_groups_and_job_k_starts_at_group_k() -> None:
    pool = [str(i) for i in range(8)]
    assert device_groups(pool, 1) == [[d] for d in pool]
    assert device_groups(pool, 2) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert device_groups(pool, 3) == [["0", "1", "2"], ["3", "4", "5"]]  # 6 and 7 left over
    assert device_groups([], 2) == []
    with pytest.raises(ConfigError, match="2 GPUs per job, but the sweep has 1"):
        device_groups(["0"], 2)
    with pytest.raises(ConfigError, match="at least 1"):
        device_groups(pool, 0)
    assert preferred_order(0, 4) == [0, 1, 2, 3]
    assert preferred_order(5, 4) == [1, 2, 3, 0]


def test_each_job_holds_its_own_group_and_waits_when_all_are_taken(tmp_path: Path) -> None:
    pool = ["0", "1", "2", "3"]
    seen: dict[str, list[str]] = {}
    first_env: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    with claim_devices(0, 2, pool, directory=tmp_path, env=first_env) as first:
        assert first == ["0", "1"] and first_env["CUDA_VISIBLE_DEVICES"] == "0,1"
        # Job 2 points at group 0 too (2 mod 2), which is taken: it gets the other group.
        second_env: dict[str, str] = {}
        with claim_devices(2, 2, pool, directory=tmp_path, env=second_env) as second:
            assert second == ["2", "3"] and second_env["CUDA_VISIBLE_DEVICES"] == "2,3"

            def third_job() -> None:
                env: dict[str, str] = {}
                with claim_devices(1, 2, pool, directory=tmp_path, poll_s=0.02, env=env) as third:
                    seen["third"] = [*third, env["CUDA_VISIBLE_DEVICES"]]

            waiting = threading.Thread(target=third_job)
            waiting.start()
            time.sleep(0.3)
            assert "third" not in seen  # every group is in use: it waits
        waiting.join(timeout=10)
        assert seen["third"] == ["2", "3", "2,3"]  # the group job 2 gave back
        assert "CUDA_VISIBLE_DEVICES" not in second_env  # put back as it was
    assert first_env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_a_machine_without_gpus_changes_nothing(tmp_path: Path) -> None:
    env = {"X": "1"}
    with claim_devices(3, 1, [], directory=tmp_path, env=env) as devices:
        assert devices == [] and env == {"X": "1"}


# --- real sweeps through submitit's local executor --------------------------------------------------


def _sweep(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "octrain", "-m", "+recipe=pirate_tiny", "hydra/launcher=local_gpus"]
    return subprocess.run(
        [*command, "prompts.expansion_rounds=0", f"run_root={tmp_path}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(300),
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OCTRAIN_GPU_LOCK_DIR": str(tmp_path / "locks"), **env},
    )


def _job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_log.err")))


def test_a_two_job_sweep_runs_through_submitit_with_a_gpu_each(tmp_path: Path) -> None:
    result = _sweep(tmp_path, "stages=[prompts]", "seed=1,2", OCTRAIN_GPUS="5,7")
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "pirate_tiny-sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == [
        "prompts.expansion_rounds=0,seed=1,stages=[prompts]",
        "prompts.expansion_rounds=0,seed=2,stages=[prompts]",
    ]
    for job in jobs:
        done = json.loads((job / "prompts" / "done.json").read_text())
        records = (job / "prompts" / "prompts.jsonl").read_text().splitlines()
        assert len(records) == done["summary"]["records"] >= 56
        assert (job / "summary.txt").is_file() and (job / "config.yaml").is_file()
    assert "sharing GPUs 5,7 out, 1 per job" in result.stderr
    logs = _job_logs(sweep)
    # One fresh process per job, each shown its own GPU: job 0 the first, job 1 the second.
    assert "job #0: GPUs 5 (CUDA_VISIBLE_DEVICES=5)" in logs
    assert "job #1: GPUs 7 (CUDA_VISIBLE_DEVICES=7)" in logs


def test_a_failed_job_is_one_line_the_others_finish_and_the_exit_status_is_2(tmp_path: Path) -> None:
    result = _sweep(tmp_path, "hydra.launcher.gpus_per_node=0", "stages=[prompts],[pairs]")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("octrain: error:")]
    assert len(errors) == 1
    assert errors[0].startswith("octrain: error: job #1 (+recipe=pirate_tiny ") and "stages=[pairs]" in errors[0]
    assert "stage pairs needs the current output of stage prompts" in errors[0] and "_log.err" in errors[0]
    assert (tmp_path / "pirate_tiny-sweep" / "prompts.expansion_rounds=0,stages=[prompts]/prompts/done.json").is_file()


def test_jobs_that_make_the_same_stage_at_once_each_end_with_it_whole(tmp_path: Path) -> None:
    # dpo.beta does not change prompts: both jobs need the same stage, start at the same moment,
    # and either both make it or one copies the other's. Each ends complete and the same.
    result = _sweep(tmp_path, "hydra.launcher.gpus_per_node=0", "stages=[prompts]", "dpo.beta=0.1,0.2")
    assert result.returncode == 0, result.stderr
    stages = sorted((tmp_path / "pirate_tiny-sweep").glob("*/prompts"))
    assert len(stages) == 2
    done = [json.loads((s / "done.json").read_text()) for s in stages]
    assert done[0]["fingerprint"] == done[1]["fingerprint"]
    assert (stages[0] / "prompts.jsonl").read_bytes() == (stages[1] / "prompts.jsonl").read_bytes()
    assert sorted(p.name for p in stages[0].iterdir()) == sorted(p.name for p in stages[1].iterdir())
    assert not list((tmp_path / "pirate_tiny-sweep").glob("*/.prompts.*"))  # no staging left behind


# --- a copy racing the stage it copies --------------------------------------------------------------


def _make_stage(path: Path, generation: int) -> None:
    """A finished stage as a writer makes it: data files first, done.json last (atomically)."""
    path.mkdir(parents=True)
    for name in ("prompts.jsonl", "report.json", "extra.txt"):
        (path / name).write_text(f"{generation}\n" * 50)
    (path / ".done.tmp").write_text(json.dumps({"fingerprint": "f", "generation": generation}))
    os.replace(path / ".done.tmp", path / "done.json")


def _check_copy(target: Path) -> None:
    generation = json.loads((target / "done.json").read_text())["generation"]
    for name in ("prompts.jsonl", "report.json", "extra.txt"):
        assert (target / name).read_text() == f"{generation}\n" * 50, f"{name} is not from generation {generation}"


def test_a_copy_of_a_stage_retired_meanwhile_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = tmp_path / "a" / "prompts", tmp_path / "b" / "prompts"
    _make_stage(source, 1)
    real_copytree = shutil.copytree

    def copy_while_the_source_is_cleared(src, dst, **kw):  # type: ignore[no-untyped-def]
        real_copytree(src, dst, **kw)
        retire_directory(Path(src))  # the sibling reruns the stage: it leaves its path in one move
        _make_stage(Path(src), 2)

    monkeypatch.setattr(shutil, "copytree", copy_while_the_source_is_cleared)
    assert copy_finished_stage(source, target) is False
    assert not target.exists() and not list(target.parent.glob(".prompts.*"))
    monkeypatch.setattr(shutil, "copytree", real_copytree)
    assert copy_finished_stage(source, target) is True
    _check_copy(target)


def test_a_copy_racing_a_writer_that_remakes_the_stage_is_whole_or_dropped(tmp_path: Path) -> None:
    source, target = tmp_path / "a" / "prompts", tmp_path / "b" / "prompts"
    _make_stage(source, 0)
    stop = threading.Event()

    def writer() -> None:  # reruns the stage over and over, clearing it the way a rerun must
        generation = 0
        while not stop.is_set():
            generation += 1
            retire_directory(source)
            _make_stage(source, generation)

    thread = threading.Thread(target=writer)
    thread.start()
    copies = dropped = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if copy_finished_stage(source, target):
                copies += 1
                _check_copy(target)  # every copy that counts is one whole generation
            else:
                dropped += 1
    finally:
        stop.set()
        thread.join()
    assert copies + dropped > 20
