"""Model shapes: the widths, layer counts and parameter counts the memory estimates start from.

A model's shape comes from its ``config.json`` when that is on this machine (a ``builtin:`` model,
a local directory, or the Hugging Face cache; nothing is downloaded), and otherwise from
:data:`KNOWN_ARCHITECTURES`, the shapes of the models octrain ships configs for. Parameter counts
are computed from the shapes, so that the weights of a model never have to be loaded to size it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from octrain.core.config import ModelConfig
from octrain.core.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    """The shape of a dense decoder-only transformer (Llama/Qwen family), enough to count memory."""

    name: str
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    qk_norm: bool = False  # Qwen3: an RMSNorm over each head's queries and keys (2 x head_dim weights per layer)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    source: str = ""  # where the numbers came from: a config.json, or the built-in table
    # How the checkpoint itself is quantized (its config.json's quantization_config.quant_method, e.g.
    # "fp8" for Qwen/Qwen3-32B-FP8): vLLM loads it so without being told (None: bf16/fp16 weights).
    stored_quantization: str | None = None

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block, by PEFT's module name."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.q_width, self.kv_width
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_parameters(self) -> int:
        """Weights of the linear layers of all blocks: what fp8 in vLLM and NF4 in bitsandbytes quantize."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus the output head when it is not tied to it (never quantized here)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        """Every parameter, computed from the shapes (tied weights counted once)."""
        h = self.hidden_size
        per_layer = 2 * h  # input and post-attention RMSNorm
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        if self.qkv_bias:
            per_layer += self.q_width + 2 * self.kv_width
        if self.o_bias:
            per_layer += h
        if self.mlp_bias:
            per_layer += 2 * self.intermediate_size + h
        return self.layer_linear_parameters + self.layers * per_layer + self.embedding_parameters + h

    def lora_parameters(self, rank: int, target_modules: Sequence[str] = ("all-linear",)) -> int:
        """Parameters of a LoRA adapter: ``rank x (in + out)`` per targeted linear layer.

        ``all-linear`` is PEFT's "every linear layer but the output head"; names that are not
        one of the block's linear layers (an embedding, say) are not counted.
        """
        shapes = self.linear_shapes()
        names = shapes if list(target_modules) == ["all-linear"] else [n for n in target_modules if n in shapes]
        return self.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)

    def lora_modules(self, target_modules: Sequence[str] = ("all-linear",)) -> int:
        shapes = self.linear_shapes()
        return len(shapes) if list(target_modules) == ["all-linear"] else sum(n in shapes for n in target_modules)

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV cache of one token: a key and a value vector per KV head, in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


def architecture_from_config(config: dict[str, Any], *, name: str, source: str) -> Architecture:
    """An :class:`Architecture` from the fields of a transformers ``config.json``."""
    text = config.get("text_config") if "num_hidden_layers" not in config else config
    if not isinstance(text, dict) or "num_hidden_layers" not in text:
        raise ConfigError(f"{name}: {source} has no num_hidden_layers: not a decoder config octrain can size")
    if text.get("num_experts") or text.get("n_routed_experts"):
        raise ConfigError(f"{name}: mixture-of-experts models are not sized by `octrain memory`")
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    model_type = str(text.get("model_type", config.get("model_type", "")))
    attention_bias = bool(text.get("attention_bias", False))
    return Architecture(
        name=name,
        hidden_size=hidden,
        intermediate_size=int(text["intermediate_size"]),
        layers=int(text["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        vocab_size=int(text["vocab_size"]),
        tied_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        qk_norm=model_type.startswith("qwen3"),
        # Qwen2 puts a bias on q, k and v without saying so in its config; Llama and Qwen3 put one
        # on all four attention projections when attention_bias is true.
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias,
        mlp_bias=bool(text.get("mlp_bias", False)),
        source=source,
        stored_quantization=(config.get("quantization_config") or {}).get("quant_method"),
    )


# The shipped models (configs/model/*.yaml), for machines that have not downloaded them. The
# figures are those of each model's config.json on the Hugging Face Hub:
#   Qwen/Qwen3-32B: hidden 5120, intermediate 25600, 64 layers, 64 heads / 8 KV heads, head_dim 128,
#     vocab 151936, untied; published total "32.8B" (from these shapes: 32,762,123,264).
#   Qwen/Qwen3-32B-FP8: the same shapes, its linear layers stored in fp8 (quant_method "fp8", 128x128 blocks).
#   Qwen/Qwen3-4B-Instruct-2507: hidden 2560, intermediate 9728, 36 layers, 32 / 8 heads, head_dim 128,
#     vocab 151936, tied; model card "4.0B, 3.6B non-embedding" (from these shapes: 4,022,468,096).
#   Qwen/Qwen3-8B: hidden 4096, intermediate 12288, 36 layers, 32 / 8 heads, head_dim 128,
#     vocab 151936, untied; published "8.2B" (from these shapes: 8,190,735,360).
#   meta-llama/Llama-3.1-8B-Instruct: hidden 4096, intermediate 14336, 32 layers, 32 / 8 heads,
#     head_dim 128, vocab 128256, untied, no q/k norm; published "8B" (from these shapes: 8,030,261,248,
#     the 8.03B Meta's model card gives).
KNOWN_ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("Qwen/Qwen3-32B", 5120, 25600, 64, 64, 8, 128, 151936, False, qk_norm=True),
        Architecture(
            "Qwen/Qwen3-32B-FP8", 5120, 25600, 64, 64, 8, 128, 151936, False, qk_norm=True, stored_quantization="fp8"
        ),
        Architecture("Qwen/Qwen3-4B-Instruct-2507", 2560, 9728, 36, 32, 8, 128, 151936, True, qk_norm=True),
        Architecture("Qwen/Qwen3-8B", 4096, 12288, 36, 32, 8, 128, 151936, False, qk_norm=True),
        Architecture("meta-llama/Llama-3.1-8B-Instruct", 4096, 14336, 32, 32, 8, 128, 128256, False),
        # The paper's Qwen student: biases on the q, k and v projections.
        Architecture("Qwen/Qwen2.5-7B-Instruct", 3584, 18944, 28, 28, 4, 128, 152064, False, qkv_bias=True),
    )
}


def _cached_hub_config(repo_id: str, revision: str | None) -> Path | None:
    """The config.json of a Hub model already in the local cache, or None; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # a malformed repo id: not on the Hub, so not in its cache either
        return None
    return Path(found) if isinstance(found, str) else None


