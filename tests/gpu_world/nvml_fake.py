"""NVML as ``ctypes`` shows it (``CDLL("libnvidia-ml.so.1")``), for a machine that has no NVIDIA driver.

Each function takes the ``ctypes`` arguments octrain passes (string buffers, ``byref`` pointers,
``c_uint`` values) and fills them as the real library does; every call returns ``NVML_SUCCESS`` (0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

H100 = ("NVIDIA H100 80GB HBM3", "GPU-11111111-2222-3333-4444-555555555555", (9, 0), 81559 * 2**20)
T4 = ("Tesla T4", "GPU-66666666-7777-8888-9999-000000000000", (7, 5), 15360 * 2**20)


@dataclass
class FakeNvml:
    driver: str = "580.82.07"
    cuda: int = 13000  # nvmlSystemGetCudaDriverVersion_v2: 1000 x major + 10 x minor
    gpus: list[tuple[str, str, tuple[int, int], int]] = field(default_factory=lambda: [H100])
    calls: list[str] = field(default_factory=list)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)

    def nvmlInit_v2(self) -> int:
        return 0

    def nvmlShutdown(self) -> int:
        return 0

    def nvmlSystemGetDriverVersion(self, buffer: Any, length: Any) -> int:
        buffer.value = self.driver.encode()
        return 0

    def nvmlSystemGetCudaDriverVersion_v2(self, pointer: Any) -> int:
        pointer._obj.value = self.cuda
        return 0

    def nvmlDeviceGetCount_v2(self, pointer: Any) -> int:
        pointer._obj.value = len(self.gpus)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, pointer: Any) -> int:
        pointer._obj.value = index.value + 1  # a handle is an opaque non-null pointer
        return 0

    def _gpu(self, handle: Any) -> tuple[str, str, tuple[int, int], int]:
        return self.gpus[handle.value - 1]

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, length: Any) -> int:
        buffer.value = self._gpu(handle)[0].encode()
        return 0

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, length: Any) -> int:
        buffer.value = self._gpu(handle)[1].encode()
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> int:
        major._obj.value, minor._obj.value = self._gpu(handle)[2]
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle: Any, pointer: Any) -> int:
        pointer._obj.total = self._gpu(handle)[3]
        return 0


def pretend_machine(monkeypatch: Any, nvml: FakeNvml | None, cuda: str | None) -> None:
    """The calling test's process on a machine whose NVML is ``nvml`` (None: no NVIDIA driver, and no
    ``nvidia-smi``) with torch built for CUDA ``cuda`` (None: a CPU build). octrain caches the driver
    report per process: this drops it, and the test's fixture must drop it again when the test ends."""
    import ctypes
    import shutil

    import torch

    from octrain.core.devices import driver_report

    def load(name: str, *args: Any, **kwargs: Any) -> Any:
        if nvml is None:
            raise OSError(f"{name}: cannot open shared object file")
        return nvml

    monkeypatch.setattr(ctypes, "CDLL", load)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    driver_report.cache_clear()
