"""``octrain info``: what this installation can do, for a bug report or before a long run.

Versions of octrain and the libraries it runs on (each missing one with the extra that gives
it and what that enables), the GPUs torch sees, which sampler and trainer backends are usable
here, and the run root with its runs and checkpoint registry. ``--json`` prints the same as
one JSON object for scripts.

Versions come from the installed distributions' metadata, so that no optional library is
imported (vLLM's import alone takes seconds and may touch the GPU). The NVIDIA driver and the GPUs
come from NVML or ``nvidia-smi`` (:mod:`octrain.core.nvidia`), never from a CUDA context: the driver's
version is checked against what torch's CUDA build needs, and a CUDA build that will not use a GPU
here (no driver, a driver too old) says so, with what to do.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from octrain.core.devices import driver_report, gpu_problem, torch_cuda_build, visible_gpus
from octrain.core.layout import CONFIG_FILE, REGISTRY_FILE
from octrain.core.nvidia import DriverReport, driver_too_old, format_version, minimum_driver

# (distribution, how to install it when missing, what it enables); None for core dependencies.
PACKAGES: tuple[tuple[str, str | None, str | None], ...] = (
    ("octrain", None, None),
    ("torch", None, None),
    ("transformers", None, None),
    ("trl", None, None),
    ("peft", None, None),
    ("accelerate", None, None),
    ("datasets", None, None),
    ("hydra-core", None, None),
    ("vllm", "pip install -e '.[vllm]'", "sampler=vllm (fast sampling on a CUDA GPU)"),
    ("tinker", "pip install -e '.[tinker]'", "sampler=tinker and trainer=tinker (hosted, with TINKER_API_KEY)"),
    ("bitsandbytes", "pip install -e '.[quant]'", "QLoRA: trainer.trl.load_in_4bit=true"),
    ("lm-eval", "pip install -e '.[capability]'", "octrain eval capability and eval.capability.enabled=true"),
    ("deepspeed", "pip install deepspeed", "trainer.accelerate_config=zero2 and trainer.accelerate_config=zero3"),
    ("submitit", "pip install -e '.[cluster]'", "hydra/launcher=local_gpus and hydra/launcher=slurm"),
    ("hydra-submitit-launcher", "pip install -e '.[cluster]'", "hydra/launcher=local_gpus and hydra/launcher=slurm"),
)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia(report: DriverReport, build: str | None) -> dict[str, Any]:
    """The driver, the GPUs this process may use, and whether torch's CUDA build (``build``) can use them."""
    floor = minimum_driver(build) if build else None
    too_old = bool(build and report.driver and driver_too_old(report.driver, build))
    problem = gpu_problem(report, build) if build else None
    return {
        "torch_cuda": build,
        "driver": {
            "version": report.driver,
            "cuda": report.driver_cuda,
            "source": report.source,
            "needed": format_version(floor) if floor else None,
            "too_old": too_old,
        },
        "gpus": [
            {
                "index": gpu.index,
                "name": gpu.name,
                "memory_gib": gpu.memory_gib,
                "capability": ".".join(map(str, gpu.capability)),
            }
            for gpu in visible_gpus(report)
        ],
        "gpu_problem": None if problem is None else {"message": problem.message, "fatal": problem.fatal},
    }


def _backends(versions: dict[str, str | None], cuda: bool) -> dict[str, dict[str, Any]]:
    """Each backend, whether it can run here, and why not."""

    def entry(usable: bool, note: str) -> dict[str, Any]:
        return {"usable": usable, "note": note}

    vllm = versions["vllm"]
    if vllm is None:
        vllm_entry = entry(False, "vLLM is not installed: pip install -e '.[vllm]'")
    elif cuda or "cpu" in vllm:
        vllm_entry = entry(True, "on the GPU" if cuda else "the CPU build of vLLM")
    else:
        vllm_entry = entry(False, "vLLM is installed but no CUDA GPU is visible")
    if versions["tinker"] is None:
        tinker_entry = entry(False, "the Tinker SDK is not installed: pip install -e '.[tinker]'")
    elif not os.environ.get("TINKER_API_KEY"):
        tinker_entry = entry(False, "TINKER_API_KEY is not set")
    else:
        tinker_entry = entry(True, "hosted on Tinker (which models it serves is checked when a run starts)")
    return {
        "sampler=fake": entry(True, "canned answers, for a dry run of the pipeline"),
        "sampler=hf": entry(versions["transformers"] is not None, "transformers generate(), any machine"),
        "sampler=vllm": vllm_entry,
        "sampler=tinker": tinker_entry,
        "trainer=trl": entry(
            versions["trl"] is not None, "LoRA DPO and SFT with TRL" + (" on the GPU" if cuda else "")
        ),
        "trainer=tinker": tinker_entry,
        "qlora": entry(
            versions["bitsandbytes"] is not None,
            "trainer.trl.load_in_4bit=true"
            if versions["bitsandbytes"]
            else "bitsandbytes is not installed: pip install -e '.[quant]'",
        ),
        "launchers": entry(
            versions["submitit"] is not None and versions["hydra-submitit-launcher"] is not None,
            "hydra/launcher=local_gpus|slurm"
            if versions["submitit"] and versions["hydra-submitit-launcher"]
            else "pip install -e '.[cluster]'",
        ),
    }


