"""Tinker checkpoints as local files: download a trained model as a PEFT LoRA adapter, list and delete remote ones.

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
(``adapter_config.json`` with its rank and alpha, read from the file and never assumed, and
safetensors weights whose LoRA shapes match that rank). ``base_model_name_or_path`` is set to the
checkpoint's base model, the service's own value kept in ``octrain_download.json``. Only then is
the directory renamed into place: a failed or interrupted download leaves no folder behind, and
``force`` replaces an existing one only once the new one is complete.

The default target is ``<stage dir>/downloaded_adapter``, next to the stage's ``model.json``:
:func:`local_copy` finds it there, so the registry entry stays the remote one (``rebuild`` keeps
agreeing with the run directories) and ``octrain checkpoints info`` shows the local copy.

The SDK is imported lazily (through :mod:`octrain.trainers.tinker_common`), so this module loads
without the ``[tinker]`` extra.
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
from octrain.core.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, DOWNLOADED_ADAPTER_DIR
from octrain.use.registry import Checkpoint

logger = logging.getLogger(__name__)

DOWNLOAD_RECORD = "octrain_download.json"  # in the downloaded folder: where it came from
# The SDK CLI's own lifetime for the temporary export (the shortest TTL the service accepts).
EXPORT_TTL_SECONDS = 3600
# Re-sign the URLs when they have less than this left: a large file must not start on a dying URL.
RESIGN_MARGIN = datetime.timedelta(minutes=5)
_CHUNK = 1 << 20
_URL_TIMEOUT_S = 60
_LIST_PAGE = 100


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


def _tinker_types() -> Any:
    from octrain.trainers.tinker_common import tinker_module

    return tinker_module().types


def parse_path(path: str) -> Any:
    """``path`` as the SDK's ``ParsedCheckpointTinkerPath``; a ConfigError for anything else."""
    try:
        return _tinker_types().ParsedCheckpointTinkerPath.from_tinker_path(path)
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


def state_path_of(entry: Checkpoint) -> str:
    """The training-state path a remote entry can be exported from.

    A registry entry names sampler weights, which the SDK cannot download; the stage's
    ``tinker_progress.json`` names the final state saved with them, from the same weights.
    """
    from octrain.core.layout import TINKER_PROGRESS_FILE
    from octrain.trainers.tinker_common import Progress

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


def check_adapter(folder: Path) -> tuple[int, float, dict[str, Any]]:
    """``folder`` as a PEFT LoRA adapter: its rank, alpha and config; a DataFormatError naming what is wrong.

    The rank and alpha come from ``adapter_config.json`` (the scaling is alpha / r, or alpha / sqrt(r)
    with ``use_rslora``; whatever Tinker chose, PEFT reads it from this file), and the LoRA matrices in
    the safetensors file must have that rank: a truncated or foreign file fails here, not at load time.
    """
    config_file = folder / ADAPTER_CONFIG_FILE
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if not config_file.is_file():
        raise DataFormatError(f"the checkpoint is not a PEFT adapter: no {ADAPTER_CONFIG_FILE} (files: {present})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{ADAPTER_CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DataFormatError(f"{ADAPTER_CONFIG_FILE} is not a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise DataFormatError(f"{ADAPTER_CONFIG_FILE}: peft_type {config['peft_type']!r}, octrain loads LoRA adapters")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise DataFormatError(f"{ADAPTER_CONFIG_FILE}: 'r' must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise DataFormatError(f"{ADAPTER_CONFIG_FILE}: 'lora_alpha' must be a positive number, got {alpha!r}")
    weights = folder / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise DataFormatError(f"the checkpoint has no {ADAPTER_WEIGHTS_FILE} (files: {present})")
    _check_weights(weights, rank, config.get("rank_pattern") or {})
    return rank, float(alpha), config


def _check_weights(weights: Path, rank: int, rank_pattern: dict[str, Any]) -> None:
    from safetensors import safe_open

    try:
        # safe_open checks the header against the file's length: a truncated file fails to open.
        with safe_open(str(weights), framework="pt") as tensors:
            shapes = {key: tensors.get_slice(key).get_shape() for key in tensors.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError, and OSError
        raise DataFormatError(f"{weights.name} is not a readable safetensors file ({exc})") from None
    lora_a = {key: shape for key, shape in shapes.items() if ".lora_A." in key}
    if not lora_a:
        raise DataFormatError(f"{weights.name} holds no LoRA matrices (keys like '...lora_A.weight')")
    if not rank_pattern:  # per-module ranks would make a single expected rank wrong
        wrong = [key for key, shape in lora_a.items() if not shape or shape[0] != rank]
        if wrong:
            raise DataFormatError(f"{weights.name}: {wrong[0]} has shape {lora_a[wrong[0]]}, not rank {rank}")


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


def downloaded_record(folder: Path) -> dict[str, Any] | None:
    """What :func:`download` noted in ``folder``, or None when it is not a download of octrain's."""
    with contextlib.suppress(OSError, ValueError):
        value = json.loads((folder / DOWNLOAD_RECORD).read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None
    return None


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
    from octrain.trainers.tinker_common import Progress

    paths = [entry.adapter]
    with contextlib.suppress(OSError, ValueError, TypeError):
        progress = Progress.load(entry.stage_dir)
        if progress is not None:
            paths += [p for p in (progress.sampler_path, progress.final_state_path, progress.state_path) if p]
    return list(dict.fromkeys(paths))


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


def _tinker_module() -> Any:
    from octrain.trainers.tinker_common import tinker_module

    return tinker_module()
