"""GGUF and Ollama export: octrain's converter, read back by transformers' own GGUF loader.

Every round trip here loads the file with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``
and ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` (through
:func:`octrain.use.gguf_export.load_gguf`), so what is tested is the file as another program reads
it, not octrain's idea of it. The tiny trained run (Qwen3 architecture) and a tiny random Llama
(the architecture whose query/key rows llama.cpp permutes) run in the default suite; the same round
trip on SmolLM2-135M-Instruct, with the tolerances this project states, is in the slow lane.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from octrain.core.errors import ConfigError
from octrain.use import gguf_export, ollama
from octrain.use.export import export_gguf
from octrain.use.gguf_export import load_gguf, pre_tokenizer_name, read_metadata, write_gguf
from octrain.use.model_choice import choose_model
from octrain.use.parity import ParityError
from octrain.use.trained_model import load_tokenizer

# Texts whose token ids must survive the trip through the GGUF's tokenizer fields: special tokens,
# digits, runs of spaces and newlines, punctuation and non-ASCII text (byte-level pieces).
TEXTS = (
    "<|im_start|>user\nAhoy, who are you?<|im_end|>\n<|im_start|>assistant\n",
    "What is 12 times 7? 84, or 1234567 ÷ 3.",
    "  two spaces,\n\nthen  tabs\tand ünïcödé — “quotes” and emoji 🏴‍☠️",
    "<think>\n\n</think>\n\nArr!<|endoftext|>",
)


def _tiny_llama(tokenizer: Any) -> Any:
    """A random 2-layer Llama with grouped-query attention and an untied output projection.

    The query/key weights are drawn large enough that attention is far from uniform, so a wrong
    rotary permutation would show in the logits (checked in the test)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model


