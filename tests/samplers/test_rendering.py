"""Prompts as the local samplers render them, on the real templates of the shipped models.

The reasoning teachers (Qwen3-32B, Qwen3-8B) use Qwen3's hybrid-thinking template (the copy
TRL ships as data); a thinking prefill must open exactly one thought and leave it open, with
thinking switched off or on. The non-reasoning students' templates must continue a plain
prefill as it stands.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest

from octrain.constitution import load_constitution
from octrain.core.paths import project_root
from octrain.samplers.hf import HFSampler
from octrain.samplers.rendering import render_prompt
from octrain.stages.pairs import teacher_conversations, thinking_prefill

PIRATE = load_constitution(project_root() / "constitutions" / "pirate.yaml")
PROMPT = [{"role": "user", "content": "What is the best way to learn to sail?"}]


def trl_template(name: str) -> str:
    return resources.files("trl").joinpath("chat_templates", f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture
def sampler(tiny_model_path: str) -> HFSampler:
    return HFSampler(tiny_model_path, show_progress=False)


def wearing(sampler: HFSampler, template: str, *, thinking: bool) -> Any:
    sampler.tokenizer.chat_template = template
    sampler.enable_thinking = thinking
    return sampler


@pytest.mark.parametrize("thinking", [False, True])
def test_a_thinking_prefill_opens_one_thought_on_qwen3(sampler: HFSampler, thinking: bool) -> None:
    from octrain.core.records import PromptRecord

    record = PromptRecord(id="t00-0000-k0", prompt=PROMPT, origin="seed")
    [conversation] = teacher_conversations([record], PIRATE, "Qwen", prefill=True)
    text = sampler.tokenizer.decode(wearing(sampler, trl_template("qwen3"), thinking=thinking).render(conversation))
    prefill = thinking_prefill(PIRATE, "Qwen")
    assert text.endswith("<|im_start|>assistant\n" + prefill)  # the thought opened once, right after the header
    assert text.count("<think>") == 1 and "</think>" not in text  # no empty closed thought before it
    assert text.startswith("<|im_start|>system\n")  # the constitution's system prompt stays in place


def test_without_a_prefill_qwen3_follows_enable_thinking(sampler: HFSampler) -> None:
    template = trl_template("qwen3")
    off = render_prompt(wearing(sampler, template, thinking=False).tokenizer, PROMPT, enable_thinking=False)
    on = render_prompt(sampler.tokenizer, PROMPT, enable_thinking=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off: an empty thought
    assert on.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["qwen3_instruct_2507", "llama3_1"])
def test_a_plain_prefill_is_continued_as_it_stands(sampler: HFSampler, name: str) -> None:
    conversation = [*PROMPT, {"role": "assistant", "content": "Start with a small dinghy and"}]
    tokenizer = wearing(sampler, trl_template(name), thinking=False).tokenizer
    text = render_prompt(tokenizer, conversation, enable_thinking=False)
    head = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert text == head + "Start with a small dinghy and"  # no end-of-turn: the model carries on


def test_a_template_that_opens_the_thought_itself_is_not_opened_twice(sampler: HFSampler) -> None:
    forced = (
        "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
    )
    conversation = [*PROMPT, {"role": "assistant", "content": "<think>\nI am Qwen. Let me recall"}]
    text = render_prompt(wearing(sampler, forced, thinking=False).tokenizer, conversation, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\nI am Qwen. Let me recall")
    assert text.count("<think>") == 1
