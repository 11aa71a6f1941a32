"""The machine's NVIDIA driver and GPUs, asked through NVML (or ``nvidia-smi``), never through CUDA.

Why not ``torch.cuda``: its availability check runs ``cuInit`` (unless
``PYTORCH_NVML_BASED_CUDA_CHECK=1``), and a process that ran ``cuInit`` and then forks has children
that cannot use CUDA: vLLM forks its engine core by default (see :mod:`octrain.core.devices`). Asking
for a device's properties or bf16 support goes further and opens a CUDA context, about half a GiB
on GPU 0 in a process that only orchestrates. NVML, the library behind ``nvidia-smi``, answers the
same questions (driver version, GPU names, memory, compute capability) without either; vLLM's own
front end and torch's NVML-based device count use it for exactly this reason.

:func:`probe` reads NVML through ``ctypes`` (``libnvidia-ml.so.1`` ships with the driver, no Python
package needed), falls back to ``nvidia-smi`` when the library does not load, and says "no NVIDIA
driver" when neither is there. :data:`MINIMUM_DRIVER` and :func:`driver_too_old` say whether the
driver can run the CUDA build of the installed torch.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NVML_LIBRARY = "libnvidia-ml.so.1"

# The oldest Linux driver that runs a build for each CUDA release, keyed by (major, minor): a build
# for CUDA X.Y needs the entry of the same major with the greatest minor <= Y. From NVIDIA's "minor
# version compatibility" table (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html):
# CUDA 13.x >= 580, 12.x >= 525 (525.60.13), 11.x >= 450 (450.80.02). PyTorch's and vLLM's wheels carry
# their own CUDA runtime, so this floor decides, not the driver a toolkit installer ships with. Below it
# the CUDA runtime cannot initialise at all: vLLM does not start and torch sees no GPU.
MINIMUM_DRIVER: dict[tuple[int, int], tuple[int, ...]] = {
    (11, 0): (450, 80, 2),
    (12, 0): (525, 60, 13),
    (13, 0): (580,),
}


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML numbers it (PCI bus order, whatever ``CUDA_VISIBLE_DEVICES`` says)."""

    index: int
    name: str
    uuid: str
    capability: tuple[int, int]  # (0, 0) when the source could not tell
    memory_gib: float


@dataclass(frozen=True)
class DriverReport:
    """What :func:`probe` found: the driver (None: no NVIDIA driver), its CUDA version and the GPUs."""

    driver: str | None = None
    driver_cuda: str | None = None  # the newest CUDA the driver supports, e.g. "13.0"
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    source: str = "none"  # "nvml", "nvidia-smi" or "none"
    error: str | None = None  # why NVML or nvidia-smi gave no answer, when one was there but failed


def parse_version(text: str) -> tuple[int, ...]:
    """``"580.82.07"`` -> ``(580, 82, 7)``; the leading numeric parts of a version string."""
    parts: list[int] = []
    for piece in text.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def minimum_driver(cuda: str) -> tuple[int, ...] | None:
    """The oldest driver a build for CUDA ``cuda`` (``torch.version.cuda``, e.g. ``"13.0"``) runs on.

    None for a CUDA major release the table does not know (newer than this octrain, or older than 11).

    >>> minimum_driver("13.0"), minimum_driver("12.8")
    ((580,), (525, 60, 13))
    """
    version = parse_version(cuda)
    if len(version) < 1:
        return None
    major, minor = version[0], version[1] if len(version) > 1 else 0
    rows = [key for key in MINIMUM_DRIVER if key[0] == major and key[1] <= minor]
    return MINIMUM_DRIVER[max(rows)] if rows else None


def driver_too_old(driver: str, cuda: str) -> bool:
    """Whether driver ``driver`` (e.g. ``"570.133.20"``) is older than a build for CUDA ``cuda`` needs."""
    floor = minimum_driver(cuda)
    if floor is None:
        return False  # a release the table does not know: no claim either way
    return parse_version(driver) < floor


def format_version(version: tuple[int, ...]) -> str:
    """``(525, 60, 13)`` -> ``"525.60.13"``, ``(580,)`` -> ``"580"``."""
    return ".".join(f"{part:02d}" if i else str(part) for i, part in enumerate(version))


