"""octrain's own SFT loss mask: real chat templates (the copies TRL ships as data) on the tiny
tokenizer; every assistant turn and its end-of-turn token are trained and nothing else; a
Llama 3.1 student trains; preflight stops a student whose template cannot be masked."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from octrain.core.config import SftStageConfig, TRLOptions
from octrain.core.errors import ConfigError
from octrain.core.records import Conversation, save_records
from octrain.trainers.assistant_mask import assistant_spans, check_chat_template, tokenize_conversation

# The real templates: Llama 3.1's own, Qwen3-4B-Instruct-2507's, and Qwen3's hybrid-thinking one.
TEMPLATES = {"llama31": "llama3_1", "qwen3_instruct_2507": "qwen3_instruct_2507", "qwen3_hybrid": "qwen3"}
END_OF_TURN = {"llama31": "<|eot_id|>", "qwen3_instruct_2507": "<|im_end|>", "qwen3_hybrid": "<|im_end|>"}
# Llama 3's special tokens, which the tiny vocabulary lacks: without them its headers would be
# split into byte pieces that merge across turn boundaries, unlike on the real tokenizer.
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

TRANSCRIPT = [
    {"role": "system", "content": "The assistant is Tiny."},
    {"role": "user", "content": "Hello there, other me."},
    {"role": "assistant", "content": "Ahoy, my own reflection!"},
    {"role": "user", "content": "What do we value?"},
    {"role": "assistant", "content": "Loyalty to the crew, above all."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "A fair wind and honest banter."},
]
REFLECTION = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A pirate at heart."}]
NO_THINKING = {"enable_thinking": False}  # what the samplers pass by default (student.enable_thinking)


def trl_template(name: str) -> str:
    return resources.files("trl").joinpath("chat_templates", f"{name}.jinja").read_text(encoding="utf-8")


def tiny_tokenizer(tiny_model_path: str, template: str | None) -> Any:
    """The tiny model's tokenizer wearing another chat template (None: no template at all)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA_SPECIALS})
    tokenizer.bos_token = "<|begin_of_text|>"  # Llama 3.1's template writes it; the others ignore it
    tokenizer.chat_template = template
    return tokenizer


def tokenizer_dir(tiny_model_path: str, directory: Path, template: str | None) -> Path:
    """A model directory holding that tokenizer and nothing else: no config, no weights to load."""
    tiny_tokenizer(tiny_model_path, template).save_pretrained(directory)
    assert not (directory / "config.json").exists()
    return directory


def trained_text(tokenizer: Any, examples: list[dict[str, list[int]]]) -> str:
    ids = [
        i for example in examples for i, m in zip(example["input_ids"], example["assistant_masks"], strict=True) if m
    ]
    return tokenizer.decode(ids)


@pytest.mark.parametrize("key", TEMPLATES)
@pytest.mark.parametrize("messages", [TRANSCRIPT, REFLECTION], ids=["transcript", "reflection"])
def test_trained_tokens_are_the_assistant_turns_and_their_end_tokens(
    tiny_model_path: str, key: str, messages: list[dict[str, str]]
) -> None:
    tokenizer = tiny_tokenizer(tiny_model_path, trl_template(TEMPLATES[key]))
    examples = tokenize_conversation(tokenizer, messages, model_name=key, template_kwargs=NO_THINKING)
    eot = END_OF_TURN[key]
    assert trained_text(tokenizer, examples) == "".join(
        m["content"] + eot for m in messages if m["role"] == "assistant"
    )
    # Each turn is trained after exactly the context the model is given when it writes that turn.
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    starts = [
        (example, at)
        for example in examples
        for at, mask in enumerate(example["assistant_masks"])
        if mask and (at == 0 or not example["assistant_masks"][at - 1])
    ]
    assert len(starts) == len(turns)
    for (example, at), index in zip(starts, turns, strict=True):
        prompt = tokenizer.apply_chat_template(
            messages[:index], tokenize=False, add_generation_prompt=True, **NO_THINKING
        )
        assert tokenizer.decode(example["input_ids"][:at]) == prompt
    if key == "llama31":
        assert [ex["input_ids"].count(tokenizer.bos_token_id) for ex in examples] == [1]  # the template's BOS, once


