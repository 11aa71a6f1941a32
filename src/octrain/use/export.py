"""Export a trained character so that it runs without octrain: merged weights, the adapter alone, or GGUF.

``octrain export NAME --merged DIR`` folds the final LoRA adapter into the base weights
(:func:`octrain.trainers.merge.fold_adapter`, exact in float32) and saves a plain transformers
checkpoint: ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer with its chat template, in the dtype asked for (the base's own by default).
``--adapter DIR`` writes the adapter in PEFT's format with the same tokenizer beside it.
Either loads with ``from_pretrained`` (transformers, PEFT) or ``vllm serve`` on a machine
where octrain was never installed, so nothing octrain-specific may stay in the files: a
``builtin:tiny-qwen3`` base is written as the directory it resolves to, and an adapter's
``base_model_name_or_path`` names the Hub id the run trained on, not a local cache path.
``--gguf DIR`` writes the same fold as one GGUF file for llama.cpp and Ollama
(:mod:`octrain.use.gguf_export`, in f16, bf16, q8_0 or f32) with an Ollama ``Modelfile``
beside it (:mod:`octrain.use.ollama`).

Every export is checked before it is handed out (``check=False``, ``--no-check``, skips it):
the trained model (base + adapter through PEFT) answers a few prompts greedily
(:func:`octrain.use.parity.reference_of`), the export is loaded back from the files just
written, by transformers alone (a GGUF dequantized by transformers' GGUF loader), and must
render the same prompts, tokenize them the same, stop at the same tokens and pick the same
tokens wherever the trained model's choice was not a near-tie (:func:`octrain.use.parity.check`).
A difference is a :class:`~octrain.use.parity.ParityError` naming it.

All write into a hidden sibling of DIR, check it there, and rename it into place at the end
(:func:`octrain.core.files.atomic_directory`), so neither a killed export nor one that failed
its check leaves a directory that looks complete. A non-empty DIR is refused unless ``force``
is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from octrain.core.errors import ConfigError
from octrain.core.files import atomic_directory
from octrain.core.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from octrain.models.builtin import BUILTIN_PREFIX, resolve_model_path
from octrain.use import parity
from octrain.use.gguf_export import DEFAULT_GGUF_TYPE
from octrain.use.model_choice import ChosenModel
from octrain.use.parity import Candidate, ParityReport, Reference
from octrain.use.trained_model import adapter_of, load_tokenizer

DTYPES = ("bfloat16", "float16", "float32")

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
        kind: ``merged``, ``adapter`` or ``gguf``.
        base_model: the base as the files name it (a Hub id, or a local directory).
        dtype: the weights' dtype (merged), their GGUF type (``f16``, ``q8_0``, ...), or None (an
            adapter keeps the dtype it was saved in).
        files: the file names in ``directory``, sorted.
        parity: what the parity check found, or None when it was skipped.
    """

    directory: Path
    kind: str
    base_model: str
    dtype: str | None
    files: tuple[str, ...]
    parity: ParityReport | None = None


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


