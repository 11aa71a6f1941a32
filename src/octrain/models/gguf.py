"""GGUF files as models: converted once into octrain's cache, then loaded like any folder.

A GGUF file is one file with quantized weights, a config and a tokenizer. transformers can
read it (with the ``gguf`` package installed), dequantizing every layer to dense weights, but
a model loaded that way refuses ``save_pretrained``, re-reads the whole file each time (tens of
seconds for the tokenizer alone) and is not something PEFT, TRL, vLLM or ``octrain export``
can point at. So a ``.gguf`` path is converted once: the dense weights are copied into a fresh
model built from the file's config (its quantization entry removed), saved in safetensors with
the tokenizer beside it, and that folder stands in for the file from then on.

The cache entry is keyed by the file's resolved path, size and modification time (cheap to
check on every run), records the file's SHA-256, and is written to a staging folder renamed
into place only once complete: a crash mid-conversion leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
MANIFEST_FILE = "octrain-gguf.json"  # written last: its presence marks a finished conversion
CONVERSION_VERSION = 1  # bump when the conversion below changes what it writes
SAVE_DTYPE = "bfloat16"  # dense copies of 4-8 bit weights lose nothing that matters in bf16


def is_gguf_path(path: str) -> bool:
    """True for a configured model path naming a GGUF file (by its suffix)."""
    return path.lower().endswith(GGUF_SUFFIX)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _cache_key(source: Path) -> str:
    stat = source.stat()
    identity = json.dumps([str(source), stat.st_size, stat.st_mtime_ns, CONVERSION_VERSION])
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def converted_dir(source: Path) -> Path:
    """Where the converted copy of ``source`` lives in the cache (whether or not it exists yet)."""
    from octrain.models.tiny import cache_root

    return cache_root() / "gguf" / f"{source.stem}-{_cache_key(source)}"


def is_converted(directory: Path) -> bool:
    return (directory / MANIFEST_FILE).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))


def _load_dense(source: Path) -> tuple[Any, Any]:
    """The model (dense weights) and tokenizer transformers reads from a GGUF file."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise ConfigError(f"{source}: reading a GGUF file needs the 'gguf' package (pip install gguf)") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype="float32")
    except (ValueError, KeyError, IndexError, NotImplementedError, OSError, EOFError, struct.error) as exc:
        # A cut-off file fails in the header reader (struct.error); transformers names an unsupported
        # architecture or quantization type in its message.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{source}: cannot be turned into dense weights ({first_line})") from exc
    return model, tokenizer


def convert_gguf(source: Path, target: Path, *, origin: str | None = None) -> dict[str, Any]:
    """Write ``source`` (a GGUF file) to ``target`` (must not exist) as a transformers folder.

    ``origin`` is what the manifest records as the source (default: the file's path), e.g. the
    wheel a fetched file came out of. Returns the manifest written beside the weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dense, tokenizer = _load_dense(source)
    config = dense.config
    # The loaded model remembers it came from GGUF and refuses to be saved; a fresh model of the
    # same config without that entry takes the same weights and saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = SAVE_DTYPE
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    state = dense.state_dict()
    fresh.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh = fresh.to(getattr(torch, SAVE_DTYPE))
    fresh.generation_config = dense.generation_config
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    manifest = {
        "source": origin or str(source),
        "source_sha256": sha256_file(source),
        "source_bytes": source.stat().st_size,
        "architecture": type(fresh).__name__,
        "parameters": sum(p.numel() for p in fresh.parameters()),
        "dtype": SAVE_DTYPE,
        "conversion_version": CONVERSION_VERSION,
        "files": {p.name: sha256_file(p) for p in sorted(target.iterdir()) if p.is_file()},
    }
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def convert_into(source: Path, target: Path, *, origin: str | None = None) -> Path:
    """Convert ``source`` into ``target`` through a staging folder renamed into place when complete."""
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        logger.info("converting %s into %s (once; later runs load the folder)", source, target)
        convert_gguf(source, staging / "model", origin=origin)
        try:
            os.rename(staging / "model", target)
        except OSError:
            # Another process finished the same conversion first; its copy is the same.
            if not is_converted(target):
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return target


def ensure_converted(path: str) -> Path:
    """The converted folder of a user's ``.gguf`` path, converting it on first use."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise ConfigError(f"{path}: no such GGUF file")
    return convert_into(source, converted_dir(source))


def verify(directory: Path) -> list[str]:
    """Files of a converted folder whose SHA-256 no longer matches its manifest (empty: intact)."""
    manifest = read_manifest(directory)
    bad = []
    for name, expected in manifest["files"].items():
        file = directory / name
        if not file.is_file() or sha256_file(file) != expected:
            bad.append(name)
    return bad