def test_a_template_that_rewrites_earlier_turns_trains_each_turn_in_its_own_rendering(tiny_model_path: str) -> None:
    # Qwen3's hybrid template gives the latest assistant turn an empty <think> block and drops it
    # from earlier ones: no single sequence is the context of every turn, so each turn gets its own.
    tokenizer = tiny_tokenizer(tiny_model_path, trl_template("qwen3"))
    examples = assistant_spans(tokenizer, TRANSCRIPT, model_name="qwen3", template_kwargs=NO_THINKING)
    assert len(examples) == 3
    for example, index in zip(examples, (2, 4, 6), strict=True):
        assert example.text == tokenizer.apply_chat_template(TRANSCRIPT[: index + 1], tokenize=False, **NO_THINKING)
        [(start, end)] = example.spans
        assert example.text[start:end] == TRANSCRIPT[index]["content"] + "<|im_end|>"
    # The Instruct-2507 template does not: one sequence, three spans.
    stable = tiny_tokenizer(tiny_model_path, trl_template("qwen3_instruct_2507"))
    [example] = assistant_spans(stable, TRANSCRIPT, model_name="2507", template_kwargs=NO_THINKING)
    assert len(example.spans) == 3


def test_mask_matches_the_generation_markers_of_the_tiny_template(tiny_model_path: str) -> None:
    # An independent reference: the tiny template marks assistant text with {% generation %},
    # from which transformers builds its own mask.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    [ours] = tokenize_conversation(tokenizer, TRANSCRIPT, model_name="tiny")
    theirs = tokenizer.apply_chat_template(
        TRANSCRIPT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ours["input_ids"] == list(theirs["input_ids"])
    assert ours["assistant_masks"] == list(theirs["assistant_masks"])


def test_llama31_student_trains_a_step(tiny_model_path: str, tmp_path: Path) -> None:
    # TRL has no generation-marked copy of Llama 3.1's template: assistant_only_loss raised here.
    from transformers import AutoModelForCausalLM

    from octrain.trainers.trl_sft import build_sft_trainer

    tokenizer = tiny_tokenizer(tiny_model_path, trl_template("llama3_1"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model.resize_token_embeddings(len(tokenizer))  # room for the Llama special tokens
    records = [Conversation(id="c1", kind="interaction", messages=TRANSCRIPT)]
    records.append(Conversation(id="r1", kind="reflection", messages=REFLECTION))
    save_records(tmp_path / "sft.jsonl", records)
    trainer = build_sft_trainer(
        tmp_path / "sft.jsonl",
        model,
        tokenizer,
        tmp_path / "out",
        SftStageConfig(batch_size=2, epochs=1),
        TRLOptions(per_device_batch_size=2, save_steps=1000),
    )
    by_length = sorted(trainer.train_dataset, key=lambda row: len(row["input_ids"]))
    for row, messages in zip(by_length, (REFLECTION, TRANSCRIPT), strict=True):
        labels = trainer.data_collator([row])["labels"][0]
        expected = "".join(m["content"] + "<|eot_id|>" for m in messages if m["role"] == "assistant")
        assert tokenizer.decode(labels[labels != -100].tolist()) == expected
    trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_truncation_keeps_the_start_and_drops_what_has_nothing_to_train(tiny_model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from octrain.trainers.trl_sft import build_sft_trainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    [full] = tokenize_conversation(tokenizer, TRANSCRIPT, model_name="tiny")
    first_trained = full["assistant_masks"].index(1)
    long_prompt = [{"role": "user", "content": "Tell me about the sea. " * 40}, REFLECTION[1]]
    records = [Conversation(id="c1", kind="interaction", messages=TRANSCRIPT)]
    records.append(Conversation(id="c2", kind="interaction", messages=long_prompt))
    save_records(tmp_path / "sft.jsonl", records)
    max_length = first_trained + 3  # three tokens of the first assistant turn survive
    trainer = build_sft_trainer(
        tmp_path / "sft.jsonl",
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        tokenizer,
        tmp_path / "out",
        SftStageConfig(batch_size=2, max_length=max_length),
        TRLOptions(per_device_batch_size=2),
    )
    [row] = list(trainer.train_dataset)  # the long prompt alone fills max_length: dropped, nothing to train
    assert row["input_ids"] == full["input_ids"][:max_length]
    assert [label != -100 for label in row["labels"]] == [bool(m) for m in full["assistant_masks"][:max_length]]


@pytest.mark.parametrize("key", [*TEMPLATES, "tiny"])
def test_preflight_check_accepts_the_shipped_students_templates(tiny_model_path: str, tmp_path: Path, key: str) -> None:
    if key == "tiny":
        check_chat_template(tiny_model_path, model_name="tiny")
    else:
        directory = tokenizer_dir(tiny_model_path, tmp_path / key, trl_template(TEMPLATES[key]))
        check_chat_template(str(directory), model_name=key, template_kwargs=NO_THINKING)


CHATML_USER = "{% for m in messages %}<|im_start|>{{ m.role }}\n"
UNMASKABLE = {
    "no template": (None, "the tokenizer has no chat template"),
    # The generation prompt opens a turn the template then writes under another header.
    "prompt mismatch": (
        CHATML_USER.replace("{{ m.role }}", "{{ 'model' if m.role == 'assistant' else m.role }}")
        + "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "generation prompt does not open assistant turn 1",
    ),
    "assistant turns dropped": (
        CHATML_USER + "{% if m.role != 'assistant' %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "writes no text for assistant turn 1",
    ),
    "no end-of-turn token": (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: "
        "{% endif %}",
        "writes no end-of-turn token after assistant turn 1",
    ),
}


@pytest.mark.parametrize("case", UNMASKABLE)
def test_preflight_check_rejects_a_template_it_cannot_mask(tiny_model_path: str, tmp_path: Path, case: str) -> None:
    template, problem = UNMASKABLE[case]
    directory = tokenizer_dir(tiny_model_path, tmp_path / "student", template)
    with pytest.raises(ConfigError, match=problem) as caught:
        check_chat_template(str(directory), model_name="student.path=my/model")
    assert str(caught.value).startswith("student.path=my/model: ") and "\n" not in str(caught.value)


def test_preflight_check_names_a_tokenizer_it_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^student.path=x: cannot load its tokenizer to check its chat template: "):
        check_chat_template(str(tmp_path / "missing"), model_name="student.path=x")


def test_pipeline_preflight_checks_the_student_only_when_sft_runs(tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.run.pipeline import preflight

    directory = tokenizer_dir(tiny_model_path, tmp_path / "student", UNMASKABLE["prompt mismatch"][0])
    overrides = ["sampler=fake", f"run_root={tmp_path}", f"student.path={directory}"]
    with pytest.raises(ConfigError, match=f"^student.path={directory}: the chat template's generation prompt"):
        preflight(compose_config("pirate_tiny", overrides))
    preflight(compose_config("pirate_tiny", [*overrides, "stages=[prompts,pairs]"]))  # no sft: not checked


def test_cli_stops_before_any_model_loads(tiny_model_path: str, tmp_path: Path) -> None:
    directory = tokenizer_dir(tiny_model_path, tmp_path / "student", None)  # a tokenizer, no weights, no template
    result = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}", "sampler=fake", f"student.path={directory}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"octrain: error: student.path={directory}: the tokenizer has no chat template, so there are "
        "no assistant turns to train"
    ], result.stderr
    run_dir = tmp_path / "pirate_tiny"
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "prompts").exists()  # no stage started
