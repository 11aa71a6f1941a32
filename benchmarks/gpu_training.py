"""LoRA DPO and SFT throughput, MFU and peak memory on a real-size architecture with random weights.

    python benchmarks/gpu_training.py --out benchmarks/gpu_training.json        # a GPU: Qwen3-4B shape
    python benchmarks/gpu_training.py --smoke --out /tmp/smoke.json             # the CPU: tiny shape, seconds

What runs. Qwen3-4B-Instruct-2507's architecture (hidden 2560, 36 layers, 32 query / 8 KV heads of 128,
MLP 9728, vocabulary 151,936, tied embeddings), built from a ``Qwen3Config`` with random weights in bf16
on the GPU: nothing is downloaded. Each configuration of the grid trains a few steps of LoRA (rank 64,
alpha 128, all linear layers: octrain's defaults) in its own process, started with a timeout, so an
out-of-memory error, a crash or a hang is written into the results as that configuration's status and the
next one still runs. The grid crosses DPO (max_length 1024) and SFT (max_length 3072) with gradient
checkpointing on and off at a few per-device batch sizes, all through octrain's own code
(``make_trainer_class`` + ``build_dpo_args`` + ``lora_config`` as ``train_dpo`` calls them, and
``build_sft_trainer`` on a transcripts file, octrain's assistant-only mask included), next to TRL's stock
``DPOTrainer`` / ``SFTTrainer`` with their default arguments on the same data (only what a run needs is
set: batch size, ``max_length``, the same LoRA config, fp32 on the CPU, logging every step so losses
can be read, one epoch over the few examples).

Why a word-level tokenizer. TRL 1.16's SFTTrainer would take pre-tokenized ``input_ids`` +
``assistant_masks``, but its DPOTrainer always tokenizes prompt, chosen and rejected itself (it has no
pre-tokenized path for text models), and octrain's SFT path renders transcripts with the chat template and
masks them from character offsets. So both need a real fast tokenizer with a chat template. The tiny model's
BPE has 1,024 tokens (its ids would touch under 1% of a 151,936-row embedding) and a BPE of Qwen's size
cannot be trained offline without a corpus, so this script builds a ``WordLevel`` tokenizer whose vocabulary
is exactly the model's: word ``w17`` is token 17,
plus ChatML's special tokens and the three role names. Synthetic "text" is a string of such words, so every
example has exactly the number of tokens chosen for it, token ids are spread over the whole vocabulary (the
embedding and the 151,936-wide head do their real work), and the data path is the production one, not a
shortcut around it. The same construction serves the smoke mode with the tiny model's shape.

Measured, per configuration, over the steps after the warm-up steps (the first steps pay for allocator growth
and kernel selection): tokens/s is real (non-padding) tokens through the model per second of wall time,
step end to step end (the whole training loop: collation, forward, backward, optimizer, logging); peak
memory is ``torch.cuda.max_memory_allocated`` (on the CPU, the process's peak RSS); losses are TRL's
logged loss of every step, so runs with checkpointing on and off can be compared (same seed, same data,
same LoRA init: they should agree to bf16 noise).

MFU convention (:func:`flops_per_sequence`). Model FLOPs only, counted on real tokens (padding is waste,
not work): the frozen base costs 2N per token forward and 2N backward (gradients with respect to
activations only: the base has no weight gradients), where N counts the matmul weights (attention
projections, MLP, and the LM head, which a tied embedding still multiplies by); LoRA's own matrices cost
6 x their parameters per token (forward, activation and weight gradients); causal attention costs
2 x heads x head_dim x s x (s + 1) per layer for a sequence of length s forward (QK^T and AV over the
keys each token attends to), twice that backward. DPO adds the reference forward (the base with the
adapter off: 2N plus attention) on every chosen and rejected sequence. Recomputation under gradient
checkpointing is not counted: it is the price of the memory saving, not model work, so checkpointing
shows up as lower MFU. Softmax, norms, rotary and the loss are ignored (well under 1%). Peak is the dense
bf16 tensor-core figure of the card's datasheet (:data:`PEAK_BF16_TFLOPS`); on an unknown card, and on
the CPU, MFU is reported as none.

Time on one H100/H200 (the default grid, 14 configurations, 2 warm-up + 4 measured steps each): a
process spends ~15-25 s importing, building the random model on the GPU and preparing data, and a
measured DPO or SFT step at batch 8 is ~300 TFLOP, ~1 s at 35-45% MFU; 20-30 s a configuration, 5-7
min in all. ``--budget`` (default 450 s) stops starting new configurations when it would be overrun and
records the rest as skipped, so a slow machine still returns a complete file.

Nothing here is a test and no figure is asserted; ``tests/test_gpu_benchmark.py`` runs ``--smoke``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Qwen3-4B-Instruct-2507's config.json (the numbers that set FLOPs and memory; rope and norm eps for completeness).
QWEN3_4B_SHAPE: dict[str, Any] = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 262144,
    "rope_theta": 5_000_000.0,
    "rms_norm_eps": 1e-6,
}

# Dense (no sparsity) bf16 tensor-core peak per device, TFLOP/s, from NVIDIA's datasheets. The first key
# found in torch.cuda.get_device_name() wins, so the more specific names come first ("H100 PCIe" before
# "H100", "L40S" before "L4", "A100" before "A10").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
ROLE_WORDS = ("system", "user", "assistant")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BROKEN_ENV = "OCTRAIN_GPU_BENCH_BROKEN"  # tests: "1" adds a configuration that cannot run (LoRA rank 0)


# ---------------------------------------------------------------------------------------------- FLOPs


def linear_shapes(shape: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer in one decoder block."""
    hidden, head_dim = shape["hidden_size"], shape["head_dim"]
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    mlp = shape["intermediate_size"]
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, mlp),
        "up_proj": (hidden, mlp),
        "down_proj": (mlp, hidden),
    }


