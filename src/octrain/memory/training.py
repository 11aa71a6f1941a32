"""What LoRA training with TRL needs: the peak of DPO or SFT on one GPU, for the worst batch.

(Stage 1 by on-policy distillation, ``distill.method=sdft``, is sized in
:mod:`octrain.memory.distill_training`; both build on :mod:`octrain.memory.lora_training`.)

Frozen weights (bf16, or NF4 with QLoRA), the LoRA factors with their gradients and AdamW moments
(PEFT keeps the factors in fp32 next to a bf16 base, so 16 bytes per trained parameter; with QLoRA
TRL casts them to bf16, 8 bytes), activations per token (with gradient checkpointing: each layer's
input plus one layer being recomputed), the LM head, and a fixed allowance for the CUDA context.
DPO forwards chosen and rejected together, so a device batch of ``b`` pairs is ``2b`` sequences;
every sequence is counted at its maximum length, the worst batch a run can draw.

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

from octrain.core.config import DistillMethod, OctrainConfig, SftMode, StageName, TrainerBackend
from octrain.memory.distill_training import sdft_need
from octrain.memory.lora_training import activation_bytes_per_layer_token, lora_training_parts
from octrain.memory.needs import GIB, TRAIN_CONTEXT_GIB, Need, short_name, size_text
from octrain.memory.shapes import architecture_of

HEAD_TILE = (4096, 32768)  # TRL 1.16's chunked log-prob kernel: tokens x vocab entries per tile


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
    label = f"student {short_name(config.student.path)}"
    if config.trainer.backend is TrainerBackend.tinker:
        return Need(f"{label} (tinker: trained remotely)", "none")
    if stage is StageName.dpo and config.distill.method is DistillMethod.sdft:
        return sdft_need(config, assume_cuda=assume_cuda)
    settings = config.dpo if stage is StageName.dpo else config.sft
    lora, batch_size, max_length = settings.lora, settings.batch_size, settings.max_length
    per_device = min(options.per_device_batch_size, batch_size)
    sequences = per_device * (2 if stage is StageName.dpo else 1)  # DPO: chosen and rejected together
    tokens = sequences * max_length
    checkpointing = assume_cuda if options.gradient_checkpointing is None else options.gradient_checkpointing
    qlora = options.load_in_4bit
    parts, activations = lora_training_parts(arch, lora, tokens, checkpointing=checkpointing, qlora=qlora)
    if not checkpointing and stage is StageName.dpo:
        # The no-grad reference forward, one block at a time, on top.
        activations += tokens * activation_bytes_per_layer_token(arch, lora.rank, lora.target_modules)
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
            f"~{size_text(arch.parameters * 4)} of host RAM"
            + (f", and ~{size_text(arch.parameters * 2)} of scratch disk with QLoRA" if qlora else "")
        )
    return Need(f"{label} ({what})", "train", parts, notes=notes)


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
