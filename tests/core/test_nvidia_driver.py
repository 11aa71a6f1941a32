"""The NVIDIA driver check: the table, NVML and nvidia-smi read without CUDA, and what a user is told.

NVML and ``nvidia-smi`` are faked at their boundary (``tests/gpu_world/nvml_fake.py`` is NVML as
``ctypes`` shows it; ``nvidia-smi`` is its CSV output), as is torch's CUDA version where a test needs
a CUDA build: this machine has neither a driver nor a CUDA torch.
"""

from __future__ import annotations

import ctypes
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import REPO
from octrain.cli.info import _print, collect
from octrain.core.compose import compose_config
from octrain.core.devices import bf16_supported, driver_report, gpu_problem, gpu_usable, visible_gpus
from octrain.core.errors import ConfigError
from octrain.core.nvidia import DriverReport, Gpu, driver_too_old, minimum_driver, probe
from octrain.run.pipeline import preflight

sys.path.insert(0, str(REPO / "tests" / "gpu_world"))
from nvml_fake import H100, T4, FakeNvml


def no_library() -> None:
    raise OSError("libnvidia-ml.so.1: cannot open shared object file")


def test_the_minimum_driver_follows_the_cuda_major_release() -> None:
    assert minimum_driver("13.0") == minimum_driver("13.2") == (580,)  # CUDA 13 needs R580
    assert minimum_driver("12.8") == minimum_driver("12.1") == (525, 60, 13)
    assert minimum_driver("11.8") == (450, 80, 2)
    assert minimum_driver("10.2") is None and minimum_driver("14.0") is None  # not in the table: no claim
    assert driver_too_old("570.133.20", "13.0")
    assert not driver_too_old("580.82.07", "13.0") and not driver_too_old("580.65.06", "13.0")
    assert not driver_too_old("535.104.05", "12.8")
    assert driver_too_old("520.61.05", "12.1")
    assert not driver_too_old("400.1", "14.0")


def test_nvml_is_read_without_cuda() -> None:
    library = FakeNvml(driver="580.82.07", cuda=13000, gpus=[H100, T4])
    report = probe(load_library=lambda: library, smi_present=lambda: False)
    assert report.source == "nvml" and report.driver == "580.82.07" and report.driver_cuda == "13.0"
    assert [(g.index, g.name, g.capability, g.memory_gib) for g in report.gpus] == [
        (0, "NVIDIA H100 80GB HBM3", (9, 0), 79.6),
        (1, "Tesla T4", (7, 5), 15.0),
    ]
    assert library.calls[0] == "nvmlInit_v2" and library.calls[-1] == "nvmlShutdown"


SMI = "0, NVIDIA H100 80GB HBM3, GPU-11111111-2222-3333-4444-555555555555, 9.0, 81559, 570.133.20\n"


def test_nvidia_smi_answers_when_the_library_does_not_load() -> None:
    report = probe(load_library=no_library, smi_present=lambda: True, run_smi=lambda: SMI)
    assert report.source == "nvidia-smi" and report.driver == "570.133.20"
    assert report.gpus == (Gpu(0, "NVIDIA H100 80GB HBM3", H100[1], (9, 0), 79.6),)


def test_no_driver_is_a_report_not_an_error() -> None:
    assert probe(load_library=no_library, smi_present=lambda: False) == DriverReport()
    broken = FakeNvml()
    broken.nvmlInit_v2 = lambda: 9  # type: ignore[method-assign]  # NVML_ERROR_DRIVER_NOT_LOADED
    report = probe(load_library=lambda: broken, smi_present=lambda: False)
    assert report.driver is None and report.error == "NVML: nvmlInit_v2 returned NVML error 9"


def test_cuda_visible_devices_selects_by_index_or_uuid() -> None:
    report = probe(load_library=lambda: FakeNvml(gpus=[H100, T4]), smi_present=lambda: False)
    names = {
        listed: [g.name for g in visible_gpus(report, {"CUDA_VISIBLE_DEVICES": listed})]
        for listed in ("1", "1,0", "GPU-1111", "", "-1", "0,7,1", "MIG-abc")
    }
    assert names["1"] == ["Tesla T4"] and names["1,0"] == ["Tesla T4", "NVIDIA H100 80GB HBM3"]
    assert names["GPU-1111"] == ["NVIDIA H100 80GB HBM3"]
    assert names[""] == names["-1"] == []
    assert names["0,7,1"] == ["NVIDIA H100 80GB HBM3"]  # CUDA stops at the first invalid entry
    assert len(names["MIG-abc"]) == 2  # a MIG slice: any of the cards
    assert len(visible_gpus(report, {})) == 2


