"""The parts every LoRA training on one GPU has: frozen weights, the trained factors, activations per token.

Shared by DPO and SFT (:mod:`octrain.memory.training`) and on-policy distillation
(:mod:`octrain.memory.distill_training`); how the activation figures were calibrated is told in
:mod:`octrain.memory.training`.
"""

from __future__ import annotations

from collections.abc import Sequence

from octrain.core.config import LoraSettings
from octrain.memory.needs import GIB
from octrain.memory.shapes import Architecture

# Bytes autograd keeps per token in one decoder layer of a LoRA model in bf16 (fp32 LoRA factors,
# bf16 autocast, SDPA), as a linear function of the layer's widths. Fitted on six shapes around
# Qwen3-4B's (H=2560, I=9728, q=4096, kv=1024, r=64: 174,248 B) by varying one width at a time
# (measure_saved_activations, CPU); it then predicted two shapes it had not seen (H=256 and
# H=1024) within 1% (tests/memory/test_memory_plan.py measures one again). Each hidden unit costs 18 B
# (residual stream, norms in fp32, the LoRA inputs cast to fp32), each intermediate unit 8 B (gate,
# up, SiLU, product), each query unit 10 B, each key/value unit 8 B, each LoRA rank 2 B per adapted
# module, each head 4 B (SDPA's logsumexp).
ACT_COEFFS = {"hidden": 18, "intermediate": 8, "q": 10, "kv": 8, "lora_rank_per_module": 2, "head": 4, "const": 168}
NF4_BYTES = 0.516  # 4-bit NF4 + double-quantized absmax (8 bits per 64 weights, fp32 per 256 blocks)


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


def weights_and_lora(arch: Architecture, lora_params: int, *, qlora: bool) -> dict[str, float]:
    """GiB of the frozen weights and of the trained LoRA factors with their gradients and AdamW moments."""
    if qlora:
        # prepare_model_for_kbit_training upcasts everything bitsandbytes leaves alone (embeddings,
        # head, norms) to fp32; the fused head casts the head back to bf16 for each call.
        other = arch.parameters - arch.layer_linear_parameters
        weights = arch.layer_linear_parameters * NF4_BYTES + other * 4 + arch.vocab_size * arch.hidden_size * 2
        # TRL casts a quantized model's LoRA factors to bf16: param, grad and both AdamW moments in bf16.
        return {"weights": weights / GIB, "LoRA + AdamW": lora_params * 8 / GIB}
    # fp32 factors (PEFT upcasts adapters next to a bf16 base), fp32 grads, two fp32 AdamW moments.
    return {"weights": arch.parameters * 2 / GIB, "LoRA + AdamW": lora_params * 16 / GIB}


def lora_training_parts(
    arch: Architecture, lora: LoraSettings, tokens: int, *, checkpointing: bool, qlora: bool
) -> tuple[dict[str, float], float]:
    """The weights and LoRA parts (GiB) of training ``lora`` on ``tokens`` tokens, and the activations' bytes.

    Without checkpointing, every block's activations are kept, plus autocast's bf16 copies of the fp32
    LoRA factors (kept for the backward pass).
    """
    lora_params = arch.lora_parameters(lora.rank, lora.target_modules)
    parts = weights_and_lora(arch, lora_params, qlora=qlora)
    per_layer = activation_bytes_per_layer_token(arch, lora.rank, lora.target_modules)
    if checkpointing:
        return parts, checkpointed_activations(arch, tokens, per_layer)
    return parts, tokens * arch.layers * per_layer + (0 if qlora else lora_params * 2)


def checkpointed_activations(arch: Architecture, tokens: int, per_layer: float) -> float:
    """Bytes of activations with gradient checkpointing: each block keeps only its bf16 input, and the
    backward pass recomputes one block at a time, holding its full activations and the gradients through it."""
    return tokens * (arch.layers * 2 * arch.hidden_size + per_layer + 4 * arch.hidden_size)