def matmul_params(shape: dict[str, Any]) -> int:
    """Weights that take part in a matmul per token: every block's linears and the LM head.

    The embedding lookup does no arithmetic; a tied head still multiplies by the same matrix.
    """
    block = sum(i * o for i, o in linear_shapes(shape).values())
    return shape["num_hidden_layers"] * block + shape["hidden_size"] * shape["vocab_size"]


def lora_params(shape: dict[str, Any], rank: int) -> int:
    """Parameters of rank-``rank`` LoRA on every block linear (PEFT's all-linear leaves the head out)."""
    block = sum(rank * (i + o) for i, o in linear_shapes(shape).values())
    return shape["num_hidden_layers"] * block


def attention_flops(shape: dict[str, Any], length: int) -> float:
    """Forward FLOPs of causal attention (QK^T and AV) over one sequence of ``length`` tokens, all layers."""
    per_layer = 2 * shape["num_attention_heads"] * shape["head_dim"] * length * (length + 1)
    return float(shape["num_hidden_layers"] * per_layer)


def flops_per_sequence(shape: dict[str, Any], length: int, *, lora_rank: int, kind: str) -> float:
    """Model FLOPs of training on one sequence (see the module notes for the convention).

    SFT: base forward 2N + base backward 2N (activation gradients only) + LoRA 6P per token, and attention
    forward + 2x backward. DPO: the same for the policy, plus the reference forward (2N per token and
    attention, adapter off) on the same sequence.
    """
    if kind not in ("sft", "dpo"):
        raise ValueError(f"kind must be 'sft' or 'dpo', not {kind!r}")
    n, p = matmul_params(shape), lora_params(shape, lora_rank)
    attention = attention_flops(shape, length)
    policy = length * (4 * n + 6 * p) + 3 * attention
    reference = length * 2 * n + attention if kind == "dpo" else 0.0
    return float(policy + reference)


def peak_tflops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    return next((value for key, value in PEAK_BF16_TFLOPS if key in device_name), None)


# ------------------------------------------------------------------------------------------ the grid


@dataclass
class BenchConfig:
    """One configuration: which loss, whose settings, and the shape of the batches."""

    name: str
    kind: str  # "dpo" or "sft"
    trainer: str  # "octrain" (octrain's code and settings) or "trl" (stock trainer, default arguments)
    per_device_batch: int
    max_length: int
    gradient_checkpointing: bool | None  # None: the trainer's own default (TRL's is on)
    smoke: bool = False
    warmup_steps: int = 2
    measured_steps: int = 4
    lora_rank: int = 64
    seed: int = 0


