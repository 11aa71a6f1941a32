"""What octrain decides about the GPU without touching CUDA, and the environment that keeps it so.

**Why.** vLLM starts its engine core with ``multiprocessing``, by default with ``fork``, and switches
to ``spawn`` only when ``torch.cuda.is_initialized()`` (vLLM's ``_maybe_force_spawn``). That flag says
whether *torch* set up CUDA, not whether the *driver* was initialised: ``torch.cuda.is_available()``
runs ``cuInit`` and leaves the flag False, and so do NVML-adjacent libraries (vLLM issue 32611) and
Triton 3.8's driver probe, which vLLM itself calls on import (vLLM issue 46996, PyTorch issue 189287).
A child forked after ``cuInit`` cannot use CUDA ("CUDA driver initialization failed"). The open fix in
vLLM (PR 44252, probing the driver before fork) is not in vLLM 0.31. So every octrain process sets:

``VLLM_WORKER_MULTIPROC_METHOD=spawn``
    vLLM starts its engine core (and tensor-parallel workers) as fresh interpreters, which never
    inherit driver state, whoever initialised CUDA before. It is what vLLM's own command line sets
    (``cli_env_setup``); it needs the ``if __name__ == "__main__"`` guard, which every octrain entry
    point has, and costs the engine core a few seconds of imports per engine start.
``PYTORCH_NVML_BASED_CUDA_CHECK=1``
    ``torch.cuda.is_available()``, octrain's and any library's, asks NVML instead of running ``cuInit``
    (vLLM sets the same on import, in ``vllm/env_override.py``; this makes it hold before vLLM is
    imported too). A parent that only orchestrates then never initialises CUDA at all.

``setdefault`` keeps a value the user exported. Beyond the environment, the decisions a parent makes
(is there a usable GPU, does it do bf16) come from NVML (:mod:`octrain.core.nvidia`), never from a CUDA
context: :func:`gpu_usable`, :func:`bf16_supported`. :func:`gpu_problem` says, loudly, when a CUDA
build of torch finds no usable GPU, rather than let training run in fp32 on the CPU unannounced.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from dataclasses import dataclass

from octrain.core.nvidia import DriverReport, Gpu, driver_too_old, format_version, minimum_driver, probe

FORK_SAFE_ENVIRONMENT: dict[str, str] = {
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
}

# bf16 tensor cores start with compute capability 8.0 (Ampere); torch's own is_bf16_supported() also
# answers True on older cards by emulation, which is slow: octrain trains those in fp32.
BF16_CAPABILITY = (8, 0)


def fork_safe_environment() -> None:
    """Set the variables of the module docstring, unless the user chose a value."""
    for name, value in FORK_SAFE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


@functools.cache
def driver_report() -> DriverReport:
    """:func:`octrain.core.nvidia.probe`, once per process: the driver and the cards do not change."""
    return probe()


def torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for (``torch.version.cuda``); None for a CPU build.

    Importing torch initialises no CUDA; None too when torch is not installed.
    """
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def _rocm_build() -> bool:
    """Whether the installed torch is built for ROCm (AMD GPUs, reached through ``torch.cuda`` too)."""
    try:
        import torch
    except ImportError:
        return False
    return getattr(torch.version, "hip", None) is not None


def _torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def visible_gpus(report: DriverReport | None = None, env: dict[str, str] | None = None) -> list[Gpu]:
    """The GPUs of ``report`` that ``CUDA_VISIBLE_DEVICES`` lets this process use.

    Entries are NVML indexes or ``GPU-`` UUIDs (or their prefixes); CUDA stops at the first invalid entry
    (``-1`` hides every GPU), and so does this. An index is taken in NVML's (PCI bus) order, which is
    CUDA's own order on machines of one GPU model, the case this is asked about (is there a usable
    GPU, do they all do bf16).
    """
    report = driver_report() if report is None else report
    env = dict(os.environ) if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(report.gpus)
    chosen: list[Gpu] = []
    for entry in (part.strip() for part in listed.split(",")):
        if entry.isdigit():
            match = [gpu for gpu in report.gpus if gpu.index == int(entry)]
        elif entry.startswith("GPU-"):
            match = [gpu for gpu in report.gpus if gpu.uuid.startswith(entry)]
        elif entry.startswith("MIG-"):
            return list(report.gpus)  # a MIG slice: NVML's GPU list cannot say whose; any of them can
        else:
            match = []
        if not match:
            break
        chosen.append(match[0])
    return chosen


