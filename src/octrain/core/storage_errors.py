"""Turn a failed write (full disk, read-only place) into one line that names the path.

Writing can fail deep inside a library: Python raises ``OSError`` with an errno and usually the
file name, but torch's checkpoint writer reports a full disk as ``RuntimeError: [enforce fail at
inline_container.cc:...]`` or ``PytorchStreamWriter failed writing file``, and safetensors as an
``IoError`` with ``os error 28``, none of them naming disk space or the file. These are not bugs
but the machine's state, which the user can fix, so they become :class:`StorageError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from octrain.core.errors import OctrainError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# How libraries that hide the OSError word a full disk.
_FULL_WORDING = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")
# torch's zip writer gives no errno; its failure counts as a full disk only when the disk is nearly full.
_TORCH_WRITER_WORDING = ("inline_container.cc", "pytorchstreamwriter failed", "file write failed")
_NEARLY_FULL_BYTES = 64 * 1024 * 1024


class StorageError(OctrainError, OSError):
    """The run cannot write where it must: no space left, or a read-only place."""


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def describe_write_failure(exc: BaseException, where: Path) -> str | None:
    """One line for a write that failed for lack of space or permission, or None for any other error.

    ``where`` names the place when the error itself does not (torch and safetensors never do).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the cause may be what names the errno
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL + _NOT_WRITABLE:
            path = current.filename or where
            if current.errno in _FULL:
                return f"no space left on device writing {path}: free some space and run the same command again"
            if current.errno == errno.EROFS:
                return f"cannot write {path}: read-only file system"
            return f"{path}: permission denied"  # the same errno for reading, so no verb
        text = str(current).lower()
        if any(words in text for words in _FULL_WORDING):
            return f"no space left on device writing {where}: free some space and run the same command again"
        if any(words in text for words in _TORCH_WRITER_WORDING):
            free = _free_bytes(where)
            if free is not None and free < _NEARLY_FULL_BYTES:
                return f"no space left on device writing {where}: free some space and run the same command again"
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def write_failures_reported(where: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a full-disk or permission failure inside the block as a one-line :class:`StorageError`."""
    try:
        yield
    except OctrainError:
        raise
    except Exception as exc:
        message = describe_write_failure(exc, Path(where))
        if message is None:
            raise
        raise StorageError(message) from exc
