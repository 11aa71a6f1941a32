"""Tinker checkpoints as local files: download a trained model as a PEFT LoRA adapter.

A stage trained on Tinker leaves ``model.json`` with ``remote="tinker://<run>/sampler_weights/<name>"``
and ``tinker_progress.json`` naming the final training state, ``tinker://<run>/weights/<name>``.
The ``tinker`` SDK this version of octrain is built against (0.38) downloads no sampler
checkpoint: its own ``tinker checkpoint download`` refuses them. What it downloads is an
*external weights* checkpoint, which a training state is exported to:

1. ``ServiceClient.create_training_client_from_state(state)`` opens a training session on the
   stage's final state (the same weights the sampler checkpoint was saved from);
2. ``TrainingClient.save_weights_external(name, ttl_seconds)`` exports them in Hugging Face
   (PEFT) format to ``tinker://<run>/external_weights/<name>``, unencrypted (no age recipients);
3. ``RestClient.get_external_weights_urls(path)`` signs one download URL per file, keyed by the
   file's path inside the checkpoint, valid until ``expires`` (re-signed when it runs out);
4. the temporary export is deleted afterwards (``delete_checkpoint_from_tinker_path``), and
   expires on its own after an hour if that fails.

Each file is streamed with the standard library into a temporary directory beside the target and
checked against its ``Content-Length``; the folder is then validated as a PEFT LoRA adapter
(:mod:`octrain.use.peft_adapter_check`: ``adapter_config.json`` with its rank and alpha, read from
the file and never assumed, and safetensors weights whose LoRA shapes match that rank).
``base_model_name_or_path`` is set to the checkpoint's base model, the service's own value kept
in ``octrain_download.json``. Only then is the directory renamed into place: a failed or
interrupted download leaves no folder behind, and ``force`` replaces an existing one only once
the new one is complete.

The default target is ``<stage dir>/downloaded_adapter``, next to the stage's ``model.json``:
:func:`local_copy` finds it there, so the registry entry stays the remote one (``rebuild`` keeps
agreeing with the run directories) and ``octrain checkpoints info`` shows the local copy.

Listing and deleting the checkpoints on the service, and reading their paths, is
:mod:`octrain.use.tinker_remote`'s. The SDK is imported lazily (through
:mod:`octrain.trainers.tinker_common`), so this module loads without the ``[tinker]`` extra.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import logging
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from octrain.core.config import TinkerOptions
from octrain.core.errors import ConfigError, DataFormatError, RegistryError
from octrain.core.files import write_text_atomic
from octrain.core.layout import ADAPTER_CONFIG_FILE, DOWNLOADED_ADAPTER_DIR
from octrain.use.peft_adapter_check import check_adapter
from octrain.use.registry import Checkpoint
from octrain.use.tinker_remote import check_downloadable, connect, options_of, parse_path

logger = logging.getLogger(__name__)

DOWNLOAD_RECORD = "octrain_download.json"  # in the downloaded folder: where it came from
# The SDK CLI's own lifetime for the temporary export (the shortest TTL the service accepts).
EXPORT_TTL_SECONDS = 3600
# Re-sign the URLs when they have less than this left: a large file must not start on a dying URL.
RESIGN_MARGIN = datetime.timedelta(minutes=5)
_CHUNK = 1 << 20
_URL_TIMEOUT_S = 60


@dataclass(frozen=True)
class DownloadedAdapter:
    """A downloaded checkpoint: the folder, and what its adapter config says."""

    path: Path
    source: str  # the tinker:// path asked for (sampler weights, or a weights / external_weights path)
    exported: str  # the external_weights path the files came from
    base_model: str
    rank: int
    alpha: float
    original_base: str | None  # base_model_name_or_path as the service wrote it
    files: tuple[str, ...]


def state_path_of(entry: Checkpoint) -> str:
    """The training-state path a remote entry can be exported from.

    A registry entry names sampler weights, which the SDK cannot download; the stage's
    ``tinker_progress.json`` names the final state saved with them, from the same weights.
    """
    from octrain.core.layout import TINKER_PROGRESS_FILE
    from octrain.trainers.tinker_loop import Progress

    if not entry.remote:
        raise RegistryError(f"{entry.name} is a local checkpoint: its adapter is already in {entry.adapter}")
    if parse_path(entry.adapter).checkpoint_type != "sampler":
        return entry.adapter  # already a training state or an export
    try:
        progress = Progress.load(entry.stage_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise DataFormatError(f"{entry.stage_dir / TINKER_PROGRESS_FILE}: cannot be read ({exc})") from exc
    if progress is None or not progress.final_state_path:
        raise RegistryError(
            f"{entry.name}: {entry.stage_dir / TINKER_PROGRESS_FILE} names no final training state, and Tinker "
            f"downloads training states, not sampler weights ({entry.adapter})"
        )
    return progress.final_state_path


def default_target(entry: Checkpoint) -> Path:
    return entry.stage_dir / DOWNLOADED_ADAPTER_DIR


def local_copy(entry: Checkpoint) -> Path | None:
    """The downloaded adapter of a remote entry, when one is in its default place and of these weights.

    A download of an earlier training of the same stage (its record names another state) is no copy
    of this checkpoint, so it is not shown as one.
    """
    target = default_target(entry)
    record = downloaded_record(target)
    if record is None or not (target / ADAPTER_CONFIG_FILE).is_file():
        return None
    try:
        current = state_path_of(entry)
    except (RegistryError, DataFormatError, ConfigError):
        return None
    return target if record.get("source") == current else None


def _safe_name(name: str) -> PurePosixPath:
    """A file name from the service as a relative path inside the download, or a DataFormatError.

    The names are data from the network: an absolute path, ``..``, a backslash or a drive letter
    could otherwise write outside the folder.
    """
    relative = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\0" in name
        or relative.is_absolute()
        or ":" in relative.parts[0]
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise DataFormatError(f"the checkpoint holds an unsafe file name {name!r}: refusing to write it")
    return relative


def _fetch(url: str, destination: Path) -> int:
    """Stream ``url`` into ``destination``; the bytes written. A short body is an error, not a file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response, destination.open("wb") as out:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                written += len(chunk)
    except http.client.IncompleteRead as exc:
        raise DataFormatError(
            f"{destination.name}: the download broke off after {written + len(exc.partial)} bytes"
        ) from None
    except urllib.error.HTTPError as exc:
        raise DataFormatError(f"{destination.name}: the download was refused (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataFormatError(f"{destination.name}: the download failed ({reason})") from None
    if expected is not None and expected.isdigit() and int(expected) != written:
        raise DataFormatError(f"{destination.name}: got {written} of {expected} bytes: the download is truncated")
    return written


def _download_export(rest: Any, export_path: str, into: Path) -> list[str]:
    """Every file of an external-weights checkpoint into ``into``; their names, sorted."""
    response = rest.get_external_weights_urls(export_path).result()
    if not response.urls:
        raise DataFormatError(f"{export_path}: the export holds no files")
    names = sorted(response.urls)
    targets = {name: into / _safe_name(name) for name in names}  # all names checked before any byte is written
    encrypted = [name for name in names if name.endswith(".age")]
    if encrypted:
        raise DataFormatError(f"{export_path}: {', '.join(encrypted)} are age-encrypted; octrain downloads plain ones")
    for name in names:
        if datetime.datetime.now(datetime.UTC) >= _aware(response.expires) - RESIGN_MARGIN:
            response = rest.get_external_weights_urls(export_path).result()
        if name not in response.urls:
            raise DataFormatError(f"{export_path}: {name} disappeared from the export while downloading")
        _fetch(response.urls[name], targets[name])
    return names


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


@contextlib.contextmanager
def _exported(service: Any, rest: Any, source: str) -> Iterator[str]:
    """The external-weights path to download ``source`` from; a temporary export is deleted after."""
    if check_downloadable(source).checkpoint_type == "external":
        yield source
        return
    trainer = service.create_training_client_from_state(
        source, user_metadata={"created_by": "octrain checkpoints download"}
    ).result()
    name = f"octrain-download-{uuid.uuid4().hex[:8]}"
    export = trainer.save_weights_external(name, ttl_seconds=EXPORT_TTL_SECONDS).result().path
    try:
        yield export
    finally:
        try:
            rest.delete_checkpoint_from_tinker_path(export).result()
        except Exception as exc:  # the download is what matters; the export expires on its own
            logger.warning("tinker: could not delete the temporary export %s (%s); it expires in 1 h", export, exc)


def _replace(staged: Path, target: Path, *, force: bool) -> None:
    """Move the complete ``staged`` folder to ``target``; an old ``target`` goes only with ``force``."""
    if target.exists() or target.is_symlink():
        if not force:
            raise ConfigError(f"{target} exists: pass --force to replace it, or --out another folder")
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)  # a rename, not a delete: a failure below can still put it back
        try:
            staged.rename(target)
        except OSError:
            old.rename(target)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        staged.rename(target)