H100_REPORT = DriverReport("580.82.07", "13.0", (Gpu(0, H100[0], H100[1], (9, 0), 79.6),), "nvml")
OLD_DRIVER = DriverReport("570.133.20", "12.8", H100_REPORT.gpus, "nvml")


def test_what_a_cuda_build_without_a_usable_gpu_is_told() -> None:
    assert gpu_problem(H100_REPORT, "13.0") is None
    assert gpu_problem(OLD_DRIVER, "12.8") is None  # a CUDA 12.8 build runs on R570
    old = gpu_problem(OLD_DRIVER, "13.0")
    assert old is not None and old.fatal
    assert old.message.startswith("the NVIDIA driver 570.133.20 is too old for torch's CUDA 13.0 build")
    assert "needs 580 or newer" in old.message and "CUDA_VISIBLE_DEVICES=" in old.message
    none = gpu_problem(DriverReport(), "13.0")
    assert none is not None and not none.fatal
    assert none.message.startswith("torch is built for CUDA 13.0 but this machine has no NVIDIA driver")
    assert "in fp32" in none.message


def test_octrain_info_prints_the_driver_and_says_when_it_is_too_old(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = collect(tmp_path, report=OLD_DRIVER, build="13.0")
    assert info["driver"] == {
        "version": "570.133.20",
        "cuda": "12.8",
        "source": "nvml",
        "needed": "580",
        "too_old": True,
    }
    assert info["gpus"][0]["capability"] == "9.0" and info["gpu_problem"]["fatal"]
    assert "on the GPU" not in info["backends"]["trainer=trl"]["note"]  # the card is there but unusable
    _print(info)
    lines = capsys.readouterr().out.splitlines()
    assert "NVIDIA driver 570.133.20 (CUDA 12.8; TOO OLD: torch's CUDA 13.0 build needs 580 or newer)" in lines
    assert "  0: NVIDIA H100 80GB HBM3, 79.6 GiB, compute capability 9.0" in lines
    assert any(line.startswith("error: the NVIDIA driver 570.133.20 is too old") for line in lines)

    _print(collect(tmp_path, report=H100_REPORT, build="13.0"))
    lines = capsys.readouterr().out.splitlines()
    assert "NVIDIA driver 580.82.07 (CUDA 13.0; torch's CUDA 13.0 build needs 580 or newer)" in lines
    assert not any(line.startswith(("error:", "warning:")) for line in lines)

    _print(collect(tmp_path, report=DriverReport(), build=None))  # this CI machine: no driver, CPU torch
    lines = capsys.readouterr().out.splitlines()
    assert "NVIDIA driver none (no NVIDIA driver found through NVML or nvidia-smi)" in lines
    assert "GPUs (torch CPU build):" in lines and not any(line.startswith("warning:") for line in lines)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This process on a machine of the test's choosing: NVML and torch's CUDA version, patched at the boundary."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    driver_report.cache_clear()
    yield monkeypatch
    driver_report.cache_clear()


def test_a_driver_too_old_for_torch_stops_a_run_before_any_model_loads(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(ctypes, "CDLL", lambda name, *a, **k: FakeNvml(driver="570.133.20", cuda=12080))
    machine.setattr(torch.version, "cuda", "13.0")
    assert not gpu_usable() and not bf16_supported()
    with pytest.raises(
        ConfigError, match=re.escape("the NVIDIA driver 570.133.20 is too old for torch's CUDA 13.0 build")
    ):
        preflight(compose_config("pirate_tiny"))


def test_a_cuda_build_without_a_driver_warns_and_runs_on_the_cpu(
    machine: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    machine.setattr(ctypes, "CDLL", lambda name, *a, **k: no_library())
    machine.setattr("shutil.which", lambda name: None)
    machine.setattr(torch.version, "cuda", "13.0")
    with caplog.at_level(logging.WARNING, logger="octrain"):
        preflight(compose_config("pirate_tiny", ["stages=[prompts]"]))
    assert any("this machine has no NVIDIA driver" in record.getMessage() for record in caplog.records)


def test_bf16_follows_the_compute_capability(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(torch.version, "cuda", "13.0")
    machine.setattr(ctypes, "CDLL", lambda name, *a, **k: FakeNvml(gpus=[H100]))
    assert gpu_usable() and bf16_supported()
    driver_report.cache_clear()
    machine.setattr(ctypes, "CDLL", lambda name, *a, **k: FakeNvml(gpus=[H100, T4]))
    assert gpu_usable() and not bf16_supported()  # every visible card must have bf16
    machine.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert bf16_supported()