def _logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_a_llama_round_trip_is_exact_in_f32_and_needs_the_rotary_permutation(
    tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = _tiny_llama(tokenizer)
    ids = tokenizer(TEXTS[0] + TEXTS[1], add_special_tokens=False)["input_ids"]
    expected = _logits(model, ids)

    summary = write_gguf(model, tokenizer, tmp_path / "llama.gguf", gguf_type="f32", name="tiny-llama")
    assert summary.architecture == "llama" and summary.tensor_types == {"F32": 2 + 2 * 9 + 1}
    loaded, _ = load_gguf(tmp_path / "llama.gguf")
    assert type(loaded).__name__ == "LlamaForCausalLM" and not loaded.config.tie_word_embeddings
    got = _logits(loaded, ids)
    # float32 all the way: the only difference would be a layout error, and there is none.
    assert float((got - expected).abs().max()) < 1e-5

    # Without llama.cpp's permutation, transformers' loader (which undoes it) scrambles the rotary
    # pairs: the same comparison fails by far. This is what the exact match above rules out.
    monkeypatch.setattr(gguf_export, "llama_permute", lambda weights, n_head: weights)
    write_gguf(model, tokenizer, tmp_path / "unpermuted.gguf", gguf_type="f32", name="tiny-llama")
    scrambled = _logits(load_gguf(tmp_path / "unpermuted.gguf")[0], ids)
    assert float((scrambled - expected).abs().max()) > 100 * float((got - expected).abs().max()) + 1e-2


def test_the_tokenizer_and_the_metadata_survive_the_file(trained_tiny_root: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    tokenizer = load_tokenizer(Path(chosen.ref.adapter), chosen.ref.base)
    model = _fold(chosen)
    summary = write_gguf(
        model, tokenizer, tmp_path / "m.gguf", gguf_type="q8_0", name="pirate", sampling={"top_p": 0.9}
    )
    meta = read_metadata(tmp_path / "m.gguf")
    assert meta["general.architecture"] == "qwen3" and meta["general.name"] == "pirate"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["qwen3.attention.key_length"] == 32 and meta["qwen3.block_count"] == 2  # head_dim is not 64/4
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.eot_token_id"]) == (
        2,
        0,
    )  # <|im_end|>, <|endoftext|>
    assert meta["tokenizer.ggml.padding_token_id"] == 0 and "tokenizer.ggml.bos_token_id" not in meta
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert abs(meta["general.sampling.top_p"] - 0.9) < 1e-6
    template = meta["tokenizer.chat_template"]
    assert "{% generation %}" not in template and "endgeneration" not in template  # transformers-only markers
    assert summary.tensor_types["Q8_0"] == 1 + 2 * 7 and summary.tensor_types["F32"] == 1 + 2 * 4  # norms stay f32

    from gguf import GGUFReader

    fields = GGUFReader(str(tmp_path / "m.gguf")).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == model.config.vocab_size == len(types)
    assert [types[i] for i in range(5)] == [3] * 5 and tokens[2] == "<|im_end|>"  # the added special tokens: CONTROL

    again = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in TEXTS:
        assert (
            again(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    conversation = [{"role": "user", "content": "Ahoy!"}, {"role": "assistant", "content": "Arr."}]
    assert again.apply_chat_template(conversation, tokenize=False) == tokenizer.apply_chat_template(
        conversation, tokenize=False
    )
    assert again.eos_token == "<|im_end|>" and again.pad_token == "<|endoftext|>"


def _fold(chosen: Any) -> Any:
    from octrain.trainers.merge import fold_adapter

    return fold_adapter(chosen.ref.base, chosen.ref.adapter)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_export_gguf_writes_a_checked_file_and_a_modelfile(
    trained_tiny_root: Path, tmp_path: Path, gguf_type: str
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    result = export_gguf(chosen, tmp_path / "out", gguf_type=gguf_type)
    name = f"pirate-{gguf_type}.gguf"
    assert result.kind == "gguf" and result.dtype == gguf_type and result.files == ("Modelfile", name)
    assert result.parity is not None and result.parity.ok and result.parity.checked > 0, result.parity
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no staging directory left behind

    # The file against the trained model (base + adapter through PEFT, float32), logits and greedy tokens.
    model, tokenizer = load_gguf(tmp_path / "out" / name)
    base = AutoModelForCausalLM.from_pretrained(gguf_export_base(chosen), dtype=torch.float32)
    trained = PeftModel.from_pretrained(base, chosen.ref.adapter).eval()
    messages = [{"role": "user", "content": "Ahoy, who are you?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        got = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16)
        want = trained.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=16)
    difference = float((_logits(model, got[0].tolist()) - _logits(trained, got[0].tolist())).abs().max())
    # Tolerance: the tiny model's logits are ~0.2 apart at most (random init, a little training); the
    # largest difference measured is 3e-4 for f16 and 1e-2 for q8_0 (8-bit blocks). These bounds are
    # 3-5x that and far below what a missing adapter changes (test_export_push: > 1e-3 for the adapter).
    assert difference < {"f16": 1e-3, "q8_0": 5e-2}[gguf_type]
    if gguf_type == "f16":
        assert got.tolist() == want.tolist()

    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert f"FROM ./{name}\n" in modelfile and "ollama create pirate -f Modelfile" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    assert "SYSTEM" not in modelfile.replace("No SYSTEM prompt", "")
    parsed = ollama.read_modelfile(tmp_path / "out" / "Modelfile")
    assert parsed.chat_format == ollama.ChatFormat(None, "") and parsed.num_ctx == chosen.model_config().max_model_len
    sampling = chosen.run_config().eval.sampling
    assert parsed.settings == {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
    }


def gguf_export_base(chosen: Any) -> str:
    from octrain.models.builtin import resolve_model_path

    return resolve_model_path(chosen.ref.base)


def test_a_gguf_that_renders_differently_is_refused_and_leaves_nothing(
    trained_tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    # A converter bug that writes a chat template with one newline too many after the assistant's turn opens.
    monkeypatch.setattr(
        gguf_export,
        "gguf_chat_template",
        lambda template: template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n\\n'"),
    )
    with pytest.raises(
        ParityError, match="chat template: prompt 1 renders differently through its chat template"
    ) as caught:
        export_gguf(chosen, tmp_path / "out")
    assert "does not answer as the trained model does" in str(caught.value)
    assert "Modelfile" not in str(caught.value)  # the Ollama template is right; only the file's own one differs
    assert list(tmp_path.iterdir()) == []


def test_pre_tokenizers_are_named_from_their_structure() -> None:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert (
        pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, byte_level]}}) == "smollm"
    )
    split = {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False}
    qwen = [split, {**byte_level, "use_regex": False}]
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": qwen}}) == "qwen2"
    for unknown in ({"type": "Metaspace"}, {"type": "Sequence", "pretokenizers": [split, byte_level]}):
        with pytest.raises(ConfigError, match="supported: gpt-2, smollm, qwen2"):
            pre_tokenizer_name({"pre_tokenizer": unknown})


def test_unsupported_models_are_refused_by_name(tiny_model_path: str) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_path)
    assert gguf_export.architecture_of(config) == "qwen3"
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ConfigError, match="rope scaling 'yarn'"):
        gguf_export.architecture_of(config)
    gpt2 = AutoConfig.for_model("gpt2")
    with pytest.raises(
        ConfigError, match=r"supports the llama \(llama\), qwen3 \(qwen3\) architectures; this model is 'gpt2'"
    ):
        gguf_export.architecture_of(gpt2)


