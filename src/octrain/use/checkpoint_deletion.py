"""Deleting a registered checkpoint: the rules every front end follows (``octrain checkpoints delete``).

Deleting takes the entry out of the registry (:mod:`octrain.use.registry`); with ``files`` it
also deletes what the stage left on disk and, for a Tinker checkpoint, on the service. The rules:

* only a stage directory inside the run root the entry is registered in is ever deleted: an
  entry is data, and a damaged or hand-edited one must not lead a delete elsewhere;
* the whole stage directory goes, not only the adapter in it: a ``done.json`` left without its
  adapter would make the pipeline skip the stage and ``rebuild`` register missing weights;
* files go under the run's lock (:func:`octrain.run.lock.run_lock`), so a run working in that
  directory stops the delete (a StageError) instead of losing its files midway;
* for a remote checkpoint the service's copies go first, then the local files: were the files to
  go first and the service call to fail, nothing would be left that names the checkpoints still
  stored (and billed) there. The Tinker key is checked before anyone is asked to confirm.

A front end passes ``confirm``, which is asked the question (what is about to be deleted) before
any file goes; ``None`` asks nobody (``--yes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from octrain.core.errors import RegistryError
from octrain.run.lock import run_lock
from octrain.run.stage_share import retire_directory
from octrain.use.registry import Checkpoint, Registry
from octrain.use.tinker_remote import connect, delete_remote, options_of, remote_paths_of

# Asked "delete ... ?" before files are deleted; True goes ahead.
Confirm = Callable[[str], bool]


@dataclass(frozen=True)
class Deletion:
    """What a delete did: the entry removed, and what of its files went with it."""

    entry: Checkpoint
    stage_dir: Path | None = None  # the stage directory deleted (resolved); None when the files stay
    remote: tuple[str, ...] = ()  # the tinker:// checkpoints deleted on the service


def stage_dir_inside(entry: Checkpoint, run_root: Path) -> Path:
    """The entry's stage directory, resolved; a RegistryError when it is outside ``run_root``."""
    stage_dir = entry.stage_dir.resolve()
    if not stage_dir.is_relative_to(Path(run_root).resolve()):
        raise RegistryError(f"{entry.name}: {stage_dir} is outside the run root {run_root}: delete it by hand")
    return stage_dir


def delete_checkpoint(
    registry: Registry,
    name: str,
    run_root: str | Path,
    *,
    files: bool = False,
    confirm: Confirm | None = None,
) -> Deletion | None:
    """Remove the checkpoint ``name`` from ``registry``, and with ``files`` what it left on disk and on Tinker.

    Returns what was deleted, or None when ``confirm`` said no (then nothing is).

    Raises:
        RegistryError: no such checkpoint, or its stage directory is outside ``run_root``.
        StageError: a run holds the run directory's lock.
        ConfigError: a remote checkpoint's files and no Tinker key (before anything is asked or deleted).
    """
    entry = registry.get(name)
    if not files:
        registry.delete(entry.name)
        return Deletion(entry)
    if entry.remote:
        return _delete_remote(registry, entry, Path(run_root), confirm)
    if confirm is not None and not confirm(f"delete {entry.stage_dir} (adapter, checkpoints, metrics)?"):
        return None
    stage_dir = stage_dir_inside(entry, Path(run_root))
    if stage_dir.is_dir():
        with run_lock(Path(entry.run_dir)):  # StageError while a run is working there
            retire_directory(stage_dir)
    registry.delete(entry.name)
    return Deletion(entry, stage_dir=stage_dir)


def _delete_remote(registry: Registry, entry: Checkpoint, run_root: Path, confirm: Confirm | None) -> Deletion | None:
    """A Tinker checkpoint with its files: its checkpoints on the service, then its stage directory."""
    stage_dir = stage_dir_inside(entry, run_root)  # checked before anything is deleted anywhere
    paths = remote_paths_of(entry)
    service = connect(options_of(entry))  # the key is checked before the question is asked
    if confirm is not None and not confirm(f"delete {entry.stage_dir} and, on Tinker, {', '.join(paths)}?"):
        return None
    # Under the run's lock for both halves: a run working there (StageError) stops this before
    # anything on the service is gone.
    with run_lock(Path(entry.run_dir)) if stage_dir.is_dir() else contextlib.nullcontext():
        deleted = delete_remote(service, paths)
        if stage_dir.is_dir():
            retire_directory(stage_dir)
    registry.delete(entry.name)
    return Deletion(entry, stage_dir=stage_dir, remote=tuple(deleted))
