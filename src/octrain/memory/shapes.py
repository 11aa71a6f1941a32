"""Model shapes: the widths, layer counts and parameter counts the memory estimates start from.

A model's shape comes from its ``config.json`` when that is on this machine (a ``builtin:`` model,
a local directory, or the Hugging Face cache; nothing is downloaded), and otherwise from
:data:`KNOWN_ARCHITECTURES`, the shapes of the models octrain ships configs for. Parameter counts
are computed from the shapes, so that the weights of a model never have to be loaded to size it.

Dense models (Llama, Qwen, Gemma 3) and GLM-4.5-style mixtures of experts are sized. For a mixture
of experts every expert counts towards the weights, since vLLM holds them all, while the KV cache
and the activation estimates follow one token's path (its attention, its few experts).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from octrain.core.config import ModelConfig
from octrain.core.errors import ConfigError


def _mlp_shapes(hidden: int, width: int) -> dict[str, tuple[int, int]]:
    """(in, out) of a gated MLP's three linear layers (SwiGLU or GeGLU), by PEFT's module name."""
    return {"gate_proj": (hidden, width), "up_proj": (hidden, width), "down_proj": (width, hidden)}


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only transformer, enough to count memory.

    Dense (Llama, Qwen, Gemma 3's language model), or a mixture of experts laid out as GLM-4.5 and
    DeepSeek lay theirs out: the first ``dense_layers`` blocks keep a dense MLP of
    ``intermediate_size``, and every later block has ``routed_experts`` experts, of which a router
    picks ``experts_per_token`` for each token, beside ``shared_experts`` that every token passes
    through; each expert is an MLP of ``expert_intermediate_size``.
    """

    name: str
    hidden_size: int
    intermediate_size: int  # the dense MLP's width (a mixture of experts: that of its dense blocks)
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    # Qwen3, Gemma 3: an RMSNorm over each head's queries and keys (2 x head_dim weights per layer).
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    source: str = ""  # where the numbers came from: a config.json, or the built-in table
    # How the checkpoint itself is quantized (its config.json's quantization_config.quant_method, e.g.
    # "fp8" for Qwen/Qwen3-32B-FP8): vLLM loads it so without being told (None: bf16/fp16 weights).
    stored_quantization: str | None = None
    # RMSNorms of hidden width in each block: 2 (before attention and before the MLP); Gemma 3 has 4
    # (it also normalises each sublayer's output before adding it to the residual stream).
    layer_norms: int = 2
    # Parameters outside the decoder blocks, the embeddings and the final norm, loaded with the model
    # and never quantized here: Gemma 3's SigLIP vision tower and its projector (~0.42B for the 4B),
    # which transformers' Gemma3ForConditionalGeneration and vLLM load even when only text is sent.
    extra_parameters: int = 0
    # A mixture of experts (0 routed experts: a dense model); see the class docstring.
    routed_experts: int = 0
    shared_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    dense_layers: int = 0  # config.json's first_k_dense_replace

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def moe_layers(self) -> int:
        """Blocks whose MLP is a mixture of experts (none in a dense model)."""
        return self.layers - self.dense_layers if self.routed_experts else 0

    @property
    def dense_mlp_layers(self) -> int:
        """Blocks with a dense MLP of ``intermediate_size``: all of them in a dense model."""
        return self.layers - self.moe_layers

    def attention_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of the attention's linear layers in one block, by PEFT's module name."""
        h, q, kv = self.hidden_size, self.q_width, self.kv_width
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one dense decoder block, by PEFT's module name."""
        return {**self.attention_shapes(), **_mlp_shapes(self.hidden_size, self.intermediate_size)}

    @property
    def layer_linear_parameters(self) -> int:
        """Weights of the linear layers of all blocks, every expert included: what fp8 in vLLM and NF4
        in bitsandbytes quantize (a mixture of experts' routers stay in bf16, so they are not here)."""
        h = self.hidden_size
        attention = sum(a * b for a, b in self.attention_shapes().values())
        experts = (self.routed_experts + self.shared_experts) * 3 * h * self.expert_intermediate_size
        return (
            self.layers * attention + self.dense_mlp_layers * 3 * h * self.intermediate_size + self.moe_layers * experts
        )

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus the output head when it is not tied to it (never quantized here)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        """Every parameter, computed from the shapes (tied weights counted once)."""
        h = self.hidden_size
        per_layer = self.layer_norms * h
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        if self.qkv_bias:
            per_layer += self.q_width + 2 * self.kv_width
        if self.o_bias:
            per_layer += h
        mlp_biases = self.dense_mlp_layers * (2 * self.intermediate_size + h) if self.mlp_bias else 0
        routers = self.moe_layers * self.routed_experts * h  # one score per expert from the hidden state
        return (
            self.layer_linear_parameters
            + self.layers * per_layer
            + mlp_biases
            + routers
            + self.embedding_parameters
            + h  # the final norm
            + self.extra_parameters
        )

    @property
    def active_parameters(self) -> int:
        """The parameters one token's forward pass reads: all but the routed experts it is not sent to
        (a mixture of experts' "active" size; a dense model's whole size)."""
        idle = self.routed_experts - self.experts_per_token
        return self.parameters - self.moe_layers * idle * 3 * self.hidden_size * self.expert_intermediate_size

    def _targeted(self, target_modules: Sequence[str]) -> list[str]:
        names = list(self.linear_shapes())
        return names if list(target_modules) == ["all-linear"] else [n for n in target_modules if n in names]

    def lora_parameters(self, rank: int, target_modules: Sequence[str] = ("all-linear",)) -> int:
        """Parameters of a LoRA adapter: ``rank x (in + out)`` per targeted linear layer.

        ``all-linear`` is PEFT's "every linear layer but the output head"; names that are not
        one of the block's linear layers (an embedding, say) are not counted. A mixture of experts
        counts its attention and its dense blocks' MLP only, a lower bound: octrain trains no such
        student, and which of its experts and routers PEFT adapts depends on PEFT's version.
        """
        names = self._targeted(target_modules)

        def per_block(shapes: dict[str, tuple[int, int]]) -> int:
            return sum(rank * (shapes[n][0] + shapes[n][1]) for n in names if n in shapes)

        return self.dense_mlp_layers * per_block(self.linear_shapes()) + self.moe_layers * per_block(
            self.attention_shapes()
        )

    def lora_modules(self, target_modules: Sequence[str] = ("all-linear",)) -> int:
        return len(self._targeted(target_modules))

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV cache of one token: a key and a value vector per KV head, in every layer.

        Every layer is counted as holding the whole sequence: Gemma 3's sliding-window layers (five in
        six) hold only their last 1,024 tokens in vLLM, so for long sequences this overstates its KV.
        """
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


def gemma3_vision_parameters(vision: dict[str, Any], text_hidden: int) -> int:
    """Gemma 3's SigLIP vision tower and its projector into a language model of width ``text_hidden``.

    ``vision`` holds the fields of config.json's ``vision_config``. The tower: a patch embedding (a
    convolution with a bias), one learned position per patch, blocks of two LayerNorms, q/k/v/out
    projections and a two-layer MLP (every one with a bias), and a final LayerNorm; Gemma 3 builds it
    without SigLIP's pooling head. The projector: an RMSNorm and one matrix into the text width.
    """
    h, i, patch = int(vision["hidden_size"]), int(vision["intermediate_size"]), int(vision["patch_size"])
    channels = int(vision.get("num_channels", 3))
    positions = (int(vision["image_size"]) // patch) ** 2
    embeddings = channels * patch * patch * h + h + positions * h
    block = 2 * 2 * h + 4 * (h * h + h) + (h * i + i) + (i * h + h)
    tower = embeddings + int(vision["num_hidden_layers"]) * block + 2 * h
    return tower + h + h * text_hidden


# The fields sizing reads from a decoder config; a config.json may leave some out.
_SIZING_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _with_class_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the fields it leaves to its transformers config class filled in from that class.

    A config.json holds only what differs from its class's defaults: Gemma 3's ``text_config`` names
    five fields (no heads, no vocabulary) and its ``vision_config`` leaves out the number of
    channels. Complete configs are returned as they are, without importing transformers; a model
    type transformers does not know is returned as it is too.
    """
    text = config.get("text_config") if "num_hidden_layers" not in config else config
    complete = isinstance(text, dict) and all(key in text for key in _SIZING_FIELDS)
    if (complete and "vision_config" not in config) or not config.get("model_type"):
        return config
    try:
        from transformers import AutoConfig

        fields = {key: value for key, value in config.items() if key != "model_type"}
        return AutoConfig.for_model(config["model_type"], **fields).to_dict()
    except (ImportError, ValueError, TypeError, KeyError):  # an unknown model type, or fields its class refuses
        return config