def _clean_config(directory: Path) -> None:
    """Drop the keys of config.json that name a path on this machine."""
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if any(config.pop(key, None) is not None for key in _LOCAL_CONFIG_KEYS):
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_merged(
    chosen: ChosenModel,
    target: str | Path,
    *,
    dtype: str | None = None,
    force: bool = False,
    check: bool = True,
) -> ExportResult:
    """Fold ``chosen``'s adapter into its base and save a plain transformers checkpoint in ``target``.

    The fold happens in float32 (exact to rounding); the result is then cast to ``dtype``
    (default: the dtype the base is stored in), so a bf16 base gives a bf16 export of the
    same size as the base. With ``check``, the saved checkpoint is loaded back (its stored
    weights, computed in float32) and held to the trained model before it is moved into place
    (see the module docstring).

    Raises:
        ConfigError: no local adapter, an unknown dtype, or a target that is a file or not empty
            (without ``force``).
        ParityError: the checkpoint does not answer as the trained model does (``target`` is left as it was).
    """
    import torch

    from octrain.trainers.merge import fold_adapter

    target = Path(target)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    adapter = adapter_of(chosen)
    check_target(target, force=force)
    wanted = dtype or base_dtype(chosen.ref.base)
    reference = _reference(chosen, check)
    model = fold_adapter(chosen.ref.base, adapter)
    model = model.to(getattr(torch, wanted))
    model.config.dtype = wanted
    tokenizer = load_tokenizer(adapter, chosen.ref.base)
    report = None
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)  # safetensors is transformers' default
        tokenizer.save_pretrained(staging)
        _clean_config(staging)
        open_up(staging)
        if reference is not None:
            del model
            description = f"the merged export ({wanted})"
            report = _check(reference, lambda: parity.hf_candidate(staging, description=description))
    return ExportResult(target, "merged", base_reference(chosen), wanted, _listing(target), report)


def export_adapter(
    chosen: ChosenModel,
    target: str | Path,
    *,
    base_model: str | None = None,
    force: bool = False,
    check: bool = True,
) -> ExportResult:
    """Copy ``chosen``'s adapter (PEFT format) and its tokenizer into ``target``.

    ``base_model_name_or_path`` becomes the base the run trained on: its Hub id when it was one
    (the adapter as training saved it names the local cache directory), ``base_model`` when
    given (the Hub id of a base the run loaded from a local copy), else the local directory.
    With ``check``, the copy is loaded back on the base the run trained on (not on the Hub id it
    may name, which this machine need not have) and held to the trained model before it is moved
    into place.

    Raises:
        ConfigError: no local adapter, or a target that is a file or not empty (without ``force``).
        ParityError: the copy does not answer as the trained model does (``target`` is left as it was).
    """
    target = Path(target)
    adapter = adapter_of(chosen)
    check_target(target, force=force)
    base = base_reference(chosen, base_model)
    config = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = None if has_tokenizer else load_tokenizer(adapter, chosen.ref.base)
    reference = _reference(chosen, check)
    report = None
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
        if reference is not None:
            local_base = resolve_model_path(chosen.ref.base)
            description = f"the adapter export (on {local_base})"
            report = _check(
                reference, lambda: parity.adapter_candidate(staging, base=local_base, description=description)
            )
    return ExportResult(target, "adapter", base, None, _listing(target), report)


