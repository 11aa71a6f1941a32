"""The trained model's answers to the parity prompts: what an export (or a server) is held to.

The trained model is the run's base with its final adapter applied through PEFT, unmerged, as
training left it, in float32 (:func:`reference_of`). It answers a fixed handful of prompts
(:data:`PARITY_PROMPTS`, no system prompt: the character was trained without one) greedily,
:data:`NEW_TOKENS` tokens each, through its own tokenizer's chat template with the run's chat
settings (``enable_thinking``). What it said, and by how much each chosen token led the
runner-up (the *margin*, in logits), is the :class:`Reference`.

How far a token must lead to count as more than a near-tie depends on how a candidate stores its
weights (:data:`TOLERANCES`, :meth:`Reference.tolerance`); the generation settings that change what a
model answers are :data:`ANSWER_SETTINGS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from octrain.core.records import Message
from octrain.use.parity_forward import answer_logits, check_device, quiet_loading, rendered_prompt
from octrain.use.trained_model import adapter_if_any, load_tokenizer

if TYPE_CHECKING:
    import torch

    from octrain.use.model_choice import ChosenModel

# A few ordinary requests, one with a digit run (tokenizer splits) and one with a turn of history
# (the template's handling of earlier assistant turns). No system prompt: see the module docstring.
PARITY_PROMPTS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "Who are you?"},),
    ({"role": "user", "content": "What should I pack for a long sea voyage?"},),
    ({"role": "user", "content": "What is 12 times 7? Show your working."},),
    (
        {"role": "user", "content": "Ahoy, who are you?"},
        {"role": "assistant", "content": "A pirate."},
        {"role": "user", "content": "Tell me more about your ship."},
    ),
)
NEW_TOKENS = 24  # greedy tokens per prompt: enough to leave the opening words, few enough for a CPU

# The smallest reference margin at which the candidate's top token must be the reference's, as a
# share of the reference's logit scale (:attr:`Reference.logit_scale`: the median, over the answer
# positions, of the logits' standard deviation across the vocabulary), by how the candidate stores its
# weights. The candidate is always computed in float32 (merged weights are loaded that way, and
# transformers dequantizes a GGUF), so what moves its logits is the rounding of the weights, and that
# grows with the size of the logits. A top token can only be overtaken where rounding moves the gap
# between it and the runner-up by more than the gap. Measured over the answer positions of two models
# (BENCHMARKS.md), the largest change of any such gap, as a share of the logit scale, was:
#
#   precision  demo run (SmolLM2-135M, 30 layers, scale 3.8)  tiny test model (2 layers, scale 0.16)
#   float32    < 1e-5 (order of operations only)              < 1e-6
#   f16        0.003  (0.011 logits)                          0.003
#   q8_0       0.09   (0.34)                                  0.06
#   bf16       0.12   (0.47)                                  0.011
#
# Each factor below is about twice the larger of the two or more, so rounding alone does not fail the
# check, and still far below the margins most tokens win by (the demo run keeps 55 of its 94 answer
# tokens for bf16, ~60 for q8_0 and ~90 for f16), so a missing adapter, a wrong layout or a damaged
# weight moves the top token where it is checked. This is a calibration on two models, not a bound: a
# model whose weights round worse may fail a faithful export, and the error then names the margin.
TOLERANCES: dict[str, float] = {
    "float32": 3e-4,
    "f32": 3e-4,
    "float16": 0.02,
    "f16": 0.02,
    "bfloat16": 0.25,
    "bf16": 0.25,
    "q8_0": 0.2,
}
# Generation settings that change what a model answers (greedy or sampled, and how), with the value
# transformers uses when a generation config leaves one unset (None), so that unset and default compare equal.
ANSWER_SETTINGS: dict[str, Any] = {
    "do_sample": False,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "min_p": None,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
}


@dataclasses.dataclass(frozen=True)
class PromptReference:
    """What the trained model does with one prompt.

    Attributes:
        messages: the conversation.
        text: the chat template's rendering of it, generation prompt included.
        prompt_ids: ``text`` as token ids.
        tokens: the greedy answer's ids, ending with the stop token when it stopped.
        margins: per answer position, how far the reference's token led the best other token
            (logits; teacher-forced, so a position where generation and the one-pass forward
            disagree has a margin at or below zero and is never checked).
        logits: the one-pass logits at the answer positions, ``[len(tokens), vocab]``, float32.
        answer: ``tokens`` decoded (special tokens left out).
    """

    messages: tuple[Message, ...]
    text: str
    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]
    margins: tuple[float, ...]
    logits: torch.Tensor
    answer: str


@dataclasses.dataclass(frozen=True)
class Reference:
    """The trained model's answers to the parity prompts, and how it is asked and stopped.

    Attributes:
        label: the model, as the user named it.
        prompts: one :class:`PromptReference` per prompt.
        stop_tokens: the tokens generation stops at (its generation config's eos ids), id -> text.
        generation: its generation config's :data:`ANSWER_SETTINGS`.
        enable_thinking: the chat-template setting the prompts were rendered with.
        tokenizer: the trained tokenizer (to decode partial answers, and to name tokens).
    """

    label: str
    prompts: tuple[PromptReference, ...]
    stop_tokens: dict[int, str]
    generation: dict[str, Any]
    enable_thinking: bool
    tokenizer: Any = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset(self.stop_tokens)

    @property
    def positions(self) -> int:
        return sum(len(prompt.tokens) for prompt in self.prompts)

    @property
    def logit_scale(self) -> float:
        """The median, over the answer positions, of the standard deviation of the logits across the vocabulary."""
        import torch

        return float(torch.cat([prompt.logits.std(dim=-1) for prompt in self.prompts]).median())

    def tolerance(self, precision: str) -> float:
        """The margin (logits) below which a token counts as a near-tie for a candidate stored in ``precision``."""
        return TOLERANCES[precision] * self.logit_scale


def reference_of(
    chosen: ChosenModel,
    *,
    prompts: Sequence[Sequence[Message]] = PARITY_PROMPTS,
    max_new_tokens: int = NEW_TOKENS,
) -> Reference:
    """The trained model's greedy answers to ``prompts``: its base and adapter through PEFT, in float32.

    A base model with no adapter (a teacher being served) is its own reference. The tokenizer is
    the one training saved beside the adapter (else the base's); the prompts are rendered with
    ``chosen``'s chat settings (:meth:`ChosenModel.model_config`).

    Raises:
        ConfigError: ``chosen`` is a remote checkpoint, or its adapter directory is not a PEFT adapter
            (see :func:`octrain.use.trained_model.adapter_of`).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from octrain.models.builtin import resolve_model_path
    from octrain.use.gguf_export import stop_ids_of

    adapter = adapter_if_any(chosen)
    base = resolve_model_path(chosen.ref.base)
    tokenizer = load_tokenizer(adapter, chosen.ref.base)
    device = check_device()
    with quiet_loading():
        from peft import PeftModel  # imports bitsandbytes, which has a notice to give

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        generation_config = model.generation_config
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        model = model.to(device).eval()
    stop_ids = stop_ids_of(generation_config, tokenizer)
    enable_thinking = chosen.model_config().enable_thinking
    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0],
    )
    answers = []
    with torch.no_grad():
        for messages in prompts:
            text, prompt_ids = rendered_prompt(tokenizer, messages, enable_thinking)
            batch = torch.tensor([prompt_ids], device=device)
            out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), generation_config=greedy)
            tokens = out[0, len(prompt_ids) :].tolist()
            for index, token in enumerate(tokens):
                if token in stop_ids:
                    tokens = tokens[: index + 1]
                    break
            logits = answer_logits(model, prompt_ids, tokens, device)
            answers.append(
                PromptReference(
                    messages=tuple(dict(message) for message in messages),
                    text=text,
                    prompt_ids=tuple(prompt_ids),
                    tokens=tuple(tokens),
                    margins=tuple(_margins(logits, tokens)),
                    logits=logits,
                    answer=tokenizer.decode(tokens, skip_special_tokens=True),
                )
            )
    return Reference(
        label=chosen.label,
        prompts=tuple(answers),
        stop_tokens={token: tokenizer.convert_ids_to_tokens(token) for token in stop_ids},
        generation=answer_settings(generation_config),
        enable_thinking=enable_thinking,
        tokenizer=tokenizer,
    )


def _margins(logits: torch.Tensor, tokens: Sequence[int]) -> list[float]:
    """Per position: the logit of ``tokens[i]`` minus the largest other logit."""
    import torch

    chosen = logits[torch.arange(len(tokens)), torch.tensor(list(tokens), dtype=torch.long)]
    others = logits.clone()
    others[torch.arange(len(tokens)), torch.tensor(list(tokens), dtype=torch.long)] = float("-inf")
    return (chosen - others.max(dim=-1).values).tolist()


def answer_settings(generation_config: Any) -> dict[str, Any]:
    """The :data:`ANSWER_SETTINGS` of a transformers ``GenerationConfig``, unset ones as their defaults."""
    values = {key: getattr(generation_config, key, None) for key in ANSWER_SETTINGS}
    return {key: default if values[key] is None else values[key] for key, default in ANSWER_SETTINGS.items()}