def architecture_from_config(config: dict[str, Any], *, name: str, source: str) -> Architecture:
    """An :class:`Architecture` from the fields of a transformers ``config.json``.

    Dense decoders, Gemma 3 (its vision tower counted as extra parameters) and GLM-4.5's mixture of
    experts (``glm4_moe``); other mixtures of experts are refused rather than miscounted.
    """
    config = _with_class_defaults(config)
    text = config.get("text_config") if "num_hidden_layers" not in config else config
    if not isinstance(text, dict) or "num_hidden_layers" not in text:
        raise ConfigError(f"{name}: {source} has no num_hidden_layers: not a decoder config octrain can size")
    model_type = str(text.get("model_type", config.get("model_type", "")))
    moe = bool(text.get("n_routed_experts"))
    if text.get("num_experts") or text.get("num_local_experts") or (moe and model_type != "glm4_moe"):
        raise ConfigError(
            f"{name}: {model_type or 'this'} mixture of experts is not sized by `octrain memory` "
            "(only GLM-4.5's layout, glm4_moe, is)"
        )
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    attention_bias = bool(text.get("attention_bias", False))
    gemma3 = model_type.startswith("gemma3")
    vision = config.get("vision_config") if config.get("model_type") == "gemma3" else None
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
        qk_norm=model_type.startswith("qwen3") or gemma3 or bool(text.get("use_qk_norm")),
        # Qwen2 puts a bias on q, k and v without saying so in its config; Llama, Qwen3 and Gemma 3
        # put one on all four attention projections when attention_bias is true, GLM on q, k and v only.
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias and not model_type.startswith("glm4"),
        mlp_bias=bool(text.get("mlp_bias", False)),
        source=source,
        stored_quantization=(config.get("quantization_config") or {}).get("quant_method"),
        layer_norms=4 if gemma3 else 2,
        extra_parameters=gemma3_vision_parameters(vision, hidden) if isinstance(vision, dict) else 0,
        routed_experts=int(text["n_routed_experts"]) if moe else 0,
        shared_experts=int(text.get("n_shared_experts") or 0) if moe else 0,
        experts_per_token=int(text.get("num_experts_per_tok") or 0) if moe else 0,
        expert_intermediate_size=int(text.get("moe_intermediate_size") or 0) if moe else 0,
        dense_layers=int(text.get("first_k_dense_replace") or 0) if moe else 0,
    )


