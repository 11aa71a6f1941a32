"""Sharing a finished stage between runs that run at the same time (the jobs of a parallel sweep).

A run copies a finished stage with its fingerprint from a sibling run instead of making it again
(``pipeline._reuse``). With runs going at once, a copy can race the sibling that made the stage:

* The sibling clears its stage to run it afresh (forced, or its settings changed) while the copy
  reads it. ``shutil.rmtree`` deletes file by file, so a copy could take ``done.json`` and miss
  the data: a half copy that looks finished. :func:`retire_directory` takes the directory off its
  path in one rename before deleting it, so a reader sees it whole or not at all.
* :func:`copy_finished_stage` copies into a hidden staging directory and moves it into place
  only if the source's ``done.json`` is the same file before and after the copy; otherwise the
  copy is dropped and the caller makes the stage itself.

Two jobs that need the same stage at the same moment, with no finished copy anywhere yet, both
make it: correct, each in its own directory, but the work is done twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from octrain.jsonl import atomic_directory

logger = logging.getLogger(__name__)


def retire_directory(path: Path) -> None:
    """Delete ``path``, first renaming it to a hidden sibling so that it leaves its path at once.

    The sibling is named as ``atomic_directory``'s leftovers are (``.NAME.*.old``), so that a run
    killed mid-delete has it removed by ``remove_stray_temporaries`` when it next starts.
    """
    retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, retired / "previous")
    shutil.rmtree(retired, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int, int, int, bytes] | None:
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, path.read_bytes())
    except FileNotFoundError:
        return None


class _SourceChanged(Exception):
    pass


def copy_finished_stage(source: Path, target: Path, marker: str = "done.json") -> bool:
    """Copy the finished stage ``source`` to ``target`` whole; False if ``source`` changed meanwhile.

    ``target`` appears only as a complete copy (``atomic_directory``). The copy counts only when
    ``source/marker`` is the same file, with the same bytes, before and after it: a stage retired,
    cleared or made again during the copy gives False, and ``target`` is left as it was.

    Raises:
        OSError: the copy failed while the source stayed as it was (a full disk, say).
    """
    before = _identity(source / marker)
    if before is None:
        return False
    try:
        with atomic_directory(target) as staging:
            try:
                shutil.copytree(source, staging, dirs_exist_ok=True)
            except (shutil.Error, FileNotFoundError):
                if _identity(source / marker) != before:
                    raise _SourceChanged from None
                raise
            if _identity(source / marker) != before or _identity(staging / marker) is None:
                raise _SourceChanged
            if (staging / marker).read_bytes() != before[4]:
                raise _SourceChanged
    except _SourceChanged:
        logger.info("%s changed while it was being copied: not reusing it", source)
        return False
    return True
