"""One octrain process per run directory, and a check that the directory can be written.

Two processes on one run directory would commit the same chunks and checkpoints twice and clear
each other's work. The run holds an exclusive ``flock`` on ``run_dir/.lock`` for its whole length,
with its pid written in the file so that a second process can say who holds it. The kernel drops
the lock when its holder dies, even by ``kill -9``: a lock file left by a dead process is simply
taken over. Opening the lock file is also the first write into the run directory, so a read-only
directory is reported here, before any stage runs or any model loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from octrain.core.errors import StageError
from octrain.core.layout import LOCK_FILE
from octrain.core.storage_errors import StorageError, describe_write_failure

logger = logging.getLogger(__name__)


def _holder(fd: int) -> str:
    """The pid written in the lock file, waiting briefly for a holder that has just taken it."""
    for _ in range(20):
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "unknown"


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock until the block ends.

    Raises:
        StorageError: ``run_dir`` cannot be created or written (read-only, no permission, full).
        StageError: another live process holds the lock; the message names its pid.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        message = describe_write_failure(exc, run_dir)
        if message is None:
            raise
        raise StorageError(message) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(
                f"run directory {run_dir} is in use by another octrain process (pid {_holder(fd)}): wait for it to "
                "end, or stop it, and run again"
            ) from None
        previous = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        if previous and previous != str(os.getpid()):
            # flock is free, so its holder has ended (a crash or a kill): its lock file is ours now.
            state = "still running but no longer holds it" if _alive(previous) else "which has ended"
            logger.info("run %s: taking over the lock left by pid %s, %s", run_dir, previous, state)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays, so that no two processes lock two files
