"""The tiny offline model: built without a download, cached, with a ChatML template that marks turns."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from octrain.core.errors import ConfigError
from octrain.models.builtin import resolve_model_path
from octrain.models.tiny import ensure_tiny_model


def test_tiny_model_is_a_small_qwen3(tiny_model_path: str) -> None:
    config = AutoConfig.from_pretrained(tiny_model_path)
    assert config.model_type == "qwen3"
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (64, 2, 32)


def test_cached_after_first_build(tiny_model_path: str) -> None:
    weights = Path(tiny_model_path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert str(ensure_tiny_model()) == tiny_model_path
    assert weights.stat().st_mtime_ns == stamp  # not rebuilt
    assert resolve_model_path("builtin:tiny-qwen3") == tiny_model_path
    assert resolve_model_path("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    with pytest.raises(ConfigError, match="unknown built-in model"):
        resolve_model_path("builtin:huge")


def test_chat_template_marks_every_assistant_turn(tiny_model_path: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    messages = [
        {"role": "system", "content": "Be a pirate."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Ahoy matey"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Arr again"},
    ]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    kept = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert kept == "Ahoy matey<|im_end|>Arr again<|im_end|>"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    expected = "<|im_start|>system\nBe a pirate.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
    assert prompt == expected + "<|im_start|>assistant\n"
    # Byte-level BPE: any text survives a round trip.
    text = "Ünïcödé, emoji 🏴‍☠️ and\ttabs"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