def architecture_of(model: ModelConfig | str) -> Architecture:
    """The shape of a configured model: its config.json when it is on this machine, else the table.

    Looked for in order: ``builtin:`` models (built offline on first use), a local directory, the
    Hugging Face cache (no download), then :data:`KNOWN_ARCHITECTURES`.

    Raises:
        ConfigError: the model is neither on this machine nor in the table.
    """
    path = model if isinstance(model, str) else model.path
    revision = None if isinstance(model, str) else model.revision
    if path.startswith("builtin:"):
        from octrain.models.builtin import resolve_model_path

        local: Path | None = Path(resolve_model_path(path)) / "config.json"
    elif Path(path).expanduser().is_dir():
        local = Path(path).expanduser() / "config.json"
    else:
        local = _cached_hub_config(path, revision)
    if local is not None and local.is_file():
        return architecture_from_config(json.loads(local.read_text(encoding="utf-8")), name=path, source=str(local))
    if path in KNOWN_ARCHITECTURES:
        return replace(KNOWN_ARCHITECTURES[path], source="built-in table (the Hub's config.json)")
    raise ConfigError(
        f"{path}: no config.json on this machine and not one of the shipped models "
        f"({', '.join(KNOWN_ARCHITECTURES)}); download it first (huggingface-cli download {path} config.json)"
    )