def export_gguf(
    chosen: ChosenModel,
    target: str | Path,
    *,
    gguf_type: str = DEFAULT_GGUF_TYPE,
    force: bool = False,
    check: bool = True,
) -> ExportResult:
    """Fold ``chosen``'s adapter into its base and write it to ``target`` as one GGUF file with an Ollama Modelfile.

    The file is ``NAME-TYPE.gguf`` (NAME: the persona, else the directory's name); the weights
    go from the float32 fold straight to ``gguf_type`` (:mod:`octrain.use.gguf_export`). The
    Modelfile carries the chat template in Ollama's syntax, the stop tokens and the run's own
    sampling settings (its eval stage's, as ``octrain chat`` uses them) and context length
    (:mod:`octrain.use.ollama`). With ``check``, the file is read back by transformers'
    GGUF loader, prompts are rendered through the Modelfile's template, and the result is held
    to the trained model before the directory is moved into place.

    Raises:
        ConfigError: no local adapter, a target that is a file or not empty (without ``force``),
            an unknown ``gguf_type``, or a model, tokenizer or chat template the converter does not write.
        ParityError: the export does not answer as the trained model does (``target`` is left as it was).
    """
    from transformers import AutoConfig

    from octrain.trainers.merge import fold_adapter
    from octrain.use.gguf_export import GGUF_TYPES, architecture_of, tokenizer_fields, write_gguf
    from octrain.use.ollama import MODELFILE, chat_format_of, modelfile_text

    target = Path(target)
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {gguf_type}: expected one of {', '.join(GGUF_TYPES)}")
    adapter = adapter_of(chosen)
    check_target(target, force=force)
    tokenizer = load_tokenizer(adapter, chosen.ref.base)
    model_config = chosen.model_config()
    # What the converter or the Modelfile cannot write is refused here, before the slow part.
    base_config = AutoConfig.from_pretrained(resolve_model_path(chosen.ref.base))
    architecture_of(base_config)
    tokenizer_fields(tokenizer, int(base_config.vocab_size))
    chat_format = chat_format_of(tokenizer, enable_thinking=model_config.enable_thinking)
    settings = ollama_settings(chosen)
    reference = _reference(chosen, check)
    model = fold_adapter(chosen.ref.base, adapter)
    name = _slug(chosen.persona or target.name)
    gguf_name = f"{name}-{gguf_type}.gguf"
    base = base_reference(chosen)
    about = (
        f"the character {chosen.persona or chosen.label} ({chosen.label}), trained with octrain on {_base_name(chosen)}"
    )
    report = None
    with atomic_directory(target) as staging:
        summary = write_gguf(
            model, tokenizer, staging / gguf_name, gguf_type=gguf_type, name=name, description=about, sampling=settings
        )
        del model
        stop_ids = [token for token in (summary.eos_token_id, summary.eot_token_id) if token is not None]
        (staging / MODELFILE).write_text(
            modelfile_text(
                gguf_name=gguf_name,
                chat_format=chat_format,
                stops=[tokenizer.convert_ids_to_tokens(token) for token in stop_ids],
                settings=settings,
                num_ctx=model_config.max_model_len,
                model_name=name,
                about=f"Ollama Modelfile for {about}.",
            ),
            encoding="utf-8",
        )
        open_up(staging)
        if reference is not None:
            description = f"the GGUF export ({gguf_type})"
            report = _check(
                reference,
                lambda: parity.gguf_candidate(
                    staging / gguf_name,
                    description=description,
                    modelfile=staging / MODELFILE,
                    expected_settings=settings,
                ),
            )
    return ExportResult(target, "gguf", base, gguf_type, _listing(target), report)


def ollama_settings(chosen: ChosenModel) -> dict[str, float]:
    """The sampling settings a Modelfile and a GGUF carry: the run's eval sampling (what ``octrain chat``
    uses), without its answer-length budget (a run's eval keeps answers short to save time)."""
    from octrain.use.chat import run_sampling

    sampling = run_sampling(chosen)
    return {
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "min_p": float(sampling.min_p),
        "repetition_penalty": float(sampling.repetition_penalty),
    }


def _reference(chosen: ChosenModel, check: bool) -> Reference | None:
    """The trained model's answers to the parity prompts, or None when the check is skipped."""
    return parity.reference_of(chosen) if check else None


def _check(reference: Reference, load: Callable[[], Candidate]) -> ParityReport:
    """Load the export (``load``) and hold it to ``reference``; ParityError on a difference."""
    import gc

    gc.collect()  # the fold that was just saved, before a second model is loaded
    candidate = load()
    report = parity.check(reference, candidate)
    del candidate
    gc.collect()
    report.raise_if_different()
    return report


def _slug(text: str) -> str:
    """``text`` as a file and Ollama model name: lower case, letters, digits, ``-`` and ``_``."""
    import re

    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return slug or "character"


def _base_name(chosen: ChosenModel) -> str:
    """The base as a person would name it: a builtin without its prefix, a path by its last part."""
    base = chosen.ref.base.removeprefix(BUILTIN_PREFIX)
    return base if is_hub_id(base) or "/" not in base else Path(base).name


def open_up(staging: Path) -> None:
    """Give a staging directory the permissions a new directory gets (mkdtemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)


def _listing(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(path.name for path in directory.iterdir()))
