"""Which training checkpoints are whole, so that a resume never starts from a half-written one.

The HF Trainer writes ``checkpoint-N/`` in place, file by file: the weights, then the optimizer
and scheduler, the RNG state, and ``trainer_state.json`` last. A kill or a full disk in the middle
leaves a folder that ``get_last_checkpoint`` picks as the newest, and resuming from it stops with
"Can't find a valid checkpoint". Here a checkpoint counts only when its state, weights and
optimizer are all there and readable; the incomplete ones are deleted (they would be written
again by the resumed training, and they hold disk space a full disk needs back).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin")
SHARDED_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _safetensors_whole(path: Path) -> bool:
    """The header parses and the file is as long as the tensors it declares."""
    try:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
    except (OSError, struct.error, ValueError):
        return False
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return path.stat().st_size >= 8 + header_size + max(ends, default=0)


def _zip_whole(path: Path) -> bool:
    """torch.save writes a zip archive whose directory comes last: a cut-off file has none."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


def _file_whole(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return _safetensors_whole(path)
    if path.suffix in (".pt", ".bin", ".pth"):
        return _zip_whole(path)
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _weights_whole(checkpoint: Path) -> bool:
    for name in WEIGHT_FILES:
        if (checkpoint / name).is_file():
            return _file_whole(checkpoint / name)
    for name in SHARDED_INDEX_FILES:
        index = checkpoint / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all((checkpoint / shard).is_file() and _file_whole(checkpoint / shard) for shard in shards)
    return False


def incomplete_reason(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is whole."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (OSError, ValueError):
        return f"{STATE_FILE} does not parse"
    if not isinstance(state, dict):
        return f"{STATE_FILE} does not parse"
    if not _weights_whole(checkpoint):
        return "its weights are missing or cut short"
    if not (checkpoint / OPTIMIZER_FILE).is_file() or not _file_whole(checkpoint / OPTIMIZER_FILE):
        return f"its {OPTIMIZER_FILE} is missing or cut short"
    return None


def last_complete_checkpoint(checkpoint_dir: str | Path, *, stage: str) -> str | None:
    """The newest whole ``checkpoint-N`` in ``checkpoint_dir``; incomplete ones are deleted (logged)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    chosen = None
    for _, checkpoint in sorted(found, reverse=True):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            chosen = chosen or checkpoint
            continue
        logger.warning("%s: %s is incomplete (%s), left by a crash: deleting it", stage, checkpoint, reason)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return str(chosen) if chosen else None
