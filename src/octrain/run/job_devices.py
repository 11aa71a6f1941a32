"""Which GPUs a job of a local parallel sweep may use: its own, and no other job's.

The sweep's GPUs (the *pool*) are cut into fixed groups of ``per_job`` devices: with pool
``0..7`` and two per job, the groups are ``0,1``, ``2,3``, ``4,5`` and ``6,7``. A job claims a
whole group by taking an exclusive ``flock`` on one lock file per GPU (all of the group's or
none), trying first the group its job number points at and then the others; when every group is
taken, it waits and tries again. It holds the locks for its whole length, and the kernel drops
them when it ends, however it ends. The locks live in one directory per machine, so that two
sweeps started side by side share the GPUs rather than doubling up on them.

A job learns its group through ``CUDA_VISIBLE_DEVICES``, set before anything in the process
starts CUDA; the processes it starts itself (vLLM engines, stage workers) inherit it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from octrain.core.errors import ConfigError

logger = logging.getLogger(__name__)

GPUS_ENV = "OCTRAIN_GPUS"  # the pool, e.g. "0,1,2,3"; else CUDA_VISIBLE_DEVICES, else nvidia-smi
LOCK_DIR_ENV = "OCTRAIN_GPU_LOCK_DIR"


def _split(devices: str) -> list[str]:
    return [d.strip() for d in devices.split(",") if d.strip()]


def gpu_pool(env: Mapping[str, str] | None = None, *, list_gpus: Callable[[], list[str]] | None = None) -> list[str]:
    """The GPUs a sweep started from this process shares out, as CUDA_VISIBLE_DEVICES entries.

    ``OCTRAIN_GPUS`` when set, else ``CUDA_VISIBLE_DEVICES`` when set (an empty one means no
    GPUs), else every GPU ``nvidia-smi`` lists; empty on a machine without GPUs.
    """
    env = os.environ if env is None else env
    for name in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return _split(env[name])
    return (list_gpus or _nvidia_smi_indices)()


def _nvidia_smi_indices() -> list[str]:
    # nvidia-smi rather than torch: torch.cuda caches its device count, which would then disagree
    # with the CUDA_VISIBLE_DEVICES a job is given afterwards.
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return _split(listing.replace("\n", ","))


def device_groups(pool: Sequence[str], per_job: int) -> list[list[str]]:
    """The pool cut into groups of ``per_job``; GPUs left over at the end go unused.

    Raises:
        ConfigError: ``per_job`` is below 1 or above the size of a non-empty pool.
    """
    if per_job < 1:
        raise ConfigError(f"hydra.launcher.gpus_per_node: must be at least 1 for a GPU sweep, got {per_job}")
    if pool and per_job > len(pool):
        raise ConfigError(
            f"hydra.launcher.gpus_per_node: {per_job} GPUs per job, but the sweep has {len(pool)} "
            f"({','.join(pool)}); lower it, or set {GPUS_ENV} or CUDA_VISIBLE_DEVICES"
        )
    return [list(pool[i : i + per_job]) for i in range(0, len(pool) - per_job + 1, per_job)]


def preferred_order(job_num: int, groups: int) -> list[int]:
    """The groups a job tries, first the one its number points at: job k starts at k mod groups."""
    first = job_num % groups
    return [(first + i) % groups for i in range(groups)]


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "octrain-gpu-locks")


def _try_lock_all(directory: Path, group: Sequence[str]) -> list[int] | None:
    """Exclusive locks on every GPU of ``group``, or None (and no locks held) if any is taken."""
    taken: list[int] = []
    for device in group:
        fd = os.open(directory / f"gpu-{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            for held in taken:
                os.close(held)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        taken.append(fd)
    return taken


@contextlib.contextmanager
def claim_devices(
    job_num: int,
    per_job: int,
    pool: Sequence[str],
    *,
    directory: Path | None = None,
    poll_s: float = 5.0,
    env: dict[str, str] | None = None,
) -> Iterator[list[str]]:
    """Hold a free group of ``per_job`` GPUs of ``pool`` and show the job only those.

    Sets ``CUDA_VISIBLE_DEVICES`` in ``env`` (``os.environ`` by default) for the block and yields
    the group; waits, checking every ``poll_s`` seconds, while every group is in use. With an
    empty pool (a machine without GPUs) it yields ``[]`` and changes nothing.
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
    groups = device_groups(pool, per_job)
    if not groups:
        logger.warning("no GPUs to share out (%s, CUDA_VISIBLE_DEVICES, nvidia-smi): the job runs without", GPUS_ENV)
        yield []
        return
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in preferred_order(job_num, len(groups)):
            held = _try_lock_all(directory, groups[index])
            if held is not None:
                break
        else:
            if not waited:
                logger.info("job #%d: every GPU group of %s is in use: waiting for one", job_num, ",".join(pool))
                waited = True
            time.sleep(poll_s)
            continue
        break
    group = groups[index]
    previous = env.get("CUDA_VISIBLE_DEVICES")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
    logger.info("job #%d: GPUs %s (CUDA_VISIBLE_DEVICES=%s)", job_num, ",".join(group), ",".join(group))
    try:
        yield group
    finally:
        if previous is None:
            env.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            env["CUDA_VISIBLE_DEVICES"] = previous
        for fd in held:
            os.close(fd)
