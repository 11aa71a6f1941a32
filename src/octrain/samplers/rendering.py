"""A conversation as the text a local model continues: chat template, generation prompt, prefill.

Shared by the transformers and vLLM samplers, so both backends see the same prompt for the
same conversation. A conversation that ends with an assistant message is a *prefill*: the
model continues that message rather than starting a new turn. It is rendered as the chat
up to the last user turn with the template's own generation prompt, then the prefill text
verbatim; a template's ``continue_final_message`` path is not used, because templates
rewrite a final assistant message (Qwen3's, for one, wraps it in an empty
``<think></think>`` block, so a prefill that opens a thought ends up with two).

A prefill that opens a thought (``<think>``) asks for reasoning, whatever the model's
``enable_thinking`` setting: the head is rendered with thinking on, an empty closed
thought left by the template is dropped, and a thought the template already opened is not
opened twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from octrain.core.records import Message

THINK_OPEN = "<think>"
_EMPTY_THOUGHT = re.compile(r"<think>\s*</think>\s*$")
_OPEN_THOUGHT = re.compile(r"<think>\s*$")


def render_prompt(tokenizer: Any, conversation: Sequence[Message], *, enable_thinking: bool) -> str:
    """The text the model continues for ``conversation`` (see the module docstring for prefills)."""
    messages = [dict(message) for message in conversation]
    if not messages or messages[-1]["role"] != "assistant":
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
    prefill = messages[-1]["content"]
    opens_thought = prefill.lstrip().startswith(THINK_OPEN)
    head = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking or opens_thought
    )
    if opens_thought:
        head = _EMPTY_THOUGHT.sub("", head)
        if _OPEN_THOUGHT.search(head):
            # Templates of thinking-only models open the thought in the generation prompt already.
            prefill = prefill.lstrip().removeprefix(THINK_OPEN).lstrip("\n")
    return head + prefill


def prompt_token_ids(tokenizer: Any, conversation: Sequence[Message], *, enable_thinking: bool) -> list[int]:
    """Token ids of :func:`render_prompt`; the template wrote any BOS/special tokens, so none are added."""
    text = render_prompt(tokenizer, conversation, enable_thinking=enable_thinking)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