@dataclass
class Result:
    """What one configuration's process reports (or what the parent records when it reported nothing)."""

    config: dict[str, Any]
    status: str  # ok | oom | failed | crashed | timeout | skipped
    error: str | None = None
    device: str | None = None
    steps_measured: int = 0
    seconds: float | None = None
    real_tokens: int = 0
    padded_tokens: int = 0
    tokens_per_s: float | None = None
    model_tflops_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    peak_memory_kind: str | None = None
    peak_reserved_gib: float | None = None  # what the caching allocator held: the card's real limit
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    startup_seconds: float | None = None
    wall_seconds: float | None = None


def default_grid(smoke: bool) -> list[BenchConfig]:
    """The configurations, most telling first, so a budget cut drops the least informative ones."""
    if smoke:
        rows = [
            ("dpo", "octrain", 2, True),
            ("dpo", "octrain", 2, False),
            ("dpo", "trl", 2, None),
            ("sft", "octrain", 2, True),
            ("sft", "trl", 2, None),
        ]  # every code path once (checkpointing is one flag, shared by DPO and SFT): imports dominate here
        lengths = {"dpo": 128, "sft": 256}
        steps = {"warmup_steps": 1, "measured_steps": 2}
    else:
        # Batch 4 of each first (the comparison that matters), then the batch-size sweep. Without
        # checkpointing, activations take ~6 MiB a token: SFT 8 x 3072 would need ~150 GiB, so the
        # sweep stops at 4 there; DPO 8 (16 x 1024 tokens) is left in to show where the card ends.
        rows = [
            ("dpo", "octrain", 4, True),
            ("dpo", "octrain", 4, False),
            ("dpo", "trl", 4, None),
            ("sft", "octrain", 4, True),
            ("sft", "octrain", 4, False),
            ("sft", "trl", 4, None),
            ("dpo", "octrain", 8, True),
            ("sft", "octrain", 8, True),
            ("dpo", "octrain", 8, False),
            ("dpo", "octrain", 2, True),
            ("dpo", "octrain", 2, False),
            ("sft", "octrain", 2, True),
            ("sft", "octrain", 2, False),
            ("sft", "octrain", 1, False),
        ]
        lengths = {"dpo": 1024, "sft": 3072}
        steps = {"warmup_steps": 2, "measured_steps": 4}
    grid = []
    for kind, trainer, batch, checkpointing in rows:
        ckpt = {True: "ckpt", False: "nockpt", None: "default"}[checkpointing]
        grid.append(
            BenchConfig(
                name=f"{kind}-{trainer}-{ckpt}-b{batch}",
                kind=kind,
                trainer=trainer,
                per_device_batch=batch,
                max_length=lengths[kind],
                gradient_checkpointing=checkpointing,
                smoke=smoke,
                **steps,
            )
        )
    if os.environ.get(BROKEN_ENV) == "1":
        broken = grid[0]
        grid.append(BenchConfig(**{**asdict(broken), "name": "broken-lora-rank-0", "lora_rank": 0}))
    return grid


# ------------------------------------------------------------------------------- data and tokenizer


