"""What a sampling engine needs: a vLLM engine, or transformers' generate for ``sampler=hf``.

A vLLM engine holds its weights (bytes per parameter by quantization; the embedding and the output
head stay in bf16), the preallocated LoRA slot when it serves an adapter, an allowance for the CUDA
context, CUDA graphs and the memory profiling run, and KV cache:
``2 (K and V) x layers x KV heads x head_dim x 2 bytes`` per token. How that is judged against a
card (the engine's share of it, the sequences its KV holds) is :meth:`octrain.memory.needs.Need.judge`.

transformers' generate holds bf16 weights, the KV of its whole batch and the last position's
logits; it allocates what it uses, so it is judged like a training.
"""

from __future__ import annotations

from octrain.core.config import ModelConfig, ModelRole, OctrainConfig, SamplerBackend
from octrain.memory.needs import GIB, TRAIN_CONTEXT_GIB, USEFUL_SEQUENCES, Need, card_gib, short_name
from octrain.memory.shapes import Architecture, architecture_of
from octrain.trainers.merge import serving_rank

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
    label = f"{role.value} {short_name(model.path)}"
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
