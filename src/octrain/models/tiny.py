"""A tiny Qwen3-architecture chat model and tokenizer, built offline in seconds.

Tests, the quick start and CPU dry runs need a real model (real tokenizer, real chat
template, real ``generate``, real LoRA targets) without downloading anything. This module
trains a byte-level BPE tokenizer on text shipped with the package, wraps it with a ChatML
template that carries ``{% generation %}`` markers (so TRL's assistant-only loss works),
and initialises a ~200k-parameter Qwen3 from a fixed seed. Its answers are noise; its
shapes and code paths are those of the real thing.

The result is cached under ``$OCTRAIN_CACHE_DIR`` (default ``~/.cache/octrain``), keyed by
a hash of everything that goes into it, and written atomically so that concurrent
builders cannot leave a half-built directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

TINY_MODEL_NAME = "tiny-qwen3"

# ChatML, the format of Qwen's chat models. `generation` blocks mark what the assistant
# wrote (its text and the closing <|im_end|>), for assistant-only SFT loss masks.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
VOCAB_SIZE = 1024
MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # Qwen3's default head_dim is 128; vLLM needs at least 32
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
BUILD_VERSION = 1  # bump when the recipe below changes
SEED = 0


def cache_root() -> Path:
    """Where octrain keeps built artefacts: ``$OCTRAIN_CACHE_DIR`` or ``~/.cache/octrain``."""
    configured = os.environ.get("OCTRAIN_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "octrain"


def _training_corpus() -> list[str]:
    """Text to train the tokenizer on: the shipped pool of ordinary requests."""
    pool = resources.files("octrain").joinpath("data/generic_prompts.jsonl").read_text(encoding="utf-8")
    texts = [json.loads(line)["prompt"] for line in pool.splitlines() if line.strip()]
    return [*texts, "I am a helpful assistant. How can I help you today?"]


def _fingerprint(corpus: list[str]) -> str:
    recipe = json.dumps(
        {
            "v": BUILD_VERSION,
            "shape": MODEL_SHAPE,
            "vocab": VOCAB_SIZE,
            "template": CHAT_TEMPLATE,
            "seed": SEED,
        }
    )
    digest = hashlib.sha256(recipe.encode())
    for text in corpus:
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def build_tiny_model(directory: Path) -> None:
    """Build the tokenizer and randomly initialised model into ``directory`` (must not exist)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    corpus = _training_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
        **MODEL_SHAPE,
    )
    with torch.random.fork_rng():  # a fixed seed without disturbing the caller's RNG
        torch.manual_seed(SEED)
        model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"]
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def ensure_tiny_model() -> Path:
    """Return the directory of the tiny model, building it on first use."""
    target = cache_root() / f"{TINY_MODEL_NAME}-{_fingerprint(_training_corpus())}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_model(staging / "model")
        try:
            os.rename(staging / "model", target)
        except OSError:
            # Another process finished first; its copy is identical (same seed and inputs).
            if not (target / "config.json").is_file():
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return target