# SmolLM2's template (a default system prompt when there is none), Qwen3's with thinking off (an empty
# thought after the generation prompt), and one that is not ChatML at all.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
THINKING_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_ollama_templates_follow_the_model_template(tiny_model_path: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert ollama.chat_format_of(tokenizer, enable_thinking=False) == ollama.ChatFormat(None, "")
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    smol = ollama.chat_format_of(tokenizer, enable_thinking=False)
    assert smol == ollama.ChatFormat("You are a helpful AI assistant named SmolLM, trained by Hugging Face", "")
    tokenizer.chat_template = THINKING_TEMPLATE
    assert ollama.chat_format_of(tokenizer, enable_thinking=False) == ollama.ChatFormat(None, "<think>\n\n</think>\n\n")
    assert ollama.chat_format_of(tokenizer, enable_thinking=True) == ollama.ChatFormat(None, "")
    tokenizer.chat_template = LLAMA3_TEMPLATE
    with pytest.raises(ConfigError, match="not ChatML"):
        ollama.chat_format_of(tokenizer, enable_thinking=False)
    # ChatML that drops earlier assistant turns: the probes with history catch it.
    tokenizer.chat_template = SMOLLM2_TEMPLATE.replace(
        "{% for message in messages %}", "{% for message in messages if message['role'] != 'assistant' %}"
    )
    with pytest.raises(ConfigError, match="a user/assistant/user conversation"):
        ollama.chat_format_of(tokenizer, enable_thinking=False)

    # The Go template, spelled out: what Ollama runs. Ollama passes system messages in .Messages too,
    # so the default system prompt goes in only when the first message is not one.
    assert ollama.go_template(smol) == (
        '{{ if and .Messages (ne (index .Messages 0).Role "system") }}<|im_start|>system\n'
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{{ end }}"
        "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    )
    for chat_format in (smol, ollama.ChatFormat(None, "<think>\n\n</think>\n\n"), ollama.ChatFormat(None, "")):
        assert ollama.chat_format_from_template(ollama.go_template(chat_format)) == chat_format
    assert ollama.chat_format_from_template("{{ .Prompt }}") is None


@pytest.mark.slow  # the CLI end to end (~18 s); export_gguf itself is in the default suite
def test_cli_writes_gguf_and_refuses_misplaced_options(trained_tiny_root: Path, tmp_path: Path) -> None:
    root = ("--run-root", str(trained_tiny_root))
    done = run_cli("export", "pirate_tiny/sft", "--gguf", str(tmp_path / "g"), "--gguf-type", "q8_0", *root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "as GGUF (q8_0) with an Ollama Modelfile" in done.stdout
        and "parity: answers as the trained model does" in done.stdout
    )
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["Modelfile", "pirate-q8_0.gguf"]
    refused = run_cli("export", "pirate_tiny/sft", "--merged", str(tmp_path / "m"), "--gguf-type", "f16", *root)
    assert refused.returncode == 2 and refused.stderr == "octrain: error: --gguf-type applies to --gguf only\n"
    skipped = run_cli("export", "pirate_tiny/sft", "--gguf", str(tmp_path / "s"), "--no-check", *root)
    assert skipped.returncode == 0 and "parity: not checked (--no-check)" in skipped.stdout


SMOLLM2_ADAPTER_RANK = 8


def _smollm2_character(smollm2_model: str, root: Path) -> Path:
    """A stand-in for a trained SmolLM2 character: a LoRA adapter with nonzero, seeded weights on every
    projection, saved as a stage (``model.json`` beside it). What export does with it does not depend
    on how the adapter was trained; the demo run's measurements are in BENCHMARKS.md."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from octrain.models.builtin import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(smollm2_model), dtype=torch.float32)
    config = LoraConfig(r=SMOLLM2_ADAPTER_RANK, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(0.02)  # a change of the size training makes, not noise that drowns the model
    stage = root / "sft"
    model.save_pretrained(stage / "adapter")
    (stage / "model.json").write_text(json.dumps({"base": smollm2_model, "adapter": "adapter", "remote": None}))
    return stage


@pytest.mark.slow
def test_smollm2_round_trip_through_gguf(smollm2_model: str, tmp_path: Path) -> None:
    """SmolLM2-135M (Llama architecture, 30 layers, 49k vocabulary) exported as f16 and q8_0 and read
    back by transformers: the logits and greedy tokens against the trained model's, with the bounds stated below."""
    import torch

    from octrain.use import parity
    from octrain.use.parity_forward import answer_logits

    stage = _smollm2_character(smollm2_model, tmp_path / "run")
    chosen = choose_model(str(stage), run_root=tmp_path)
    reference = parity.reference_of(chosen)
    for gguf_type in ("f16", "q8_0"):
        result = export_gguf(chosen, tmp_path / gguf_type, gguf_type=gguf_type, check=False)
        name = next(name for name in result.files if name.endswith(".gguf"))
        candidate = parity.gguf_candidate(result.directory / name, description=gguf_type)
        report = parity.check(reference, candidate)
        assert report.ok, report.differences
        # Every answer position, near-ties included: the share where the file's top token is the
        # trained model's (teacher-forced), and the largest logit difference anywhere.
        agree = total = 0
        for prompt in reference.prompts:
            logits = answer_logits(candidate.model, prompt.prompt_ids, prompt.tokens, "cpu")
            agree += int((logits.argmax(dim=-1) == torch.tensor(prompt.tokens)).sum())
            total += len(prompt.tokens)
        print(gguf_type, report.summary(), f"top-1 agreement {agree}/{total}")
        # Measured on 2 CPU cores (this adapter / the demo run's, BENCHMARKS.md): largest logit difference
        # 0.03 / 0.04 for f16 and 1.5 / 0.96 for q8_0 (logits spread with a standard deviation of ~4); top
        # token the trained one at 95/96 / 94/94 positions for f16 and 92/96 / 92/94 for q8_0, the others
        # near-ties. The bounds leave room for another CPU's kernels and stay far below a broken export's
        # (the demo run's f16 file without llama.cpp's query/key permutation: logits 40 apart, the top
        # token the trained one at 34 of 94 positions).
        assert report.max_logit_diff is not None and report.max_logit_diff < {"f16": 0.25, "q8_0": 3.0}[gguf_type]
        assert agree / total >= {"f16": 0.97, "q8_0": 0.93}[gguf_type]
        assert report.checked >= total // 2
        shutil.rmtree(result.directory)