def gpu_usable() -> bool:
    """Whether this process can train and sample on a CUDA GPU, decided without initialising CUDA.

    A CUDA build of torch, at least one GPU visible to this process, and a driver new enough for
    the build. Where NVML and ``nvidia-smi`` give no answer at all (a driver without them, seldom
    seen) it falls back to ``torch.cuda.is_available()``, which is NVML-based under the variable set
    by :func:`fork_safe_environment` and runs ``cuInit`` only where NVML is missing; a ROCm build of
    torch (AMD) is asked the same way, as octrain always did.
    """
    build = torch_cuda_build()
    if build is None:
        return _rocm_build() and _torch_cuda_available()  # no NVML on AMD cards: torch's own check there
    report = driver_report()
    if report.source == "none":
        return _torch_cuda_available()
    if report.driver is not None and driver_too_old(report.driver, build):
        return False
    return bool(visible_gpus(report))


def bf16_supported() -> bool:
    """Whether training uses bf16: every visible GPU has compute capability 8.0 or more (from NVML)."""
    if not gpu_usable():
        return False
    report = driver_report()
    if _rocm_build() or report.source == "none":
        import torch

        return torch.cuda.is_bf16_supported(including_emulation=False)  # AMD, or the rare machine without NVML
    gpus = visible_gpus(report)
    return bool(gpus) and all(gpu.capability >= BF16_CAPABILITY for gpu in gpus)


@dataclass(frozen=True)
class GpuProblem:
    """A CUDA build of torch that finds no usable GPU. ``fatal``: a GPU is there but cannot be used."""

    message: str
    fatal: bool


def gpu_problem(report: DriverReport | None = None, build: str | None = None) -> GpuProblem | None:
    """Why a CUDA build of torch will not use a GPU here, or None (a CPU build, or a usable GPU).

    ``report`` and ``build`` default to this machine's (:func:`driver_report`, ``torch.version.cuda``).
    """
    build = torch_cuda_build() if build is None else build
    if build is None:
        return None
    report = driver_report() if report is None else report
    cpu = "training and sampling would run on the CPU, in fp32, many times slower"
    if report.driver is None:
        if report.source == "none" and report.error is None:
            return GpuProblem(
                f"torch is built for CUDA {build} but this machine has no NVIDIA driver: {cpu} "
                "(install the CPU build of torch to silence this on a machine without a GPU)",
                fatal=False,
            )
        return GpuProblem(
            f"torch is built for CUDA {build} but the NVIDIA driver did not answer ({report.error}): {cpu}",
            fatal=False,
        )
    if driver_too_old(report.driver, build):
        floor = minimum_driver(build)
        assert floor is not None
        return GpuProblem(
            f"the NVIDIA driver {report.driver} is too old for torch's CUDA {build} build, which needs "
            f"{format_version(floor)} or newer: CUDA cannot start, so no GPU can be used and {cpu}. "
            "Update the driver, or install a torch built for an older CUDA; to run on the CPU anyway, "
            "set CUDA_VISIBLE_DEVICES= (empty)",
            fatal=True,
        )
    if not report.gpus:
        return GpuProblem(f"the NVIDIA driver {report.driver} lists no GPU: {cpu}", fatal=False)
    if not visible_gpus(report) and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1"):
        listed = os.environ["CUDA_VISIBLE_DEVICES"]
        return GpuProblem(
            f"CUDA_VISIBLE_DEVICES={listed} names none of this machine's GPUs "
            f"({', '.join(str(gpu.index) for gpu in report.gpus)}): {cpu}",
            fatal=False,
        )
    return None


def free_device_memory() -> None:
    """Collect garbage, then hand torch's cached CUDA memory back to the driver.

    ``gc.collect()`` first: a trained model sits in reference cycles (TRL's patched forward, the
    trainer and its callbacks) and is freed only by a collection. ``empty_cache()`` only where torch
    already initialised CUDA in this process, so that freeing never starts a CUDA context.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
