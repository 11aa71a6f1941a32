"""How the parity check loads and runs a model, the trained one and a candidate alike.

A model is loaded without the libraries' loading bars and notices (:func:`quiet_loading`), on the
device the check runs on (:func:`check_device`). A conversation is rendered and tokenized as training
did (:func:`rendered_prompt`), and a prompt with its answer goes through the model in one pass
(teacher forcing, :func:`answer_logits`), which keeps every answer position comparable between two
models even where their greedy answers would part ways.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from octrain.core.records import Message

if TYPE_CHECKING:
    import torch


def check_device() -> str:
    """The device the check computes on: the one training would pick (CUDA when a GPU is usable, else the CPU)."""
    from octrain.samplers.hf import pick_device

    return pick_device("auto")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """The check's model loads without the libraries' loading bars and notices (restored afterwards):
    the check is a step of another command, whose own output is what the user reads."""
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    bitsandbytes = logging.getLogger("bitsandbytes")
    level, verbosity = bitsandbytes.level, transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    bitsandbytes.setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        bitsandbytes.setLevel(level)
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def model_device(model: Any) -> Any:
    """The device ``model``'s weights are on; the CPU when it has no parameters to ask."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"


def rendered_prompt(tokenizer: Any, messages: Sequence[Message], enable_thinking: bool) -> tuple[str, list[int]]:
    """``messages`` through ``tokenizer``'s chat template: the prompt text and its token ids."""
    from octrain.samplers.rendering import prompt_token_ids, render_prompt

    text = render_prompt(tokenizer, messages, enable_thinking=enable_thinking)
    return text, prompt_token_ids(tokenizer, messages, enable_thinking=enable_thinking)


def answer_logits(model: Any, prompt_ids: Sequence[int], tokens: Sequence[int], device: Any) -> torch.Tensor:
    """The logits that predict each of ``tokens`` after ``prompt_ids``, from one forward pass, float32 on the CPU."""
    import torch

    sequence = torch.tensor([[*prompt_ids, *tokens]], device=device)
    with torch.no_grad():
        logits = model(input_ids=sequence).logits[0]
    start = len(prompt_ids) - 1
    return logits[start : start + len(tokens)].float().cpu()