# Gemma 3 4B's vision_config: SigLIP So400m at 896 x 896 pixels in 14-pixel patches, without its pooling head.
GEMMA3_4B_VISION: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 896,
    "patch_size": 14,
    "vision_use_head": False,
}
_GEMMA3_4B_LAYOUT: dict[str, Any] = {
    "qk_norm": True,
    "layer_norms": 4,
    "extra_parameters": gemma3_vision_parameters(GEMMA3_4B_VISION, 2560),
}
# GLM-4.5-Air's shape (hidden, intermediate, layers, heads, KV heads, head_dim, vocab, tied) and its experts.
_GLM45_AIR_SHAPE = (4096, 10944, 46, 96, 8, 128, 151552, False)
_GLM45_AIR_LAYOUT: dict[str, Any] = {
    "qkv_bias": True,
    "routed_experts": 128,
    "shared_experts": 1,
    "experts_per_token": 8,
    "expert_intermediate_size": 1408,
    "dense_layers": 1,
}

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
#   Qwen/Qwen2.5-7B-Instruct: hidden 3584, intermediate 18944, 28 layers, 28 / 4 heads, head_dim 128,
#     vocab 152064, untied, biases on q/k/v; published "7.61B" (from these shapes: 7,615,616,512).
#   google/gemma-3-4b-it (Gemma3ForConditionalGeneration): text_config hidden 2560, intermediate 10240,
#     34 layers (five sliding-window layers of 1,024 tokens to one global), 8 / 4 heads, head_dim 256,
#     vocab 262208, tied, q/k norms, four norms a block; vision_config SigLIP (GEMMA3_4B_VISION).
#     Built on the meta device with transformers 5.24's Gemma3ForConditionalGeneration: 4,300,079,472 =
#     3,880,263,168 language model (671,252,480 embedding + 3,209,010,688 other: the Gemma 3 technical
#     report's "675M" and "3,209M") + 416,866,032 vision tower ("417M") + 2,950,272 projector;
#     published "4.3B". These shapes give the same count to the parameter.
#   zai-org/GLM-4.5-Air (Glm4MoeForCausalLM): hidden 4096, 46 layers (the first dense, intermediate
#     10944), 96 / 8 heads, head_dim 128 (so q is 12,288 wide, three times the hidden size), biases on
#     q/k/v only, vocab 151552, untied; 128 routed experts (8 a token) and 1 shared, each 1408 wide.
#     Built on the meta device with transformers 5.24's Glm4MoeForCausalLM (attention_bias=True,
#     head_dim=128): 106,852,245,504, which these shapes give to the parameter; published "106B total,
#     12B active" (active from these shapes: 13.4B, 12.2B without the embedding and the head). The
#     checkpoint also holds one multi-token-prediction block (model.layers.46, ~2.4B) that neither
#     transformers nor vLLM builds unless MTP speculative decoding is asked for: not counted here;
#     nor are the routers' score-correction biases (45 x 128 values, a buffer in transformers).
#   zai-org/GLM-4.5-Air-FP8: the same shapes, its linear layers in fp8 e4m3 with one scale per output
#     row, saved by llm-compressor (quant_method "compressed-tensors"; routers, norms, embeddings in bf16).
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
        # The paper's Gemma student: four norms a block, q/k norms, and the vision tower.
        Architecture("google/gemma-3-4b-it", 2560, 10240, 34, 8, 4, 256, 262208, True, **_GEMMA3_4B_LAYOUT),
        # The paper's teacher, in bf16 and as published in fp8.
        Architecture("zai-org/GLM-4.5-Air", *_GLM45_AIR_SHAPE, **_GLM45_AIR_LAYOUT),
        Architecture(
            "zai-org/GLM-4.5-Air-FP8", *_GLM45_AIR_SHAPE, **_GLM45_AIR_LAYOUT, stored_quantization="compressed-tensors"
        ),
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