def synthetic_tokenizer(vocab_size: int) -> Any:
    """A fast word-level tokenizer with exactly ``vocab_size`` tokens and a ChatML template (see the notes)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from octrain.models.tiny import CHAT_TEMPLATE

    words = vocab_size - len(SPECIAL_TOKENS) - len(ROLE_WORDS)
    vocab = {f"w{i}": i for i in range(words)}
    for token in (*ROLE_WORDS, *SPECIAL_TOKENS):
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Special tokens are matched before the pre-tokenizer, so "<|im_end|>" glued to a word still splits off.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _words(rng: random.Random, count: int, words: int) -> str:
    return " ".join(f"w{rng.randrange(words)}" for _ in range(max(1, count)))


def dpo_examples(count: int, max_length: int, vocab_size: int, seed: int) -> list[dict[str, Any]]:
    """Conversational preference pairs: short prompts, answers that fill 45-100% of ``max_length``.

    A few run past ``max_length`` and are truncated, as real sampled answers sometimes are.
    """
    rng = random.Random(seed)
    words = vocab_size - len(SPECIAL_TOKENS) - len(ROLE_WORDS)
    rows = []
    for _ in range(count):
        prompt_len = rng.randint(max_length // 16, max_length // 4)
        answers = [max(8, int(rng.uniform(0.45, 1.05) * max_length) - prompt_len) for _ in range(2)]
        rows.append(
            {
                "prompt": [{"role": "user", "content": _words(rng, prompt_len, words)}],
                "chosen": [{"role": "assistant", "content": _words(rng, answers[0], words)}],
                "rejected": [{"role": "assistant", "content": _words(rng, answers[1], words)}],
            }
        )
    return rows


def sft_conversations(count: int, max_length: int, vocab_size: int, seed: int) -> list[list[dict[str, str]]]:
    """Multi-turn transcripts (system + 2-4 exchanges) of 50-100% of ``max_length`` tokens, a few longer."""
    rng = random.Random(seed)
    words = vocab_size - len(SPECIAL_TOKENS) - len(ROLE_WORDS)
    conversations = []
    for _ in range(count):
        budget = int(rng.uniform(0.5, 1.05) * max_length)
        turns = rng.randint(2, 4)
        system = max_length // 32
        user = max(4, (budget - system) // (turns * 4))  # users say a quarter of what the assistant says
        assistant = max(4, (budget - system) // turns - user - 8)  # 8: the template's tokens per exchange
        messages = [{"role": "system", "content": _words(rng, system, words)}]
        for _ in range(turns):
            messages.append({"role": "user", "content": _words(rng, user, words)})
            messages.append({"role": "assistant", "content": _words(rng, assistant, words)})
        conversations.append(messages)
    return conversations


# ---------------------------------------------------------------------------- one configuration


class CountingCollator:
    """Wraps the trainer's collator to record each batch's real sequence lengths, in order.

    Accelerate's data loader fetches one batch ahead, so batch ``i`` of this list is step ``i``'s, not the
    latest one collated.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[tuple[list[int], int]] = []  # (real length of each row, padded tokens)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        lengths = mask.sum(dim=1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
        self.batches.append(([int(n) for n in lengths], int(ids.numel())))
        return batch