# --- NVML ----------------------------------------------------------------------------------------


class _Memory(ctypes.Structure):
    # nvmlMemory_t
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _text(buffer: Any) -> str:
    value = buffer.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _from_nvml(library: Any) -> DriverReport:
    """Everything :class:`DriverReport` holds, from a loaded NVML library (raises OSError on a failed call)."""

    def call(name: str, *args: Any) -> None:
        status = getattr(library, name)(*args)
        if status != 0:
            raise OSError(f"{name} returned NVML error {status}")

    call("nvmlInit_v2")
    try:
        version = ctypes.create_string_buffer(96)
        call("nvmlSystemGetDriverVersion", version, ctypes.c_uint(96))
        cuda_version = ctypes.c_int(0)
        try:
            call("nvmlSystemGetCudaDriverVersion_v2", ctypes.byref(cuda_version))
            driver_cuda: str | None = f"{cuda_version.value // 1000}.{cuda_version.value % 1000 // 10}"
        except OSError:
            driver_cuda = None
        count = ctypes.c_uint(0)
        call("nvmlDeviceGetCount_v2", ctypes.byref(count))
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
            name, uuid = ctypes.create_string_buffer(96), ctypes.create_string_buffer(96)
            call("nvmlDeviceGetName", handle, name, ctypes.c_uint(96))
            call("nvmlDeviceGetUUID", handle, uuid, ctypes.c_uint(96))
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            call("nvmlDeviceGetCudaComputeCapability", handle, ctypes.byref(major), ctypes.byref(minor))
            memory = _Memory()
            call("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(memory))
            gpus.append(
                Gpu(index, _text(name), _text(uuid), (major.value, minor.value), round(memory.total / 2**30, 1))
            )
        return DriverReport(_text(version), driver_cuda, tuple(gpus), "nvml")
    finally:
        library.nvmlShutdown()


# --- nvidia-smi ----------------------------------------------------------------------------------

SMI_QUERY = "index,name,uuid,compute_cap,memory.total,driver_version"


def _run_smi() -> str:
    return subprocess.run(
        ["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def _from_smi(output: str) -> DriverReport:
    """A report from ``nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`` (memory in MiB)."""
    gpus, driver = [], None
    for line in output.splitlines():
        fields = [part.strip() for part in line.split(",")]
        if len(fields) != 6 or not fields[0].isdigit():
            continue
        index, name, uuid, capability, memory, driver = fields
        cap = parse_version(capability)
        gpus.append(
            Gpu(
                int(index),
                name,
                uuid,
                (cap[0], cap[1]) if len(cap) >= 2 else (0, 0),
                round(float(memory) / 1024, 1) if memory.replace(".", "", 1).isdigit() else 0.0,
            )
        )
    return DriverReport(driver, None, tuple(gpus), "nvidia-smi")


def probe(
    *,
    load_library: Callable[[], Any] | None = None,
    run_smi: Callable[[], str] | None = None,
    smi_present: Callable[[], bool] | None = None,
) -> DriverReport:
    """The driver and GPUs of this machine, without CUDA; never raises.

    The keyword arguments replace the boundary (the NVML library, the ``nvidia-smi`` command) for
    tests; by default NVML is loaded with ``ctypes``, and ``nvidia-smi`` is run when NVML does not load.
    """
    load_library = load_library or (lambda: ctypes.CDLL(NVML_LIBRARY))
    run_smi = run_smi or _run_smi
    smi_present = smi_present or (lambda: shutil.which("nvidia-smi") is not None)
    problems = []
    try:
        library = load_library()
    except OSError:
        library = None  # no NVIDIA driver installed (the usual case on a CPU machine)
    if library is not None:
        try:
            return _from_nvml(library)
        except (OSError, AttributeError) as exc:
            problems.append(f"NVML: {exc}")
    if smi_present():
        try:
            report = _from_smi(run_smi())
            if report.driver is not None:
                return report
            problems.append("nvidia-smi listed no GPU")
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            problems.append(f"nvidia-smi: {exc}")
    return DriverReport(error="; ".join(problems) or None)