def _runs(run_root: Path) -> dict[str, Any]:
    """The run root: how many runs it holds (a run directory has its config.yaml; a sweep's
    jobs are one level down) and the checkpoint registry, if one was written."""
    runs = 0
    if run_root.is_dir():
        for child in run_root.iterdir():
            if (child / CONFIG_FILE).is_file():
                runs += 1
            elif child.is_dir():
                runs += sum((job / CONFIG_FILE).is_file() for job in child.iterdir() if job.is_dir())
    registry = run_root / REGISTRY_FILE
    return {
        "run_root": str(run_root),
        "exists": run_root.is_dir(),
        "runs": runs,
        "registry": str(registry) if registry.is_file() else None,
    }


def collect(run_root: Path, *, report: DriverReport | None = None, build: str | None = None) -> dict[str, Any]:
    """Everything ``octrain info`` prints. ``report`` and ``build`` replace this machine's NVIDIA driver
    report and torch's CUDA version (for tests)."""
    versions = {name: _version(name) for name, _, _ in PACKAGES}
    nvidia = _nvidia(driver_report() if report is None else report, torch_cuda_build() if report is None else build)
    usable = bool(nvidia["torch_cuda"] and nvidia["gpus"] and not nvidia["driver"]["too_old"])
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": versions,
        "missing": {
            name: {"install": install, "enables": enables}
            for name, install, enables in PACKAGES
            if versions[name] is None and install is not None
        },
        **nvidia,
        "backends": _backends(versions, usable),
        "tinker_api_key": bool(os.environ.get("TINKER_API_KEY")),
        **_runs(run_root),
    }


def _print(info: dict[str, Any]) -> None:
    print(f"python        {info['python']} ({info['executable']})")
    for name, version in info["versions"].items():
        print(f"{name:<24}{version or 'not installed'}")
    if info["missing"]:
        print("missing:")
        for name, how in info["missing"].items():
            print(f"  {name}: {how['install']}  enables {how['enables']}")
    print(f"NVIDIA driver {_driver_line(info)}")
    print(f"GPUs (torch {'built for CUDA ' + info['torch_cuda'] if info['torch_cuda'] else 'CPU build'}):")
    for gpu in info["gpus"]:
        print(f"  {gpu['index']}: {gpu['name']}, {gpu['memory_gib']} GiB, compute capability {gpu['capability']}")
    if not info["gpus"]:
        print("  none visible")
    if info["gpu_problem"]:
        print(f"{'error' if info['gpu_problem']['fatal'] else 'warning'}: {info['gpu_problem']['message']}")
    print("backends:")
    for name, backend in info["backends"].items():
        print(f"  {name:<16}{'usable' if backend['usable'] else 'no':<8}{backend['note']}")
    where = "" if info["exists"] else " (does not exist yet)"
    print(f"run root      {info['run_root']}{where}: {info['runs']} runs")
    print(f"registry      {info['registry'] or 'none'}")


def _driver_line(info: dict[str, Any]) -> str:
    """``580.82.07 (CUDA 13.0; torch's CUDA 13.0 build needs 580 or newer)``, or why there is none."""
    driver = info["driver"]
    if driver["version"] is None:
        return "none (no NVIDIA driver found through NVML or nvidia-smi)"
    notes = [f"CUDA {driver['cuda']}"] if driver["cuda"] else []
    if driver["needed"]:
        verdict = "TOO OLD: " if driver["too_old"] else ""
        notes.append(f"{verdict}torch's CUDA {info['torch_cuda']} build needs {driver['needed']} or newer")
    return driver["version"] + (f" ({'; '.join(notes)})" if notes else "")


def _run(args: argparse.Namespace) -> int:
    info = collect(Path(args.run_root))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="versions, the NVIDIA driver and GPUs, usable backends, the run root and registry",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="examples:\n  octrain info\n  octrain info --json --run-root /scratch/runs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-root", default="runs", help="where runs are written (the config's run_root)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.set_defaults(func=_run)
