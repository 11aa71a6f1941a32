"""GGUF files as models: a real (tiny) GGUF written offline, converted once into the cache.

The file is a 2-layer Llama with a byte-level BPE vocabulary, written with the ``gguf`` package's
own writer, so transformers reads it exactly as it reads a downloaded one. The converted folder is
checked against transformers loading the file directly: same weights (rounded to bf16, the
dtype the conversion saves), same logits, same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from octrain.core.errors import ConfigError
from octrain.models.builtin import resolve_model_path
from octrain.models.gguf import (
    MANIFEST_FILE,
    converted_dir,
    ensure_converted,
    is_converted,
    is_gguf_path,
    read_manifest,
    verify,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = "the cat in a hat, héllo <|im_end|>"


def write_tiny_gguf(
    path: Path, *, quant: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32, tied: bool = False, seed: int = 0
) -> Path:
    """Write a real llama GGUF (ChatML specials, gpt2-style tokenizer) of ~35k parameters to ``path``.

    ``quant`` is the type of every matrix (norms stay F32, as llama.cpp writes them); ``tied`` leaves
    out ``output.weight``, so the output projection is the embedding matrix.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = [*bytes_to_unicode().values(), *(merge.replace(" ", "") for merge in MERGES), *SPECIALS]
    token_types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)  # 1 normal, 3 control
    vocab = len(tokens)
    head_dim = HIDDEN // HEADS

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("octrain-test-tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHAT_TEMPLATE)

    def matrix(name: str, rows: int, cols: int) -> None:
        values = (0.2 * rng.standard_normal((rows, cols))).astype(np.float32)
        if quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, values)
        else:
            blocks = gguf.quants.quantize(values, quant)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=quant)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))

    matrix("token_embd.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * head_dim)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    norm("output_norm.weight")
    if not tied:
        matrix("output.weight", vocab, HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _direct(source: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """What transformers reads from the GGUF itself: (float32 model, the same with bf16-rounded parameters)."""
    exact = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    rounded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(torch.bfloat16).to(torch.float32))
    return exact.eval(), rounded.eval()


def _assert_same_model(folder: Path, source: Path) -> None:
    """The converted folder holds the GGUF's weights rounded to bf16, and computes what they compute."""
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    exact, rounded = _direct(source)
    mine, theirs = converted.state_dict(), rounded.state_dict()
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    ids = torch.tensor([[3, 70, 200, 5, 257, 12, 99, 1]])
    with torch.no_grad():
        logits = converted(ids).logits
        torch.testing.assert_close(logits, rounded(ids).logits, atol=1e-5, rtol=1e-5)
        # and (bf16 rounding only) near the unrounded model's logits, which are not trivially small
        reference = exact(ids).logits
        assert reference.abs().max() > 1.0
        torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.05)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf-src") / "tiny-chat.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_gguf`` converted once for the module, in a cache of its own. Read-only."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("gguf-cache")
        patch.setenv("OCTRAIN_CACHE_DIR", str(cache))
        folder = ensure_converted(str(tiny_gguf))
        assert folder.parent == cache / "gguf"
        assert folder == converted_dir(tiny_gguf)
    return folder


def test_is_gguf_path() -> None:
    assert is_gguf_path("x/model.gguf")
    assert is_gguf_path("/models/SmolLM2.Q4_1.GGUF")
    assert not is_gguf_path("Qwen/Qwen3-4B")
    assert not is_gguf_path("runs/pirate/sft")
    assert not is_gguf_path("model.gguf.part")


def test_converted_folder_matches_loading_the_gguf_directly(converted: Path, tiny_gguf: Path) -> None:
    assert is_converted(converted)
    manifest = read_manifest(converted)
    assert manifest["source"] == str(tiny_gguf.resolve())
    assert manifest["source_sha256"] == _sha256(tiny_gguf)
    assert manifest["source_bytes"] == tiny_gguf.stat().st_size
    assert manifest["architecture"] == "LlamaForCausalLM"
    assert manifest["dtype"] == "bfloat16"
    # the manifest covers every file beside it, each with its real hash
    on_disk = {p.name for p in converted.iterdir()} - {MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= on_disk
    for name, digest in manifest["files"].items():
        assert _sha256(converted / name) == digest, name

    config = json.loads((converted / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config  # a plain folder, not a GGUF-backed model
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("llama", HIDDEN, LAYERS)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    with safe_open(converted / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}
    assert manifest["parameters"] == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(converted).parameters()
    )

    _assert_same_model(converted, tiny_gguf)


def test_converted_tokenizer_round_trips(converted: Path, tiny_gguf: Path) -> None:
    mine = AutoTokenizer.from_pretrained(converted)
    theirs = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ids = mine(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == theirs(TEXT, add_special_tokens=False)["input_ids"]
    assert mine.decode(ids) == TEXT
    assert ids[-1] == mine.convert_tokens_to_ids("<|im_end|>")  # a control token stays whole
    assert len(ids) < len(TEXT.encode("utf-8"))  # the merges apply: not one token per byte
    assert (mine.bos_token, mine.eos_token) == ("<|im_start|>", "<|im_end|>")
    messages = [{"role": "user", "content": "hi there"}]
    rendered = mine.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"


def test_quantized_q8_0_file_converts_to_its_dequantized_weights(tmp_path: Path, own_cache: Path) -> None:
    source = write_tiny_gguf(tmp_path / "q8" / "tiny-q8.gguf", quant=gguf.GGMLQuantizationType.Q8_0)
    folder = ensure_converted(str(source))
    assert read_manifest(folder)["source_sha256"] == _sha256(source)
    _assert_same_model(folder, source)


def test_tied_embeddings_stay_tied(tmp_path: Path, own_cache: Path) -> None:
    source = write_tiny_gguf(tmp_path / "tied" / "tiny-tied.gguf", tied=True)
    folder = ensure_converted(str(source))
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    _assert_same_model(folder, source)


def test_resolve_converts_once_and_verify_names_changed_files(
    tiny_gguf: Path, own_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x").mkdir()
    shutil.copy2(tiny_gguf, tmp_path / "x" / "model.gguf")
    monkeypatch.chdir(tmp_path)

    first = Path(resolve_model_path("x/model.gguf"))
    assert first.parent == own_cache / "gguf"
    assert first.name.startswith("model-")
    assert is_converted(first)
    inode = first.stat().st_ino
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    # again, relative or absolute: the same folder, untouched (not converted again)
    assert resolve_model_path("x/model.gguf") == str(first)
    assert ensure_converted(str(tmp_path / "x" / "model.gguf")) == first
    assert first.stat().st_ino == inode
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps
    assert [p.name for p in (own_cache / "gguf").iterdir()] == [first.name]  # no staging left behind

    assert verify(first) == []
    with (first / "tokenizer.json").open("ab") as handle:
        handle.write(b" ")
    assert verify(first) == ["tokenizer.json"]
    (first / "config.json").unlink()
    assert sorted(verify(first)) == ["config.json", "tokenizer.json"]


def test_a_changed_file_gets_a_fresh_conversion(tmp_path: Path, own_cache: Path) -> None:
    source = write_tiny_gguf(tmp_path / "m" / "model.gguf", seed=1)
    old = ensure_converted(str(source))
    write_tiny_gguf(source, seed=2)  # same name and size, other weights
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = ensure_converted(str(source))
    assert new != old
    assert read_manifest(new)["source_sha256"] == _sha256(source) != read_manifest(old)["source_sha256"]
    _assert_same_model(new, source)


def _bad_files(good: Path) -> dict[str, bytes]:
    data = good.read_bytes()
    return {
        "garbage": b"not a gguf file, just some bytes\n" * 20,
        "empty": b"",
        "cut-in-tensor-data": data[: len(data) // 2],  # header and tokenizer read fine; the weights fail
        "cut-in-header": data[:200],
    }


@pytest.mark.parametrize("case", ["garbage", "empty", "cut-in-tensor-data", "cut-in-header"])
def test_failed_conversion_leaves_nothing(case: str, tiny_gguf: Path, tmp_path: Path, own_cache: Path) -> None:
    source = tmp_path / f"{case}.gguf"
    source.write_bytes(_bad_files(tiny_gguf)[case])
    with pytest.raises(Exception):  # noqa: B017  (which error is the next test's business)
        ensure_converted(str(source))
    assert not is_converted(converted_dir(source))
    leftovers = list((own_cache / "gguf").iterdir()) if (own_cache / "gguf").exists() else []
    assert leftovers == []  # neither a folder that looks finished nor a staging folder


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "empty",
        "cut-in-tensor-data",
        "cut-in-header",
    ],
)
def test_unreadable_file_is_a_config_error_naming_it(
    case: str, tiny_gguf: Path, tmp_path: Path, own_cache: Path
) -> None:
    source = tmp_path / f"{case}.gguf"
    source.write_bytes(_bad_files(tiny_gguf)[case])
    with pytest.raises(ConfigError) as caught:
        resolve_model_path(str(source))
    assert str(source) in str(caught.value)


def test_missing_gguf_path_is_a_config_error(tmp_path: Path, own_cache: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ConfigError, match="no such GGUF file") as caught:
        resolve_model_path(str(missing))
    assert str(missing) in str(caught.value)
    (tmp_path / "folder.gguf").mkdir()  # a directory is not a GGUF file either
    with pytest.raises(ConfigError, match=r"folder\.gguf: no such GGUF file"):
        ensure_converted(str(tmp_path / "folder.gguf"))
    assert not own_cache.exists()  # nothing was started
