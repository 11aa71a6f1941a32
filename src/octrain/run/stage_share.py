"""Sharing a finished stage between runs that run at the same time (the jobs of a parallel sweep).

A run copies a finished stage with its fingerprint from a sibling run instead of making it again
(:mod:`octrain.run.reuse` decides when). With runs going at once, a copy can race the sibling that
made the stage:

* The sibling clears its stage to run it afresh (forced, or its settings changed) while the copy
  reads it. ``shutil.rmtree`` deletes file by file, so a copy could take ``done.json`` and miss
  the data: a half copy that looks finished. :func:`retire_directory` takes the directory off its
  path in one rename before deleting it, so a reader sees it whole or not at all.
* :func:`copy_finished_stage` copies into a hidden staging directory and moves it into place
  only if the source's ``done.json`` is the same file before and after the copy; otherwise the
  copy is dropped and the caller makes the stage itself.

Two jobs that need the same stage at the same moment, with no finished copy anywhere yet (the
jobs of a ``hydra/launcher=local_gpus`` sweep all start at once) would both make it. So the job
that starts a shareable stage first holds a claim on it, :func:`stage_claim`: an exclusive
``flock`` on a small file named by the stage and its fingerprint, beside the run directories
(``<sweep>/.pairs-<fingerprint>.making``, holding the maker's run directory and pid). A sibling that
needs the same stage with the same fingerprint finds the claim taken, waits until it is let go,
and then copies the finished stage instead of sampling it again. The kernel lets go of the lock
when its holder ends in any way, ``kill -9`` included: a sibling that finds no finished stage
after the wait (the maker failed) makes the stage itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from octrain.core.files import atomic_directory
from octrain.core.layout import DONE_FILE

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


def copy_finished_stage(source: Path, target: Path, marker: str = DONE_FILE) -> bool:
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


@dataclass
class Claim:
    """A stage this process may make now. ``waited_for``: the run that held it first, if we waited."""

    path: Path | None
    waited_for: str | None = None


def claim_path(run_dir: Path, stage: str, fingerprint: str) -> Path:
    """Where the claim on making ``stage`` with ``fingerprint`` lives: beside the run directory."""
    return run_dir.parent / f".{stage}-{fingerprint[:16]}.making"


@contextlib.contextmanager
def stage_claim(run_dir: Path, stage: str, fingerprint: str, *, wait: bool = True) -> Iterator[Claim]:
    """Hold the claim on making ``stage`` (with ``fingerprint``) for the block, waiting while a sibling holds it.

    The caller looks for a finished copy again once it waited (the sibling has probably just made
    one) and makes the stage only if there is none. With ``wait=False`` a claim held by another run
    is not waited for: the block runs without one (``Claim(None)``), as it does where no claim file
    can be written beside the run directory.
    """
    path = claim_path(run_dir, stage, fingerprint)
    waited_for = None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            logger.info("%s: cannot claim it in %s (%s): not waiting for sibling runs", stage, path.parent, exc)
            yield Claim(None)
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "another run"
                if not wait:
                    os.close(fd)
                    yield Claim(None)
                    return
                if waited_for is None:
                    logger.info(
                        "%s: %s is making it with the same settings and inputs: waiting for it, to reuse its output",
                        stage,
                        holder,
                    )
                waited_for = holder
                fcntl.flock(fd, fcntl.LOCK_EX)  # until the holder is done, or dead
            # The holder deletes the file before letting go, so that nobody waits on a file that is no
            # longer the claim: a lock on a deleted file is no claim, and the loop takes the new one.
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:
                os.close(fd)
                continue
        except BaseException:
            os.close(fd)
            raise
        break
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{run_dir} (pid {os.getpid()})\n".encode(), 0)
        yield Claim(path, waited_for)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the lock: a waiting sibling goes on
