"""Tinker checkpoints on the service: their paths, the session to reach them, listing and deleting them.

A stage trained on Tinker keeps its weights on the service, named by ``tinker://`` paths:
``tinker://<run>/sampler_weights/<name>`` (what ``model.json`` records and the registry entry
names), ``tinker://<run>/weights/<name>`` (the training states ``tinker_progress.json`` names)
and ``tinker://<run>/external_weights/<name>`` (exports in Hugging Face format). This module
reads those paths (:func:`parse_path`), opens the process's session with the run's own
settings (:func:`connect`, :func:`options_of`), lists what the user keeps there
(:func:`list_remote`, :func:`unregistered_remote`) and deletes what a stage made
(:func:`remote_paths_of`, :func:`delete_remote`). Downloading one as a local adapter is
:mod:`octrain.use.tinker_download`'s.

The SDK is imported lazily (through :mod:`octrain.trainers.tinker_common`), so this module loads
without the ``[tinker]`` extra.
"""

from __future__ import annotations

import contextlib
from typing import Any

from octrain.core.config import TinkerOptions
from octrain.core.errors import ConfigError
from octrain.use.registry import Checkpoint, Registry

_LIST_PAGE = 100  # checkpoints asked for per request when listing


def _tinker_module() -> Any:
    from octrain.trainers.tinker_common import tinker_module

    return tinker_module()


def parse_path(path: str) -> Any:
    """``path`` as the SDK's ``ParsedCheckpointTinkerPath``; a ConfigError for anything else."""
    try:
        return _tinker_module().types.ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError:
        raise ConfigError(
            f"{path!r} is not a Tinker checkpoint path (tinker://<run>/weights|sampler_weights|external_weights/<name>)"
        ) from None


def check_downloadable(path: str) -> Any:
    """``path`` parsed, when the SDK can download it (a training state or external weights); else a ConfigError."""
    parsed = parse_path(path)
    if parsed.checkpoint_type == "sampler":
        raise ConfigError(
            f"{path}: Tinker downloads training states and external weights, not sampler weights; "
            "download the registry entry instead (its stage names its final training state)"
        )
    return parsed


def options_of(entry: Checkpoint | None) -> TinkerOptions:
    """The Tinker settings of the run that trained ``entry`` (its service URL), else the defaults."""
    if entry is None:
        return TinkerOptions()
    from octrain.use.model_choice import from_checkpoint

    with contextlib.suppress(Exception):  # an unreadable run config: the SDK's default service
        config = from_checkpoint(entry).run_config()
        if config is not None:
            return config.trainer.tinker
    return TinkerOptions()


def connect(options: TinkerOptions | None = None) -> Any:
    """The process's Tinker session, after the SDK and key checks (ConfigError naming TINKER_API_KEY)."""
    from octrain.trainers import tinker_common

    return tinker_common.connect(options or TinkerOptions())


def list_remote(service: Any) -> list[Any]:
    """Every checkpoint of the key's user on the service, newest first (``RestClient.list_user_checkpoints``,
    page by page): the SDK's ``types.Checkpoint`` objects."""
    rest = service.create_rest_client()
    found: list[Any] = []
    while True:
        page = rest.list_user_checkpoints(limit=_LIST_PAGE, offset=len(found)).result()
        found.extend(page.checkpoints)
        cursor = page.cursor
        if not page.checkpoints or cursor is None or len(found) >= cursor.total_count:
            return found


def remote_paths_of(entry: Checkpoint) -> list[str]:
    """The service-side checkpoints a remote stage made that a ``delete --files`` removes: its sampler
    weights and the training states its ``tinker_progress.json`` names. Intermediate states saved before
    the last one are not recorded anywhere; ``list --remote`` shows them as not recorded by any entry."""
    from octrain.trainers.tinker_loop import Progress

    paths = [entry.adapter]
    with contextlib.suppress(OSError, ValueError, TypeError):
        progress = Progress.load(entry.stage_dir)
        if progress is not None:
            paths += [p for p in (progress.sampler_path, progress.final_state_path, progress.state_path) if p]
    return list(dict.fromkeys(paths))


def unregistered_remote(registry: Registry, service: Any = None) -> list[Any]:
    """The user's checkpoints on Tinker that no registered stage records: those of other projects and
    runs, and the intermediate states of registered runs (``octrain checkpoints list --remote``).

    ``service`` defaults to :func:`connect`'s session, hence a ConfigError without a key.
    """
    known = {path for entry in registry.entries() if entry.remote for path in remote_paths_of(entry)}
    return [c for c in list_remote(service or connect()) if c.tinker_path not in known]


def delete_remote(service: Any, paths: list[str]) -> list[str]:
    """Delete ``paths`` on the service (``RestClient.delete_checkpoint_from_tinker_path``); those deleted.

    One that is already gone (HTTP 404) counts as deleted: the aim is that it does not exist.
    """
    tinker = _tinker_module()
    rest = service.create_rest_client()
    deleted = []
    for path in paths:
        parse_path(path)
        with contextlib.suppress(tinker.NotFoundError):
            rest.delete_checkpoint_from_tinker_path(path).result()
        deleted.append(path)
    return deleted
