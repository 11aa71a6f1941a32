"""Where the shards of a data-parallel sampler run: each engine's GPUs, or its share of the CPU cores.

The parent counts GPUs without touching CUDA (``CUDA_VISIBLE_DEVICES``, or NVML through
``torch.cuda.device_count()``), plans one group of consecutive GPUs per shard before anything
starts (:func:`plan_devices`, a :class:`~octrain.core.errors.ConfigError` when there are too few),
and gives each child process an environment that shows it only its own devices
(:func:`child_environment`). :func:`split_evenly` cuts a call into one contiguous part per shard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from octrain.core.config import SamplerBackend, SamplerConfig
from octrain.core.errors import ConfigError


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries for its children.

    ``CUDA_VISIBLE_DEVICES`` when it is set (indexes or UUIDs, as given); otherwise one index per
    GPU that ``torch.cuda.device_count()`` sees, which asks NVML and creates no CUDA context here
    (the parent stays free of CUDA, its children get the whole memory of their devices).
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = []
        for entry in (part.strip() for part in listed.split(",")):
            # CUDA stops at the first invalid entry ("-1" hides every GPU): so do we.
            if not entry or entry.startswith("-"):
                break
            devices.append(entry)
        return devices
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def device_groups(visible: Sequence[str], tensor_parallel: int, shards: int) -> list[list[str]]:
    """The devices of each of ``shards`` engines: consecutive groups of ``tensor_parallel`` GPUs.

    Consecutive, because neighbouring GPU indexes usually share the fastest links (NVLink, the
    same PCIe switch), which tensor parallelism needs and data parallelism does not.

    >>> device_groups(["0", "1", "2", "3"], tensor_parallel=2, shards=2)
    [['0', '1'], ['2', '3']]

    Raises:
        ConfigError: fewer GPUs than ``shards * tensor_parallel``.
    """
    needed = shards * tensor_parallel
    if needed > len(visible):
        raise ConfigError(
            f"sampler.data_parallel_size={shards} engines of sampler.vllm.tensor_parallel_size={tensor_parallel} "
            f"GPU(s) each need {needed} GPUs, but this process sees {len(visible)}"
            + (f" ({','.join(visible)})" if visible else "")
            + ": lower sampler.data_parallel_size or set CUDA_VISIBLE_DEVICES"
        )
    return [list(visible[i * tensor_parallel : (i + 1) * tensor_parallel]) for i in range(shards)]


def plan_devices(sampler: SamplerConfig) -> list[list[str] | None]:
    """Each shard's GPUs for this config, or None for a CPU shard; checked before anything starts.

    The transformers backend on ``device=cpu``, or any backend on a machine without GPUs, runs
    CPU shards, as many as asked for. Otherwise every shard needs its own GPU (transformers) or
    its own ``tensor_parallel_size`` GPUs (vLLM).
    """
    shards = sampler.data_parallel_size
    if sampler.backend is SamplerBackend.hf and sampler.hf.device == "cpu":
        return [None] * shards
    visible = visible_gpus()
    if not visible:
        return [None] * shards
    tensor_parallel = sampler.vllm.tensor_parallel_size if sampler.backend is SamplerBackend.vllm else 1
    return list(device_groups(visible, tensor_parallel, shards))


def child_environment(devices: list[str] | None, index: int, shards: int) -> dict[str, str]:
    """The environment of shard ``index``: its own GPUs, or its share of the CPU cores."""
    # The child imports this same octrain, wherever the parent found it (a checkout, a test path):
    # the folder above the package, two levels up from this file (octrain/samplers/).
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        return env
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU shard must not grab a GPU the others do not see
    # N processes that each start one thread per core fight over the cores: give each its own
    # slice of them (torch's thread count; vLLM's CPU build binds its threads to the listed cores).
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    start, stop = split_evenly(len(cores), shards)[index]
    mine = cores[start:stop] or cores  # more shards than cores: they share them all
    env.setdefault("OMP_NUM_THREADS", str(len(mine)))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(core) for core in mine))
    return env


def split_evenly(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges over ``count`` items, sizes within one of each other.

    Contiguous rather than round-robin: the K repeats of a prompt sit next to each other, and one
    engine answering all of them computes their shared prefix once (vLLM's prefix cache).
    """
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (part < extra)
        bounds.append((start, stop))
        start = stop
    return bounds