def download(
    source: str,
    base_model: str,
    target: Path,
    *,
    force: bool = False,
    service: Any = None,
    options: TinkerOptions | None = None,
    announce: Callable[[str], None] | None = None,
) -> DownloadedAdapter:
    """Download the checkpoint at ``source`` (a ``weights`` or ``external_weights`` path) into ``target``.

    ``base_model`` is what the adapter is written for (``base_model_name_or_path``). ``announce``
    hears each step (the CLI prints them). Raises ConfigError (no key, a target that exists
    without ``force``), DataFormatError (a truncated, unsafe or non-LoRA download); nothing is
    left at ``target`` unless the download succeeded.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not force:  # before any request
        raise ConfigError(f"{target} exists: pass --force to replace it, or --out another folder")
    check_downloadable(source)
    service = service or connect(options)
    rest = service.create_rest_client()
    say = announce or (lambda _: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the final rename stays on one file system and is atomic.
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        if parse_path(source).checkpoint_type == "training":
            say(f"exporting {source} as external weights (a short training session on its base model)")
        with _exported(service, rest, source) as export:
            say(f"downloading {export}")
            files = _download_export(rest, export, staged)
        rank, alpha, config = check_adapter(staged)
        original = config.get("base_model_name_or_path")
        if original != base_model:
            # Tinker writes its own name for the base; the local samplers load the base named here.
            config["base_model_name_or_path"] = base_model
            write_text_atomic(staged / ADAPTER_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        result = DownloadedAdapter(
            path=target,
            source=source,
            exported=export,
            base_model=base_model,
            rank=rank,
            alpha=alpha,
            original_base=original if isinstance(original, str) else None,
            files=tuple(files),
        )
        record = {**result.__dict__, "path": str(target), "files": list(files), "downloaded": time.time()}
        write_text_atomic(staged / DOWNLOAD_RECORD, json.dumps(record, indent=2) + "\n")
        _replace(staged, target, force=force)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return result


def download_entry(
    entry: Checkpoint,
    target: Path | None = None,
    *,
    force: bool = False,
    service: Any = None,
    announce: Callable[[str], None] | None = None,
) -> DownloadedAdapter:
    """Download a remote registry entry (its stage's final training state) as a PEFT adapter."""
    source = state_path_of(entry)
    return download(
        source,
        entry.base_model,
        target or default_target(entry),
        force=force,
        service=service,
        options=options_of(entry),
        announce=announce,
    )


def download_path(
    path: str,
    target: Path,
    *,
    force: bool = False,
    announce: Callable[[str], None] | None = None,
) -> DownloadedAdapter:
    """Download a ``tinker://`` training state or export that no registered run made, into ``target``.

    The adapter is written for the base model the service records for ``path``. The path and the
    target are checked before the key is, and before any request.
    """
    check_downloadable(path)
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: pass --force to replace it, or --out another folder")
    service = connect()
    base = service.create_rest_client().get_weights_info_by_tinker_path(path).result().base_model
    return download(path, base, target, force=force, service=service, announce=announce)


def downloaded_record(folder: Path) -> dict[str, Any] | None:
    """What :func:`download` noted in ``folder``, or None when it is not a download of octrain's."""
    with contextlib.suppress(OSError, ValueError):
        value = json.loads((folder / DOWNLOAD_RECORD).read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None
    return None


def local_copy_info(entry: Checkpoint) -> dict[str, Any] | None:
    """A remote entry's downloaded adapter as its download record describes it (path, rank, alpha,
    source); None for a local entry, or a remote one with no copy of these weights."""
    if not entry.remote:
        return None
    folder = local_copy(entry)
    record = downloaded_record(folder) if folder else None
    if folder is None or record is None:
        return None
    return {
        "path": str(folder),
        "rank": record.get("rank"),
        "alpha": record.get("alpha"),
        "source": record.get("source"),
    }