def _build_model(shape: dict[str, Any], tokenizer: Any, device: str, dtype: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        **shape,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    # Initialised where it trains and in its training dtype: no fp32 copy of 4B weights on the host first.
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _make_trainer(cfg: BenchConfig, model: Any, tokenizer: Any, vocab: int, workdir: Path, use_cuda: bool) -> Any:
    from octrain.core.config import DpoStageConfig, LoraSettings, SftStageConfig, TRLOptions
    from octrain.trainers.trl_common import lora_config

    examples = (cfg.warmup_steps + cfg.measured_steps) * cfg.per_device_batch  # one epoch = exactly these steps
    lora = LoraSettings(rank=cfg.lora_rank)
    peft_config = lora_config(lora)
    if cfg.trainer == "octrain":
        # batch_size = per-device batch: one micro-batch per optimizer step, so a step is one batch.
        options = TRLOptions(
            per_device_batch_size=cfg.per_device_batch,
            gradient_checkpointing=cfg.gradient_checkpointing,
            logging_steps=1,
            save_steps=10**9,
        )
        if cfg.kind == "dpo":
            from datasets import Dataset

            from octrain.trainers.trl_dpo import build_dpo_args, make_trainer_class

            stage = DpoStageConfig(lora=lora, batch_size=cfg.per_device_batch, max_length=cfg.max_length)
            args = build_dpo_args(stage, options, workdir, seed=cfg.seed)
            dataset = Dataset.from_list(dpo_examples(examples, cfg.max_length, vocab, cfg.seed))
            return make_trainer_class()(
                model=model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=peft_config,
                kl_weight=stage.kl_weight,
            )
        from octrain.core.records import Conversation, save_records
        from octrain.trainers.trl_sft import build_sft_trainer

        path = workdir / "transcripts.jsonl"
        conversations = sft_conversations(examples, cfg.max_length, vocab, cfg.seed)
        save_records(
            path, [Conversation(id=f"c{i}", messages=m, kind="synthetic") for i, m in enumerate(conversations)]
        )
        stage = SftStageConfig(lora=lora, batch_size=cfg.per_device_batch, max_length=cfg.max_length)
        return build_sft_trainer(path, model, tokenizer, workdir, stage, options, seed=cfg.seed, model_name=cfg.name)

    # Stock TRL: default arguments except what a run needs (batch, length, device precision, logging).
    from datasets import Dataset

    needed: dict[str, Any] = {
        "output_dir": str(workdir / "checkpoints"),
        "per_device_train_batch_size": cfg.per_device_batch,
        "max_length": cfg.max_length,
        "num_train_epochs": 1,
        "logging_steps": 1,
        "report_to": "none",
        "seed": cfg.seed,
    }
    if not use_cuda:
        needed.update(bf16=False, use_cpu=True)
    if cfg.gradient_checkpointing is not None:
        needed["gradient_checkpointing"] = cfg.gradient_checkpointing
    if cfg.kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        dataset = Dataset.from_list(dpo_examples(examples, cfg.max_length, vocab, cfg.seed))
        return DPOTrainer(
            model=model,
            args=DPOConfig(**needed),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    from trl import SFTConfig, SFTTrainer

    conversations = sft_conversations(examples, cfg.max_length, vocab, cfg.seed)
    dataset = Dataset.from_list([{"messages": m} for m in conversations])
    return SFTTrainer(
        model=model,
        args=SFTConfig(**needed),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def run_one(cfg: BenchConfig, started: float) -> Result:
    """Build the model and trainer, train warm-up + measured steps, and measure (in this process)."""
    import octrain  # noqa: F401, I001  (first: it turns the libraries' telemetry off before they load)
    import torch
    from transformers import TrainerCallback

    use_cuda = torch.cuda.is_available() and not cfg.smoke
    device = "cuda" if use_cuda else "cpu"
    if cfg.smoke:
        from octrain.models.tiny import MODEL_SHAPE, VOCAB_SIZE

        shape = {**MODEL_SHAPE, "vocab_size": VOCAB_SIZE}
        torch.set_num_threads(1)  # the tiny shape gains nothing from threads, and CI cores are shared
    else:
        shape = dict(QWEN3_4B_SHAPE)
    dtype = torch.bfloat16 if use_cuda and torch.cuda.is_bf16_supported() else torch.float32
    device_name = torch.cuda.get_device_name(0) if use_cuda else f"cpu ({platform.processor() or platform.machine()})"
    result = Result(config=asdict(cfg), status="ok", device=device_name)
    tokenizer = synthetic_tokenizer(shape["vocab_size"])
    model = _build_model(shape, tokenizer, device, dtype)

    marks: list[float] = []
    losses: list[float] = []

    class Measure(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if use_cuda:
                torch.cuda.synchronize()  # a step is done when its kernels are, not when they are queued
            marks.append(time.perf_counter())
            control.should_save = False  # the end-of-training save is not part of the benchmark
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        trainer = _make_trainer(cfg, model, tokenizer, shape["vocab_size"], Path(tmp), use_cuda)
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        trainer.add_callback(Measure())
        if use_cuda:
            torch.cuda.reset_peak_memory_stats()
        result.startup_seconds = round(time.perf_counter() - started, 2)
        trainer.train()

    steps = len(marks)
    if steps <= cfg.warmup_steps:
        raise RuntimeError(f"only {steps} steps ran, no more than the {cfg.warmup_steps} warm-up steps")
    measured = range(cfg.warmup_steps, steps)
    seconds = marks[-1] - marks[cfg.warmup_steps - 1] if cfg.warmup_steps else marks[-1] - marks[0]
    lengths = [n for i in measured for n in counter.batches[i][0]]
    flops = sum(flops_per_sequence(shape, n, lora_rank=cfg.lora_rank, kind=cfg.kind) for n in lengths)
    result.steps_measured = len(measured)
    result.seconds = round(seconds, 4)
    result.step_seconds = [round(marks[i] - marks[i - 1], 4) for i in range(1, steps)]
    result.real_tokens = sum(lengths)
    result.padded_tokens = sum(counter.batches[i][1] for i in measured)
    result.tokens_per_s = round(result.real_tokens / seconds, 1)
    result.model_tflops_per_s = round(flops / seconds / 1e12, 3)
    peak = peak_tflops(device_name) if use_cuda else None
    result.mfu = round(flops / seconds / (peak * 1e12), 4) if peak else None
    if use_cuda:
        result.peak_memory_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result.peak_memory_kind = "cuda max_memory_allocated"
        result.peak_reserved_gib = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    else:
        result.peak_memory_gib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
        result.peak_memory_kind = "process peak RSS"
    result.losses = [round(x, 6) for x in losses]
    return result


def child_main(config_json: str, result_path: Path) -> int:
    """``--one``: run one configuration and write its Result; an exception becomes a status, not silence."""
    started = time.perf_counter()
    cfg = BenchConfig(**json.loads(config_json))
    try:
        result = run_one(cfg, started)
        code = 0
    except Exception as exc:  # every failure of a configuration is a finding to record
        import traceback

        traceback.print_exc()
        oom = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = Result(config=asdict(cfg), status="oom" if oom else "failed", error=f"{type(exc).__name__}: {message}")
        try:
            import torch

            if torch.cuda.is_available() and not cfg.smoke:
                result.peak_memory_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                result.peak_memory_kind = "cuda max_memory_allocated (at the failure)"
        except Exception:  # the figure is a bonus; the status is what counts
            pass
        code = 1
    result.wall_seconds = round(time.perf_counter() - started, 2)
    result_path.write_text(json.dumps(asdict(result)))
    return code


# ---------------------------------------------------------------------------------------- the parent


def run_in_subprocess(cfg: BenchConfig, timeout: float, log_dir: Path) -> Result:
    """One configuration in a fresh process; whatever happens to it ends up in the Result."""
    result_path = log_dir / f"{cfg.name}.result.json"
    log_path = log_dir / f"{cfg.name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(asdict(cfg)), "--result"]
    began = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if cfg.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # octrain's trainers pick bf16 on CUDA whenever they see one
    with log_path.open("w") as log:
        try:
            completed = subprocess.run(
                [*command, str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env=env,
                check=False,
            )
            returncode: int | None = completed.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    wall = round(time.perf_counter() - began, 2)
    tail = log_path.read_text(errors="replace")[-1500:]
    if result_path.is_file():
        result = Result(**json.loads(result_path.read_text()))
        if result.status != "ok":
            result.error = f"{result.error}\n--- log tail ---\n{tail}"
    elif returncode is None:
        result = Result(config=asdict(cfg), status="timeout", error=f"no result after {timeout:.0f} s\n{tail}")
    else:
        # Killed without a word (the kernel's OOM killer, a segfault in a kernel): say what the log shows.
        status = "oom" if "out of memory" in tail.lower() else "crashed"
        result = Result(config=asdict(cfg), status=status, error=f"exit code {returncode}\n{tail}")
    result.wall_seconds = wall
    return result


def machine_info(smoke: bool) -> dict[str, Any]:
    """Versions (from package metadata: importing TRL here would cost the parent seconds) and the GPU."""
    from importlib import metadata

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    if smoke:
        return info
    # Asked in a short process of its own: CUDA in this one would hold a context (~0.5 GiB) on the card
    # for the whole run, memory the configurations would then lack.
    probe = (
        "import json, torch\n"
        "ok = torch.cuda.is_available()\n"
        "print(json.dumps({'gpu': torch.cuda.get_device_name(0) if ok else None, 'cuda': torch.version.cuda,\n"
        "  'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if ok else None}))\n"
    )
    try:
        answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
        info.update(json.loads(answer.stdout.strip().splitlines()[-1]))
        info["peak_bf16_tflops"] = peak_tflops(info.get("gpu"))
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:  # the run goes on; the GPU is unknown
        info["gpu"] = f"unknown ({type(exc).__name__})"
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def markdown_table(results: list[Result], info: dict[str, Any]) -> str:
    head = (
        f"Machine: {info.get('gpu') or 'no GPU'} ({info.get('gpu_memory_gib', '-')} GiB), peak bf16 "
        f"{info.get('peak_bf16_tflops') or '-'} TFLOP/s; torch {info['torch']}, transformers {info['transformers']}, "
        f"trl {info['trl']}, peft {info['peft']}, Python {info['python']}"
    )
    lines = [
        head,
        "",
        "| configuration | status | tokens/s | model TFLOP/s | MFU | peak memory GiB | s/step | padding | "
        "loss first -> last | start s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ok = r.status == "ok"
        step = r.seconds / r.steps_measured if ok and r.seconds and r.steps_measured else None
        padding = 1 - r.real_tokens / r.padded_tokens if ok and r.padded_tokens else None
        loss = f"{r.losses[0]:.4f} -> {r.losses[-1]:.4f}" if r.losses else "-"
        status = r.status if ok else f"**{r.status}**"
        lines.append(
            f"| {r.config['name']} | {status} | {_fmt(r.tokens_per_s, ',.0f')} | {_fmt(r.model_tflops_per_s, '.3g')} "
            f"| {_fmt(r.mfu * 100 if r.mfu is not None else None, '.1f')}{'%' if r.mfu is not None else ''} "
            f"| {_fmt(r.peak_memory_gib, '.2f')} | {_fmt(step, '.3f')} "
            f"| {_fmt(padding * 100 if padding is not None else None, '.0f')}{'%' if padding is not None else ''} "
            f"| {loss} | {_fmt(r.startup_seconds, '.1f')} |"
        )
    failures = [r for r in results if r.status not in ("ok", "skipped") and r.error]
    for r in failures:
        lines.append(f"\n{r.config['name']}: {r.error.splitlines()[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU: the tiny model's shape, a few steps")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: print only)")
    parser.add_argument("--only", default="", help="comma-separated configuration names to run")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole grid (450; smoke 300)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration (150; smoke 120)")
    parser.add_argument("--jobs", type=int, default=1, help="configurations at once (smoke only: timings mix)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one is not None:
        return child_main(args.one, args.result)

    grid = default_grid(args.smoke)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in grid}
        if unknown:
            parser.error(f"unknown configuration(s) {sorted(unknown)}; known: {[c.name for c in grid]}")
        grid = [c for c in grid if c.name in wanted]
    budget = args.budget if args.budget is not None else (300.0 if args.smoke else 450.0)
    timeout = args.timeout if args.timeout is not None else (120.0 if args.smoke else 150.0)
    jobs = max(1, args.jobs) if args.smoke else 1  # on a GPU, two runs at once would share the card
    info = machine_info(args.smoke)
    if not args.smoke and not info.get("gpu"):
        # The 4B shape on a CPU would take ~16 GiB in fp32 and hours; every configuration would time out.
        parser.error("no CUDA device found: the Qwen3-4B grid needs a GPU (use --smoke for the CPU check)")
    started = time.perf_counter()
    results: dict[str, Result] = {}

    def write(final: bool) -> str:
        """The table, and the JSON after every configuration: a run killed from outside keeps what it measured."""
        ordered = [results[c.name] for c in grid if c.name in results]
        table = markdown_table(ordered, info)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "mode": "smoke" if args.smoke else "gpu",
                "complete": final,
                "machine": info,
                "shape": "tiny (octrain.models.tiny.MODEL_SHAPE)" if args.smoke else QWEN3_4B_SHAPE,
                "budget_seconds": budget,
                "total_seconds": round(time.perf_counter() - started, 1),
                "results": [asdict(r) for r in ordered],
                "table": table,
            }
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
        return table

    with tempfile.TemporaryDirectory(prefix="gpu-bench-logs-") as logs:

        def next_result(cfg: BenchConfig) -> Result:
            left = budget - (time.perf_counter() - started)
            if left < min(timeout, 20.0):  # too little time left to start a process and measure anything
                return Result(config=asdict(cfg), status="skipped", error=f"time budget of {budget:.0f} s spent")
            return run_in_subprocess(cfg, min(timeout, left), Path(logs))

        if jobs == 1:
            for cfg in grid:
                results[cfg.name] = next_result(cfg)
                _progress(results[cfg.name])
                write(final=False)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for cfg, result in zip(grid, pool.map(next_result, grid), strict=True):
                    results[cfg.name] = result
                    _progress(result)
    print(write(final=True))
    return 0


def _progress(result: Result) -> None:
    figure = f"{result.tokens_per_s:,.0f} tok/s" if result.tokens_per_s else (result.error or "").split("\n")[0]
    print(f"[{result.wall_seconds or 0:6.1f} s] {result.config['name']}: {result.status} {figure}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
