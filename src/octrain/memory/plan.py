"""How much GPU memory each stage of a run needs, and what to change when a card is too small.

    python -m octrain.memory.plan +recipe=pirate_mini [key=value ...] [--card 80] [--detail]
    python -m octrain.memory.plan runs/my_run            # a run directory's resolved config.yaml

Every stage runs in a process of its own and holds one model at a time (one vLLM engine, or one
model being trained), so a stage needs as much as its largest model, never the sum:

* ``prompts``: the generator's engine (the teacher by default);
* ``pairs``: the teacher's engine, then the student's;
* ``dpo``: the student being trained with LoRA; the reference is the same weights with the
  adapter switched off, so there is no second copy;
* ``introspect``: the student's engine serving the DPO adapter;
* ``sft``: the student being trained (sequential mode folds the DPO adapter in first, on the CPU);
* ``eval``: the student's engine serving the base and each adapter, then the teacher's engine.

What a vLLM engine needs: its weights (bytes per parameter by quantization), the preallocated
LoRA slot when it serves an adapter, an allowance for the CUDA context, CUDA graphs and the
profiling run, and KV cache, ``2 (K and V) x layers x KV heads x head_dim x 2 bytes`` per token.
vLLM takes ``gpu_memory_utilization x card`` whatever the model needs and refuses to start when
the KV left inside that share cannot hold one ``max_model_len`` sequence. It *fits* when the KV
also holds :data:`USEFUL_SEQUENCES` sequences of the stage's length: decoding reads all the
weights once per step, so a batch of a few sequences pays almost the same per step as a full one,
and throughput falls roughly in proportion to the number of sequences that fit.

What LoRA training with TRL needs: frozen weights (bf16, or NF4 with QLoRA), the LoRA factors
with their gradients and AdamW moments (PEFT keeps the factors in fp32 next to a bf16 base, so
16 bytes per trained parameter; with QLoRA TRL casts them to bf16, 8 bytes), activations per
token (with gradient checkpointing: each layer's input plus one layer being recomputed), the
LM head, and a fixed allowance for the CUDA context. DPO forwards chosen and rejected together,
so a device batch of ``b`` pairs is ``2b`` sequences; every sequence is counted at its maximum
length, the worst batch a run can draw.

The activation figures are calibrated, not guessed: autograd's saved tensors for Qwen3-shaped
LoRA layers (bf16 weights, fp32 LoRA factors, bf16 autocast, SDPA) were measured on the CPU
(:func:`measure_saved_activations`) for six shapes around Qwen3-4B's, one width varied at a time,
and the per-layer, per-token cost fitted by a linear formula in the layer's widths
(:data:`ACT_COEFFS`), which predicts shapes it was not fitted on within 1%. That gives
5.98 MiB per token for the whole 4B student without checkpointing, in line with the ~6.2 MiB an
earlier measurement found. What the CPU cannot show: CUDA kernels' workspaces and the caching
allocator's fragmentation, covered by allowances and by the headroom kept below the card's size.
Everything here is an estimate to plan with; the smoke runs (``smoke=large``) are the real test.

The LM head matters: a full ``tokens x vocab`` fp32 logits tensor for 4 x 3,072 tokens of a
151,936-token vocabulary is 7 GiB, and a loss on it keeps two or three such copies. TRL 1.16
(the pinned version) computes the log-probabilities of SFT and DPO in 4,096-token tiles with a
fused head and never materialises the logits (``trl.kernels.chunked_logprob``), so the head costs
a fixed tile buffer plus a few bytes per token and hidden unit. :func:`training_need` keeps the
materialised figure as an option (``fused_lm_head=False``) for trainers that do not.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from octrain.core.config import (
    ModelConfig,
    ModelRole,
    OctrainConfig,
    SamplerBackend,
    SftMode,
    StageName,
    TrainerBackend,
)
from octrain.core.errors import ConfigError
from octrain.core.layout import CONFIG_FILE

GIB = 1024**3
MIB = 1024**2

# --------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------


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
        raise ConfigError(f"{name}: mixture-of-experts models are not sized by octrain.memory.plan")
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


# --------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------

CARDS = (24, 48, 80, 141)

# What PyTorch and vLLM see as a card's total memory (torch.cuda.mem_get_info), in GiB, for the
# usual cards of each size: a card sold as "80 GB" is not 80 GiB free to use. 24 GB: A10/L4 class;
# 48 GB: L40S/A40; 80 GB: H100; 141 GB: H200/H20 ("total capacity of 139.72 GiB" in vLLM's reports).
CARD_GIB: dict[int, float] = {24: 22.0, 48: 44.5, 80: 79.2, 141: 139.7}


def card_gib(card: float) -> float:
    """Usable GiB of a card named by its size in GB (24, 48, 80, 141); other numbers are taken as GiB."""
    return CARD_GIB.get(int(card), float(card)) if float(card).is_integer() else float(card)


# --------------------------------------------------------------------------------------------
# Needs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    status: str  # "fits", "tight" or "no"
    text: str  # what the table cell says


@dataclass
class Need:
    """What one model of one stage needs on one GPU, in GiB, and how it is judged against a card."""

    label: str
    kind: str  # "vllm", "train" (also transformers' generate: no preset share) or "none"
    parts: dict[str, float] = field(default_factory=dict)  # GiB by component (KV excluded for engines)
    share: float = 1.0  # vLLM: the share of the card the engine takes
    kv_token_bytes: float = 0.0  # vLLM/hf: KV cache per token, per GPU
    min_kv_tokens: int = 0  # KV the engine cannot start without (one max_model_len sequence)
    useful_kv_tokens: int = 0  # KV for USEFUL_SEQUENCES sequences of this stage's length
    seq_tokens: int = 0  # one sequence of this stage, in tokens
    gpus: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def fixed(self) -> float:
        return sum(self.parts.values())

    @property
    def minimum(self) -> float:
        """GiB without which the stage cannot run at all."""
        return self.fixed + self.min_kv_tokens * self.kv_token_bytes / GIB

    @property
    def comfortable(self) -> float:
        """GiB for it to run at a useful speed (engines: KV for USEFUL_SEQUENCES sequences)."""
        return self.fixed + self.useful_kv_tokens * self.kv_token_bytes / GIB

    def judge(self, card: float) -> Verdict:
        total = card_gib(card)
        gpus = f" on {self.gpus} GPUs" if self.gpus > 1 else ""
        if self.kind == "none":
            return Verdict("fits", "no GPU")
        if self.kind == "vllm":
            room = self.share * total - self.fixed
            sequences = room * GIB / self.kv_token_bytes / max(self.seq_tokens, 1) if room > 0 else 0.0
            if room * GIB < self.min_kv_tokens * self.kv_token_bytes:
                return Verdict("no", "no")
            kv = f"KV {room:.0f} GiB, ~{_count(sequences)} seqs{gpus}"
            if room * GIB < self.useful_kv_tokens * self.kv_token_bytes:
                return Verdict("tight", f"tight: {kv}")
            return Verdict("fits", f"fits: {kv}")
        # Training (and transformers' generate) allocates what it uses: it fits below the headroom
        # line, is tight up to the card's size (or, for generate, when only a smaller batch fits).
        peak = self.comfortable
        if peak <= TRAIN_HEADROOM * total:
            return Verdict("fits", f"fits{gpus}")
        if peak <= total or self.minimum <= TRAIN_HEADROOM * total:
            return Verdict("tight", f"tight{gpus}")
        return Verdict("no", "no")


def _count(value: float) -> str:
    return f"{value:.0f}" if value < 1000 else f"{value / 1000:.1f}k"


# vLLM weights: bytes per parameter of the quantized linear layers. fp8 is vLLM's online
# quantization of a bf16 checkpoint; since vllm-project/vllm PR 31914 (January 2026, before the
# pinned 0.31) it quantizes while streaming the weights in, so loading no longer needs room for the
# bf16 copy (older versions did). awq/gptq: 4-bit checkpoints with a scale and zero per 128 weights.
QUANT_BYTES: dict[str | None, float] = {
    None: 2.0,
    "fp8": 1.0,
    "fbgemm_fp8": 1.0,
    "modelopt": 1.0,
    "compressed-tensors": 1.0,  # usually fp8/int8 weights; a 4-bit one is smaller
    "bitsandbytes": 0.53,
    "awq": 0.55,
    "awq_marlin": 0.55,
    "gptq": 0.55,
    "gptq_marlin": 0.55,
}
# Neither vLLM's fp8 nor the 4-bit methods quantize the embedding and the output head.
UNQUANTIZED_BYTES = 2.0

VLLM_NON_TORCH_GIB = 1.0  # CUDA context, cuBLAS and NCCL workspaces: vLLM counts them inside its share
VLLM_CUDA_GRAPHS_GIB = 1.0  # graphs captured for the decode batch sizes (a few hundred MiB to ~1.5 GiB)
VLLM_LORA_EXTRA_GIB = 0.5  # graphs and punica buffers for LoRA batches
# vLLM's defaults for the offline LLM class: more batched tokens and sequences on large cards. Its
# memory profile pushes that many tokens through the model and that many rows through the sampler.
VLLM_BATCHED_TOKENS = {True: 16384, False: 8192}  # keyed by "card of 70 GiB or more"
VLLM_MAX_SEQS = {True: 1024, False: 256}
USEFUL_SEQUENCES = 32
# Tokens before the answer, by what the stage samples: the constitution system prompt and the
# question (prompts: plus the few-shot examples of an expansion request; eval: the judge sees two answers).
PROMPT_TOKENS = {"prompts": 1536, "pairs-teacher": 1024, "pairs-student": 256, "introspect": 1024, "eval": 1536}


def engine_need(
    config: OctrainConfig,
    role: ModelRole,
    *,
    stage: str,
    max_new_tokens: int,
    adapter_rank: int = 0,
    card: float = 80,
    model: ModelConfig | None = None,
) -> Need:
    """What one sampling engine needs (vLLM, or transformers' generate for ``sampler=hf``)."""
    model = model or config.model(role)
    arch = architecture_of(model)
    seq = min(model.max_model_len, PROMPT_TOKENS.get(stage, 1024) + max_new_tokens)
    label = f"{role.value} {_short(model.path)}"
    backend = config.sampler.backend
    if backend in (SamplerBackend.fake, SamplerBackend.tinker):
        return Need(f"{label} ({backend.value}: nothing local)", "none")
    if backend is SamplerBackend.hf:
        return _hf_engine_need(config, model, arch, label, seq, adapter_rank)
    options = config.sampler.vllm
    tp = options.tensor_parallel_size
    quant = model.quantization or arch.stored_quantization
    per_param = QUANT_BYTES.get(quant, 1.0)
    weights = (
        arch.layer_linear_parameters * per_param + (arch.parameters - arch.layer_linear_parameters) * UNQUANTIZED_BYTES
    )
    parts = {"weights": weights / tp / GIB}
    if adapter_rank:
        from octrain.trainers.merge import serving_rank

        # vLLM preallocates one adapter slot (max_loras=1) at max_lora_rank for every targeted
        # layer, in the model's dtype, whatever the adapter's own rank.
        rank = serving_rank(max(options.max_lora_rank, adapter_rank))
        parts["LoRA slot"] = arch.lora_parameters(rank) * 2 / tp / GIB
    large = card_gib(card) >= 70
    batched = VLLM_BATCHED_TOKENS[large]
    seqs = options.max_num_seqs or VLLM_MAX_SEQS[large]
    # The memory profile's peak on top of the weights: the larger of the dummy forward (one layer's
    # widest tensors for every batched token) and the dummy sampler run (fp32 logits and probabilities
    # for every sequence), plus the fixed allowances.
    per_token = 2 * (arch.q_width + 2 * arch.kv_width + 2 * arch.intermediate_size + 4 * arch.hidden_size)
    profile = max(batched * per_token / tp, 2 * seqs * arch.vocab_size * 4)
    parts["runtime"] = (
        VLLM_NON_TORCH_GIB + VLLM_CUDA_GRAPHS_GIB + (VLLM_LORA_EXTRA_GIB if adapter_rank else 0.0) + profile / GIB
    )
    share = model.gpu_memory_utilization or options.gpu_memory_utilization
    what = (
        f"vLLM {quant or 'bf16'}"
        + (f", TP {tp}" if tp > 1 else "")
        + (f", LoRA r{adapter_rank}" if adapter_rank else "")
    )
    return Need(
        f"{label} ({what})",
        "vllm",
        parts,
        share=share,
        kv_token_bytes=arch.kv_bytes_per_token() / tp,
        min_kv_tokens=model.max_model_len,
        useful_kv_tokens=USEFUL_SEQUENCES * seq,
        seq_tokens=seq,
        gpus=tp,
    )


def _hf_engine_need(
    config: OctrainConfig, model: ModelConfig, arch: Architecture, label: str, seq: int, adapter_rank: int
) -> Need:
    """transformers' generate: bf16 weights (quantization is vLLM's), KV for the whole batch, a fixed allowance."""
    batch = config.sampler.hf.batch_size
    parts = {
        "weights": arch.parameters * 2 / GIB,
        "LoRA": arch.lora_parameters(adapter_rank) * 2 / GIB if adapter_rank else 0.0,
        # the last position's logits in fp32 for every sequence, twice (scores and the processed ones)
        "runtime": TRAIN_CONTEXT_GIB + 2 * batch * arch.vocab_size * 4 / GIB,
    }
    notes = [f"{label}: {model.quantization} applies to vLLM only"] if model.quantization else []
    return Need(
        f"{label} (transformers, batch {batch})",
        "train",  # judged like training: it allocates what it uses, there is no preset share
        parts,
        kv_token_bytes=arch.kv_bytes_per_token(),
        min_kv_tokens=seq,  # one sequence at a time would do, slowly
        useful_kv_tokens=batch * seq,
        seq_tokens=seq,
        notes=notes,
    )


# Bytes autograd keeps per token in one decoder layer of a LoRA model in bf16 (fp32 LoRA factors,
# bf16 autocast, SDPA), as a linear function of the layer's widths. Fitted on six shapes around
# Qwen3-4B's (H=2560, I=9728, q=4096, kv=1024, r=64: 174,248 B) by varying one width at a time
# (measure_saved_activations, CPU); it then predicted two shapes it had not seen (H=256 and
# H=1024) within 1% (tests/test_memory_plan.py measures one again). Each hidden unit costs 18 B
# (residual stream, norms in fp32, the LoRA inputs cast to fp32), each intermediate unit 8 B (gate,
# up, SiLU, product), each query unit 10 B, each key/value unit 8 B, each LoRA rank 2 B per adapted
# module, each head 4 B (SDPA's logsumexp).
ACT_COEFFS = {"hidden": 18, "intermediate": 8, "q": 10, "kv": 8, "lora_rank_per_module": 2, "head": 4, "const": 168}
TRAIN_CONTEXT_GIB = 1.0  # CUDA context and cuBLAS workspace, outside PyTorch's allocator
TRAIN_HEADROOM = 0.92  # share of the card a training may plan to use: the caching allocator fragments
NF4_BYTES = 0.516  # 4-bit NF4 + double-quantized absmax (8 bits per 64 weights, fp32 per 256 blocks)
HEAD_TILE = (4096, 32768)  # TRL 1.16's chunked log-prob kernel: tokens x vocab entries per tile


def activation_bytes_per_layer_token(arch: Architecture, rank: int, target_modules: Sequence[str]) -> float:
    c = ACT_COEFFS
    return (
        c["hidden"] * arch.hidden_size
        + c["intermediate"] * arch.intermediate_size
        + c["q"] * arch.q_width
        + c["kv"] * arch.kv_width
        + c["lora_rank_per_module"] * rank * arch.lora_modules(target_modules)
        + c["head"] * arch.heads
        + c["const"]
    )


def training_need(
    config: OctrainConfig, stage: StageName, *, fused_lm_head: bool = True, assume_cuda: bool = True
) -> Need:
    """Peak memory of LoRA DPO or SFT with TRL on one GPU, for the worst batch (every sequence at max length).

    Args:
        fused_lm_head: TRL 1.16 scores tokens in tiles without the full logits; False counts the
            logits as a plain ``labels=`` loss would (bf16 logits, an fp32 copy, fp32 log-softmax and its gradient).
        assume_cuda: gradient checkpointing's default (None) is "on with CUDA"; the plan is for GPUs.
    """
    arch = architecture_of(config.student)
    options = config.trainer.trl
    label = f"student {_short(config.student.path)}"
    if config.trainer.backend is TrainerBackend.tinker:
        return Need(f"{label} (tinker: trained remotely)", "none")
    settings = config.dpo if stage is StageName.dpo else config.sft
    lora, batch_size, max_length = settings.lora, settings.batch_size, settings.max_length
    per_device = min(options.per_device_batch_size, batch_size)
    sequences = per_device * (2 if stage is StageName.dpo else 1)  # DPO: chosen and rejected together
    tokens = sequences * max_length
    checkpointing = assume_cuda if options.gradient_checkpointing is None else options.gradient_checkpointing
    qlora = options.load_in_4bit
    lora_params = arch.lora_parameters(lora.rank, lora.target_modules)
    other = arch.parameters - arch.layer_linear_parameters
    parts: dict[str, float] = {}
    if qlora:
        # prepare_model_for_kbit_training upcasts everything bitsandbytes leaves alone (embeddings,
        # head, norms) to fp32; the fused head casts the head back to bf16 for each call.
        parts["weights"] = (
            arch.layer_linear_parameters * NF4_BYTES + other * 4 + arch.vocab_size * arch.hidden_size * 2
        ) / GIB
        # TRL casts a quantized model's LoRA factors to bf16: param, grad and both AdamW moments in bf16.
        parts["LoRA + AdamW"] = lora_params * 8 / GIB
    else:
        parts["weights"] = arch.parameters * 2 / GIB
        # fp32 factors (PEFT upcasts adapters next to a bf16 base), fp32 grads, two fp32 AdamW moments.
        parts["LoRA + AdamW"] = lora_params * 16 / GIB
    per_layer = activation_bytes_per_layer_token(arch, lora.rank, lora.target_modules)
    if checkpointing:
        # Each block keeps only its bf16 input; the backward pass recomputes one block at a time,
        # which then holds that block's full activations and its gradients flowing through.
        activations = tokens * (arch.layers * 2 * arch.hidden_size + per_layer + 4 * arch.hidden_size)
    else:
        # Every block's activations, plus autocast's bf16 copies of the fp32 LoRA factors (kept for backward).
        activations = tokens * arch.layers * per_layer + (0 if qlora else lora_params * 2)
        if stage is StageName.dpo:
            activations += tokens * per_layer  # the no-grad reference forward, one block at a time, on top
    parts["activations"] = activations / GIB
    if fused_lm_head:
        # Two bf16 tiles (forward, and the recomputing backward), the selected hidden states in bf16
        # and their fp32 gradient.
        parts["LM head"] = (2 * HEAD_TILE[0] * HEAD_TILE[1] * 2 + tokens * arch.hidden_size * 6) / GIB
    else:
        parts["LM head"] = tokens * arch.vocab_size * 12 / GIB
    parts["runtime"] = TRAIN_CONTEXT_GIB
    what = f"TRL {stage.value}, {sequences} x {max_length} tok, " + ("QLoRA" if qlora else "bf16 LoRA")
    what += ", ckpt" if checkpointing else ", no ckpt"
    notes = []
    if stage is StageName.sft and config.sft.mode is SftMode.sequential:
        notes.append(
            f"sft (sequential): the DPO adapter is folded in float32 on the CPU first: "
            f"~{_size(arch.parameters * 4)} of host RAM"
            + (f", and ~{_size(arch.parameters * 2)} of scratch disk with QLoRA" if qlora else "")
        )
    return Need(f"{label} ({what})", "train", parts, notes=notes)


def _size(nbytes: float) -> str:
    return f"{nbytes / GIB:.0f} GiB" if nbytes >= GIB else f"{nbytes / MIB:.0f} MiB"


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# The plan: every stage, every card, with advice
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One model of one stage, with a verdict and, where it does not fit, advice, per card."""

    stage: str
    need: Need
    verdicts: dict[float, Verdict]
    advice: dict[float, str]


# A change to a config, as the override a user types and the edit it makes.
Change = tuple[str, Callable[[OctrainConfig], None]]


def _set(path: str, value: Any) -> Change:
    def apply(config: OctrainConfig) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, value)

    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{path}={text}", apply


def _swap_model(role: ModelRole, preset: str) -> Change:
    """``model@ROLE=PRESET``: the model preset from configs/model, as Hydra would put it in."""

    def apply(config: OctrainConfig) -> None:
        from omegaconf import OmegaConf

        from octrain.core.paths import configs_dir

        values = OmegaConf.to_container(OmegaConf.load(configs_dir() / "model" / f"{preset}.yaml"))
        assert isinstance(values, dict)
        current = config.model(role)
        # A recipe's own settings for the role (teacher.quantization, say) outlive a swapped preset,
        # as they do when Hydra composes the recipe with model@ROLE=PRESET.
        swapped = ModelConfig(**{str(k): v for k, v in values.items()})
        swapped.quantization = current.quantization
        swapped.gpu_memory_utilization = current.gpu_memory_utilization
        setattr(config, role.value, swapped)

    return f"model@{role.value}={preset}", apply


def _engine_changes(config: OctrainConfig, role: ModelRole) -> list[list[Change]]:
    """Changes to try, in order, for an engine that does not fit (each verified before it is advised)."""
    model = config.model(role)
    r = role.value
    if config.sampler.backend is SamplerBackend.hf:
        sizes = [b for b in (8, 4, 1) if b < config.sampler.hf.batch_size]
        return [[_set("sampler.hf.batch_size", b)] for b in sizes]
    short = [_set(f"{r}.max_model_len", 4096)] if model.max_model_len > 4096 else []
    tp2 = [_set("sampler.vllm.tensor_parallel_size", 2)] if config.sampler.vllm.tensor_parallel_size < 2 else []
    share = [_set(f"{r}.gpu_memory_utilization", 0.95)] if (model.gpu_memory_utilization or 0.9) < 0.95 else []
    candidates: list[list[Change]] = []
    # Only the teacher is quantized: the student is sampled as it is trained, or its "rejected"
    # answers and its evaluation would come from a different model. Qwen3-32B has a published fp8
    # checkpoint, half the read of the bf16 one and no quantizing at load; others are quantized by vLLM.
    fp8: list[Change] = []
    if role is ModelRole.teacher and model.quantization is None and architecture_of(model).stored_quantization is None:
        fp8 = (
            [_swap_model(role, "qwen3_32b_fp8")]
            if model.path == "Qwen/Qwen3-32B"
            else [_set(f"{r}.quantization", "fp8")]
        )
    tp4 = [_set("sampler.vllm.tensor_parallel_size", 4)] if config.sampler.vllm.tensor_parallel_size < 4 else []
    for option in (fp8, short, share, fp8 + short, fp8 + share, tp2, tp2 + fp8, tp4, tp4 + fp8):
        if option and option not in candidates:
            candidates.append(option)
    if role is ModelRole.teacher and "32B" in model.path:
        smaller = [_swap_model(role, "qwen3_8b")]
        candidates += [smaller, [*smaller, _set(f"{r}.quantization", "fp8")]]
    return candidates


def _training_changes(config: OctrainConfig, stage: StageName) -> list[list[Change]]:
    options = config.trainer.trl
    settings = config.dpo if stage is StageName.dpo else config.sft
    ckpt = [_set("trainer.trl.gradient_checkpointing", True)] if options.gradient_checkpointing is False else []
    smaller = [
        [*ckpt, _set("trainer.trl.per_device_batch_size", b)] for b in (2, 1) if b < options.per_device_batch_size
    ]
    qlora = [_set("trainer.trl.load_in_4bit", True)] if not options.load_in_4bit else []
    shorter = [_set(f"{stage.value}.max_length", settings.max_length // 2)]
    candidates: list[list[Change]] = [ckpt] if ckpt else []
    candidates += smaller
    if qlora:
        candidates += [ckpt + qlora, *[c + qlora for c in smaller]]
    candidates += [c + shorter for c in (smaller[-1:] or [ckpt]) if c is not None]
    return [c for c in candidates if c]


def _advise(
    config: OctrainConfig,
    card: float,
    needs: Callable[[OctrainConfig], Need],
    changes: list[list[Change]],
    *,
    accept_tight: bool = True,
) -> str:
    """What to change so that ``needs`` fits ``card``, every suggestion checked with the same estimate.

    The first change that fits on one GPU with the same models wins. Failing that, the first
    one-GPU change that at least runs (tight, only with ``accept_tight``), the first that fits on
    several GPUs and the first that swaps in a smaller model are all offered, since which is better
    depends on the machine. Returns "" when nothing helps.
    """
    found: dict[str, tuple[str, str]] = {}  # kind of change -> (status, text), the first of each kind
    for change in changes:
        trial = copy.deepcopy(config)
        for _, apply in change:
            apply(trial)
        try:
            status = needs(trial).judge(card).status
        except ConfigError:
            continue
        if status == "no" or (status == "tight" and not accept_tight):
            continue
        text = " ".join(f"`{override}`" for override, _ in change)
        kind = "multi" if "tensor_parallel_size" in text else "smaller" if "model@" in text else "same"
        if kind == "same" and status == "fits":
            return text
        if kind not in found or (found[kind][0] == "tight" and status == "fits"):
            found[kind] = (status, text)
    # A one-GPU change that only runs (tight) first: on a single small card it is the one that applies.
    offers = [found[k] for k in ("same", "multi", "smaller") if k in found]
    return " or ".join(text + (" (tight)" if status == "tight" else "") for status, text in offers)


@dataclass(frozen=True)
class _Item:
    """One model a stage loads: how to size it for a config on a card, and what may make it smaller."""

    stage: str
    needs: Callable[[OctrainConfig, float], Need]
    changes: Callable[[OctrainConfig], list[list[Change]]]


def _engine_item(
    stage: str,
    role: ModelRole,
    new_tokens: Callable[[OctrainConfig], int],
    rank: Callable[[OctrainConfig], int] = lambda _: 0,
) -> _Item:
    def needs(config: OctrainConfig, card: float) -> Need:
        return engine_need(
            config, role, stage=stage, max_new_tokens=new_tokens(config), adapter_rank=rank(config), card=card
        )

    return _Item(stage.split("-")[0], needs, lambda config: _engine_changes(config, role))


def _training_item(stage: StageName) -> _Item:
    def needs(config: OctrainConfig, card: float) -> Need:
        return training_need(config, stage)  # the card only judges it: training allocates what it uses

    return _Item(stage.value, needs, lambda config: _training_changes(config, stage))


def _introspect_tokens(config: OctrainConfig) -> int:
    # A self-interaction's context grows turn by turn and the engine holds conversations at every
    # turn at once: half the final length on average. Reflections are single answers.
    turns = config.scale.interaction_turns * config.introspect.interaction_sampling.max_new_tokens // 2
    return max(config.introspect.reflection_sampling.max_new_tokens, turns)


def _items(config: OctrainConfig) -> list[_Item]:
    """The models each stage of the run loads, in the order the stages run (imported data loads none)."""
    stages = set(config.stages)
    items: list[_Item] = []
    if StageName.prompts in stages:
        items.append(_engine_item("prompts", config.prompts.generator, lambda c: c.prompts.sampling.max_new_tokens))
    if StageName.pairs in stages and not config.pairs.source:
        for role in (ModelRole.teacher, ModelRole.student):
            items.append(_engine_item(f"pairs-{role.value}", role, lambda c: c.pairs.sampling.max_new_tokens))
    if StageName.dpo in stages:
        items.append(_training_item(StageName.dpo))
    if StageName.introspect in stages and not config.introspect.source:
        items.append(_engine_item("introspect", ModelRole.student, _introspect_tokens, lambda c: c.dpo.lora.rank))
    if StageName.sft in stages:
        items.append(_training_item(StageName.sft))
    if StageName.eval in stages:
        # The trained model is served as one adapter holding both updates: rank dpo + sft.
        both = lambda c: c.dpo.lora.rank + c.sft.lora.rank  # noqa: E731
        items.append(_engine_item("eval", ModelRole.student, lambda c: c.eval.sampling.max_new_tokens, both))
        items.append(_engine_item("eval", ModelRole.teacher, lambda c: c.eval.judge_sampling.max_new_tokens))
    return items


def plan(config: OctrainConfig, cards: Sequence[float] = CARDS) -> list[Row]:
    """Every model the run's stages load, judged on each card, with advice where it is not a clean fit."""
    rows = []
    for item in _items(config):
        verdicts: dict[float, Verdict] = {}
        advice: dict[float, str] = {}
        for card in cards:
            verdict = item.needs(config, card).judge(card)
            verdicts[card] = verdict
            if verdict.status != "fits":
                advice[card] = _advise(
                    config,
                    card,
                    partial(item.needs, card=card),
                    item.changes(config),
                    accept_tight=verdict.status == "no",
                )
        rows.append(Row(item.stage, item.needs(config, max(cards)), verdicts, advice))
    return rows


def markdown_table(rows: Sequence[Row], cards: Sequence[float] = CARDS) -> str:
    """Stage x card, with the GiB each needs; a "no" carries the change that makes it fit."""
    header = "| stage | what runs | needs (GiB) | " + " | ".join(f"{_card_name(c)}" for c in cards) + " |"
    lines = [header, "|" + "---|" * 3 + "---|" * len(cards)]
    for row in rows:
        need = row.need
        if need.kind == "vllm":
            needed = (
                f"{need.fixed:.1f} + KV ({need.minimum:.1f} min, {need.comfortable:.1f} for {USEFUL_SEQUENCES} seqs)"
            )
        elif need.kind == "none":
            needed = "0"
        else:
            needed = f"{need.comfortable:.1f}"
        cells = []
        for card in cards:
            verdict = row.verdicts[card]
            advice = row.advice.get(card, "")
            if verdict.status == "no":
                cells.append(f"no → {advice or 'does not fit one card of this size'}")
            else:
                cells.append(f"{verdict.text}; faster: {advice}" if advice else verdict.text)
        lines.append(f"| {row.stage} | {need.label} | {needed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _card_name(card: float) -> str:
    return f"{card:g} GB ({card_gib(card):g} GiB)"


def describe(config: OctrainConfig, rows: Sequence[Row], cards: Sequence[float], *, detail: bool = False) -> str:
    """The whole report: models, the table, then the notes and (``detail``) every row's parts."""
    lines = [f"# Memory plan: {config.name} (an estimate; see octrain.memory.plan)", ""]
    for role in ModelRole:
        model = config.model(role)
        arch = architecture_of(model)
        lines.append(
            f"- {role.value}: {model.path}, {arch.parameters:,} parameters, {arch.layers} layers, "
            f"KV {arch.kv_bytes_per_token() / 1024:.0f} KiB/token, max_model_len {model.max_model_len}"
            f"{', ' + model.quantization if model.quantization else ''} (shape from {arch.source})"
        )
    lines += ["", markdown_table(rows, cards), ""]
    notes = sorted({note for row in rows for note in row.need.notes})
    lines += [f"- {note}" for note in notes]
    lines.append(
        f"- vLLM rows: the engine takes gpu_memory_utilization x the card; 'fits' = KV for {USEFUL_SEQUENCES} "
        "sequences of the stage's length, 'tight' = it starts but batches fewer (slower), 'no' = not even one "
        "max_model_len sequence; their 'needs' is at the largest card's vLLM defaults (more batched tokens "
        "and sequences from 70 GiB up). Training rows: peak of the longest batch against "
        f"{TRAIN_HEADROOM:.0%} of the card."
    )
    if detail:
        lines.append("")
        for row in rows:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row.need.parts.items())
            kv = f", KV {row.need.kv_token_bytes / 1024:.0f} KiB/token" if row.need.kv_token_bytes else ""
            lines.append(f"- {row.stage}, {row.need.label}: {parts} GiB{kv}")
    return "\n".join(lines)


def load_run_config(path: str | Path) -> OctrainConfig:
    """The typed config from a run directory's ``config.yaml`` (or that file itself)."""
    from omegaconf import OmegaConf

    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{path}: no config.yaml there")
    merged = OmegaConf.merge(OmegaConf.structured(OctrainConfig), OmegaConf.load(file))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def measure_saved_activations(
    shape: dict[str, int], *, tokens: int = 512, rank: int = 64
) -> float:  # pragma: no cover - a calibration tool, minutes of CPU
    """Bytes autograd saves per token in one Qwen3 decoder layer of ``shape`` with LoRA, on the CPU.

    How :data:`ACT_COEFFS` was fitted: a 1- and a 3-layer model at ``tokens`` and ``2 x tokens``
    tokens, bf16 weights, LoRA ``rank`` on all linear layers, bf16 autocast; the saved tensors'
    storages are counted once each, parameters excluded. Differencing layers and lengths leaves the
    per-layer, per-token cost, without the fixed parts (embeddings, autocast's copies of the factors).
    ``shape``: hidden_size, intermediate_size, num_attention_heads, num_key_value_heads.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    def saved(layers: int, length: int) -> int:
        config = Qwen3Config(num_hidden_layers=layers, head_dim=128, vocab_size=256, tie_word_embeddings=True, **shape)
        model = get_peft_model(
            Qwen3ForCausalLM(config).to(torch.bfloat16),
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        storages: dict[tuple[int, int], int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            return tensor

        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 256, (1, length)))
        weights = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in model.parameters()}
        return sum(size for key, size in storages.items() if key not in weights)

    long, short = (saved(3, 2 * tokens) - saved(1, 2 * tokens)), (saved(3, tokens) - saved(1, tokens))
    return (long - short) / 2 / tokens


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m octrain.memory.plan",
        description="Estimate each stage's GPU memory on 24/48/80/141 GB cards, with the settings to change.",
    )
    parser.add_argument("target", nargs="*", help="+recipe=NAME [key=value ...], or a run directory / config.yaml")
    parser.add_argument(
        "--card", action="append", type=float, help="card size in GB (repeatable; default 24 48 80 141)"
    )
    parser.add_argument("--detail", action="store_true", help="also list every row's parts")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cards = tuple(args.card) if args.card else CARDS
    try:
        config = _config_from(args.target)
        print(describe(config, plan(config, cards), cards, detail=args.detail))
    except ConfigError as exc:
        print(f"octrain.memory.plan: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _config_from(target: Sequence[str]) -> OctrainConfig:
    if len(target) == 1 and "=" not in target[0]:
        return load_run_config(target[0])
    recipes = [t.split("=", 1)[1] for t in target if t.lstrip("+").startswith("recipe=")]
    if len(recipes) != 1:
        raise ConfigError("name one recipe (+recipe=NAME) and any overrides, or a run directory")
    from octrain.core.compose import compose_config

    overrides = [t for t in target if not t.lstrip("+").startswith("recipe=")]
    try:
        return compose_config(recipes[0], overrides)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's and OmegaConf's errors: a bad override
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc


if __name__ == "__main__":
    sys.exit(main())
