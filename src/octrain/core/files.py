"""Reading and writing files safely: JSONL records, whole files and whole directories.

Two promises hold for everything octrain writes:

* a reader never sees a half-written file or directory that looks complete: it is written
  to a temporary sibling and renamed into place (``os.replace`` is atomic on POSIX);
* a malformed JSONL line is an error that names the file and the 1-based line number.

A kill between creating a temporary and renaming it leaves the temporary behind (a hidden
``.NAME.XXXX.tmp`` file or directory, or a ``.NAME.XXXX.old`` directory being retired);
:func:`remove_stray_temporaries` clears them when the next run takes over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from octrain.core.errors import DataFormatError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path`` and rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``target``; on success, move it into place as ``target``.

    The sibling is on the same file system, so the final rename is atomic. An existing
    ``target`` is first renamed aside (``rename`` cannot replace a non-empty directory) and
    deleted only once the new one is in place. On error the staging directory is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if not (target.exists() or target.is_symlink()):
            os.replace(staging, target)
            return
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, retired / "previous")
        try:
            os.replace(staging, target)
        except OSError:
            os.replace(retired / "previous", target)  # put the old one back
            retired.rmdir()
            raise
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# The names the writers above give their temporaries: a leading dot, the target's name, mkstemp's
# random part, then the suffix. Nothing else octrain or the libraries write looks like this.
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.(tmp|old)$")


def remove_stray_temporaries(directory: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Delete the temporaries a killed writer left in ``directory``; returns what was removed.

    Only call this while no other process writes there (the run lock held): a temporary is
    stray only when its writer is gone.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    candidates = root.rglob(".*") if recursive else root.glob(".*")
    removed = []
    for path in sorted(candidates, key=lambda p: len(p.parts)):
        if not _TEMPORARY_NAME.match(path.name) or any(path.is_relative_to(done) for done in removed):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` (e.g. the config key) goes into the error message.

    Raises:
        DataFormatError: the file is missing or is not UTF-8 text (a binary file, say).
    """
    source = Path(path)
    if not source.is_file():
        raise DataFormatError(f"{source}: file not found ({what})")
    data = source.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}) ({what})") from None


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_writer(path) as handle:
        handle.write(text)


def dumps_line(row: dict[str, Any]) -> str:
    """Serialise one record as a single JSONL line (no trailing newline)."""
    return json.dumps(row, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` to ``path`` atomically, one JSON object per line. Returns the count."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(dumps_line(row) + "\n")
            count += 1
    return count


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Raises:
        DataFormatError: a line is not UTF-8, not JSON, or is JSON but not an object.
    """
    source = Path(path)
    if not source.is_file():
        raise DataFormatError(f"{source}: file not found")
    # Read as bytes and decode line by line, so that a binary file is reported with its line.
    with source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"{source}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); expected one JSON object a line"
                ) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{source}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(value, dict):
                raise DataFormatError(f"{source}:{number}: expected a JSON object, got {type(value).__name__}")
            yield number, value


def read_jsonl(path: str | os.PathLike[str], parse: Callable[[dict[str, Any]], T]) -> list[T]:
    """Read a JSONL file, turning each object into a record with ``parse``.

    ``parse`` raises ``DataFormatError`` (or ``KeyError``/``TypeError``/``ValueError``) for a
    bad object; the error is re-raised with the file and line number in front.
    """
    records: list[T] = []
    for number, value in iter_jsonl(path):
        try:
            records.append(parse(value))
        except DataFormatError as exc:
            raise DataFormatError(f"{path}:{number}: {exc}") from None
        except KeyError as exc:
            raise DataFormatError(f"{path}:{number}: missing key {exc}") from None
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"{path}:{number}: {exc}") from None
    return records
