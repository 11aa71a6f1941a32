"""Record what a process does with CUDA, into ``$OCTRAIN_CUDA_LOG_DIR/<pid>.json`` when it exits.

Events, in order: each ``torch.cuda`` call that initialises CUDA (a context, or the driver's
``cuInit``), each call of ``torch.cuda.is_available()`` (initialising unless
``PYTORCH_NVML_BASED_CUDA_CHECK=1`` held at the call, as in torch 2.13's ``torch/cuda/__init__.py``),
and, from the fake ``vllm`` beside this file, each engine start (``LLM(...)``) and shutdown.
The real functions still run: this records, it does not replace (except under ``OCTRAIN_PRETEND_GPU``,
see :func:`pretend`, where ``is_available()`` answers True).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

EVENTS: list[dict[str, Any]] = []
PRETEND = {"gpu": False}

# Every torch.cuda function that creates a context or runs cuInit whatever the environment says.
INITIALISING = (
    "init",
    "_lazy_init",
    "current_device",
    "set_device",
    "get_device_capability",
    "get_device_properties",
    "get_device_name",
    "is_bf16_supported",
    "mem_get_info",
    "synchronize",
    "max_memory_allocated",
)


def record(event: str, **fields: Any) -> None:
    EVENTS.append({"event": event, **fields})


def _recorded(name: str, function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record("cuda", call=name, initialises=True)
        return function(*args, **kwargs)

    return wrapper


def install() -> None:
    import torch

    for name in INITIALISING:
        setattr(torch.cuda, name, _recorded(name, getattr(torch.cuda, name)))
    real_available = torch.cuda.is_available

    @functools.wraps(real_available)
    def is_available() -> bool:
        nvml = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"
        record("cuda", call="is_available", initialises=not nvml)
        return True if PRETEND["gpu"] else real_available()

    torch.cuda.is_available = is_available
    atexit.register(dump)


def pretend(card: str) -> None:
    """This process (not its children) sees one ``card`` (``H100`` or ``T4``) through NVML, with
    driver 580, and a CUDA 13.0 build of torch."""
    import ctypes

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import nvml_fake

    gpu = getattr(nvml_fake, card)

    PRETEND["gpu"] = True
    torch.version.cuda = "13.0"
    real_cdll = ctypes.CDLL

    def cdll(name: str, *args: Any, **kwargs: Any) -> Any:
        return nvml_fake.FakeNvml(gpus=[gpu]) if name == "libnvidia-ml.so.1" else real_cdll(name, *args, **kwargs)

    ctypes.CDLL = cdll  # type: ignore[misc]


def dump() -> None:
    directory = Path(os.environ["OCTRAIN_CUDA_LOG_DIR"])
    payload = {"pid": os.getpid(), "argv": sys.argv, "pretend": PRETEND["gpu"], "events": EVENTS}
    (directory / f"{os.getpid()}.json").write_text(json.dumps(payload, default=str))
