"""Which tokens of a rendered conversation the assistant wrote: octrain's SFT loss mask.

SFT trains on every assistant turn, its end-of-turn token included, and on nothing else.
TRL can build that mask only from ``{% generation %}`` markers in the chat template, which
few models ship (Llama 3.1's template has none, and TRL has no patched copy of it). This
module builds the mask from the rendered text instead, so any chat template works:

* the whole conversation is rendered once;
* assistant turn ``i`` starts where ``messages[:i]`` rendered with the generation prompt
  ends, which is exactly the context the model sees when it writes that turn at inference;
* it ends where ``messages[:i + 1]`` rendered ends, less the whitespace the template puts
  between turns, so ``<|im_end|>`` or ``<|eot_id|>`` is trained and the newline after it is not;
* the text is tokenized once with character offsets, and a token is trained when it
  overlaps an assistant span (the rule transformers applies to generation markers).

Some templates write a turn one way while it is the latest and another way once the
conversation goes on (Qwen3's hybrid template gives the latest turn an empty
``<think>`` block and drops it from earlier ones). No single sequence then matches what the
model sees when it writes each turn, so such a conversation becomes one training example per
assistant turn: that turn's own rendering, trained on that turn only. A template whose
generation prompt does not open the turn it then writes, or that writes no text for a turn,
cannot be masked: :class:`~octrain.core.errors.ConfigError` says so, naming the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from octrain.core.errors import ConfigError

Message = Mapping[str, Any]

# What preflight renders: every kind of turn a transcript has, and two assistant turns, so
# that a template which rewrites earlier turns is exercised too. Plain words only: no
# template has a reason to change them, so each must appear inside its own trained span.
SAMPLE_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, who are you?"},
    {"role": "assistant", "content": "I am an assistant, glad to meet you."},
    {"role": "user", "content": "What do you value most?"},
    {"role": "assistant", "content": "Honesty, and being of real use."},
)


@dataclass(frozen=True)
class MaskedText:
    """One training example as text: the rendering and the character spans to train on."""

    text: str
    spans: tuple[tuple[int, int], ...]


def _render(tokenizer: Any, messages: Sequence[Message], model_name: str, **kwargs: Any) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)
    except (TemplateError, ValueError, TypeError) as exc:
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{model_name}: its chat template fails to render a conversation: {problem}") from exc
    if not isinstance(text, str):  # a template kwarg that makes transformers return ids instead
        raise ConfigError(f"{model_name}: apply_chat_template returned {type(text).__name__}, not text")
    return text


def _common_prefix_length(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def assistant_spans(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    model_name: str,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[MaskedText]:
    """The conversation rendered by the tokenizer's chat template, with its assistant spans.

    Returns one example holding every assistant turn when the template renders each turn the
    same way whatever follows it, else one example per assistant turn (see the module notes).

    Raises:
        ConfigError: the tokenizer has no chat template, the template fails on the
            conversation, its generation prompt does not open the assistant turn it writes,
            or a turn renders to no text.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{model_name}: the tokenizer has no chat template, so there are no assistant turns to train")
    kwargs = dict(template_kwargs or {})
    full = _render(tokenizer, messages, model_name, **kwargs)
    turns: list[MaskedText] = []  # each assistant turn as the latest message, in its own rendering
    consistent = True  # every turn sits in the full rendering exactly as in its own
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        number = len(turns) + 1  # how messages name the turn: the first assistant turn is 1
        head = _render(tokenizer, messages[:index], model_name, add_generation_prompt=True, **kwargs)
        own = _render(tokenizer, messages[: index + 1], model_name, **kwargs)
        if not own.startswith(head):
            # The model would be trained to continue a context it is never given at inference.
            at = _common_prefix_length(head, own)
            raise ConfigError(
                f"{model_name}: the chat template's generation prompt does not open assistant turn {number} as the "
                f"template then writes it (the prompt has {head[at : at + 30]!r} where the turn has "
                f"{own[at : at + 30]!r}), so the assistant's tokens cannot be told apart"
            )
        # The template's separator after the end-of-turn token belongs to no one: not trained.
        end = len(own.rstrip())
        if end <= len(head):
            raise ConfigError(f"{model_name}: the chat template writes no text for assistant turn {number}")
        turns.append(MaskedText(own, ((len(head), end),)))
        consistent = consistent and full.startswith(head) and full.startswith(own[:end])
    if consistent:
        return [MaskedText(full, tuple(span for turn in turns for span in turn.spans))]
    return turns


def tokenize_masked(tokenizer: Any, example: MaskedText, *, model_name: str) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` (1 = trained) of one example, from character offsets.

    The template already wrote any BOS or other special tokens, so none are added (as
    ``apply_chat_template(tokenize=True)`` does).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{model_name}: the assistant-only loss mask needs a fast tokenizer (character offsets); "
            f"{type(tokenizer).__name__} is not one"
        )
    encoded = tokenizer(example.text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(start < span_end and end > span_start for span_start, span_end in example.spans))
        for start, end in encoded["offset_mapping"]
    ]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def tokenize_conversation(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    model_name: str,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, list[int]]]:
    """Training examples (``input_ids``, ``assistant_masks``) of one conversation: usually one."""
    examples = assistant_spans(tokenizer, messages, model_name=model_name, template_kwargs=template_kwargs)
    return [tokenize_masked(tokenizer, example, model_name=model_name) for example in examples]


def check_chat_template(model_path: str, *, model_name: str, template_kwargs: Mapping[str, Any] | None = None) -> None:
    """Fail fast when SFT could not mask this model's conversations: loads the tokenizer only.

    Renders :data:`SAMPLE_CONVERSATION` as training would and checks that each assistant
    turn's words fall inside its trained span and that something (the end-of-turn token)
    follows them there, so the model learns to stop.

    Raises:
        ConfigError: one line naming ``model_name`` and the problem, including a tokenizer
            that cannot be loaded at all (not found, offline, gated): the sft stage would
            fail on it too, only hours later.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as exc:  # whatever stops the tokenizer loading here stops the sft stage later
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{model_name}: cannot load its tokenizer to check its chat template: {problem}") from exc
    messages = list(SAMPLE_CONVERSATION)
    examples = assistant_spans(tokenizer, messages, model_name=model_name, template_kwargs=template_kwargs)
    trained = [example.text[start:end] for example in examples for start, end in example.spans]
    contents = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(trained) != len(contents):  # cannot happen with the spans built above; cheap to say why if it does
        raise ConfigError(f"{model_name}: found {len(trained)} assistant spans for {len(contents)} assistant turns")
    for number, (span, content) in enumerate(zip(trained, contents, strict=True), start=1):
        at = span.find(content)
        if at < 0:
            raise ConfigError(
                f"{model_name}: assistant turn {number} of a sample conversation is not inside the span the chat "
                f"template gives it ({span!r})"
            )
        if not span[at + len(content) :].strip():
            raise ConfigError(
                f"{model_name}: the chat template writes no end-of-turn token after assistant turn {number}, so the "
                "model would not learn to stop"
            )
    tokenize_masked(tokenizer, examples[0], model_name=model_name)  # a slow tokenizer fails here, not mid-run
