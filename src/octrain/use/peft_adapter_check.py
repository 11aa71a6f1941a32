"""Whether a folder is a PEFT LoRA adapter octrain can load, and its rank and alpha.

A downloaded checkpoint (:mod:`octrain.use.tinker_download`) is checked here before it is put in
place: its ``adapter_config.json`` must describe a LoRA adapter with a positive rank and alpha,
and its safetensors weights must hold LoRA matrices of that rank. A truncated or foreign file
fails here, with a message naming what is wrong, rather than when a sampler loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from octrain.core.errors import DataFormatError
from octrain.core.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE


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
