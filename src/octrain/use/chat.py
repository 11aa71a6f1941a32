"""Talking to a trained model: one-off answers (``octrain sample``) and a chat (``octrain chat``).

The command line only parses options and draws the screen; what it shows comes from here, so
that any other front end (a web UI) answers the same way:

* :func:`pick_model` turns a user's choice (a path, a checkpoint name, a persona, ``--base``,
  thinking on or off) into a :class:`~octrain.use.model_choice.ChosenModel` (it lives in
  :mod:`octrain.use.model_choice`, with :func:`load_sampler`);
* :func:`sampler_config` and :func:`sampling_params` default to the run's own settings (its
  sampler backend, its eval-stage sampling) so that a model answers as the run's eval saw it;
* :func:`answer_prompt` answers one prompt with one or more models (base and trained, for a
  comparison), on any sampler backend;
* :class:`ChatSession` keeps a conversation: history, system prompt, switching models,
  streaming each turn (:mod:`octrain.samplers.streaming`) and saving the transcript in TRL's
  conversational format (it lives in :mod:`octrain.use.chat_session`);
* :func:`split_thought` separates a reasoning model's thought (``<think>...</think>``) from its
  answer, for a front end to show them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from octrain.core.config import SamplerConfig, SamplingConfig
from octrain.core.errors import ConfigError
from octrain.core.records import Message
from octrain.samplers.base import Completion, SamplingParams

# A conversation is chat_session's, and choosing and loading a model model_choice's; both stay
# importable from here, the one module a front end needs for talking to a model.
from octrain.use.chat_session import ChatSession, Turn
from octrain.use.model_choice import ChosenModel, load_sampler, pick_model, weights_of

__all__ = [
    "FALLBACK_SAMPLING",
    "Answer",
    "ChatSession",
    "Speaker",
    "Turn",
    "answer_prompt",
    "constitution_prompt",
    "conversation_for",
    "displayable",
    "load_sampler",
    "pick_model",
    "run_sampling",
    "sampler_config",
    "sampling_params",
    "split_thought",
    "weights_of",
]

# Sampling for a model that no run describes (a bare adapter or model directory): the config's
# defaults, with answers of a chat's length rather than a training sample's.
FALLBACK_SAMPLING = SamplingConfig(max_new_tokens=512)


def split_thought(text: str) -> tuple[str | None, str | None]:
    """What a reasoning model wrote, as (its thought, its answer), for showing them apart.

    A thought is ``<think>...</think>`` at the start of the text, or text up to a ``</think>``
    (templates that open the thought in the prompt leave only the closing tag in the answer);
    see :func:`octrain.stages.pairs.split_reasoning`, which the pairs stage splits with.

    Returns:
        ``(None, text)`` when there is no thought (the text as it is); otherwise the thought
        (stripped, possibly empty) and the answer after it, or None for the answer when the
        thought never closed (the model ran out of tokens while thinking).
    """
    from octrain.stages.pairs import split_reasoning

    if "</think>" not in text and not text.lstrip().startswith("<think>"):
        return None, text
    reasoning, answer = split_reasoning(text)
    if answer is None:  # split_reasoning returns an unclosed thought as written, its tag included
        reasoning = reasoning.replace("<think>", "", 1).strip()
    return reasoning, answer


def constitution_prompt(chosen: ChosenModel) -> str:
    """The system prompt with the model's constitution: the one the teacher answered the training prompts with.

    The assistant is named as the student is (the run's ``student.assistant_name``), as the eval
    stage's system-prompt baseline does: it is the student's base that reads this prompt.

    Raises:
        ConfigError: no run, hence no constitution, is known for this model.
    """
    from octrain.constitution.persona_prompts import teacher_system_prompt

    constitution = chosen.constitution()
    if constitution is None:
        raise ConfigError(
            f"{chosen.label}: no run is known for this model, so no constitution: "
            "--with-constitution needs a model trained by octrain (a checkpoint name, --persona or a run directory)"
        )
    return teacher_system_prompt(constitution, chosen.model_config().assistant_name)


def run_sampling(chosen: ChosenModel) -> SamplingConfig:
    """The run's eval-stage sampling (how the run's eval answered prompts), else :data:`FALLBACK_SAMPLING`."""
    config = chosen.run_config()
    return config.eval.sampling if config is not None else FALLBACK_SAMPLING


def sampling_params(
    chosen: ChosenModel,
    *,
    n: int = 1,
    seed: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
) -> SamplingParams:
    """Decoding settings: the run's own (:func:`run_sampling`), with whatever the user set instead.

    Raises:
        ConfigError: a value out of range (a negative temperature, ``top_p`` outside (0, 1], ...).
    """
    if temperature is not None and not temperature >= 0:  # "not >=" also refuses NaN
        raise ConfigError(f"--temperature: expected zero (greedy) or more, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top-p: expected a value in (0, 1], got {top_p}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: expected one or more, got {max_new_tokens}")
    if n < 1:
        raise ConfigError(f"-n: expected one or more answers, got {n}")
    given = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    settings = dataclasses.replace(
        run_sampling(chosen), **{key: value for key, value in given.items() if value is not None}
    )
    return SamplingParams.from_config(settings, n=n, seed=seed)


def sampler_config(chosen: ChosenModel, backend: str | None = None) -> SamplerConfig:
    """The run's sampler settings (or the defaults), on ``backend`` when given, with one engine
    (:func:`octrain.use.model_choice.sampler_settings`)."""
    from octrain.use.model_choice import sampler_settings

    return sampler_settings(chosen, backend)


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One model answering, with its system prompt (None: none) and its part in a comparison."""

    model: ChosenModel
    system: str | None = None
    role: str = "trained"  # "base" or "trained"
    with_constitution: bool = False  # the system prompt is the constitution's (constitution_prompt)


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one :class:`Speaker` answered: ``params.n`` completions."""

    speaker: Speaker
    completions: list[Completion]

    def to_json(self) -> dict[str, Any]:
        """The answer for scripts: the model, how it was asked, and each completion.

        ``enable_thinking`` is whether the model was asked to think (the run's setting or the
        user's choice). Each completion keeps ``text`` as the model wrote it and adds
        ``thinking`` (its thought, or None without one) and ``answer`` (the text after the
        thought; None when the thought never closed), see :func:`split_thought`.
        """
        model = self.speaker.model
        return {
            "model": model.label,
            "role": self.speaker.role,
            "base_model": model.ref.base,
            "adapter": model.ref.adapter,
            "remote": model.ref.remote,
            "persona": model.persona,
            "system": self.speaker.system,
            "with_constitution": self.speaker.with_constitution,
            "enable_thinking": model.model_config().enable_thinking,
            "answers": [_completion_json(completion) for completion in self.completions],
        }


def _completion_json(completion: Completion) -> dict[str, Any]:
    thought, answer = split_thought(completion.text)
    return {**dataclasses.asdict(completion), "thinking": thought, "answer": answer}


def conversation_for(prompt: str, system: str | None) -> list[Message]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def answer_prompt(
    prompt: str,
    speakers: Sequence[Speaker],
    settings: SamplerConfig,
    params: SamplingParams,
    *,
    on_answer: Callable[[Answer], None] | None = None,
) -> list[Answer]:
    """Each speaker's answers to ``prompt``, in order, one model at a time.

    Every speaker draws with the same seeds, so base and trained differ by their weights (and
    system prompts) only. The transformers backend holds one model at a time: each speaker
    loads its own; vLLM serves all of them from one engine (``serves``). ``on_answer`` is called
    with each answer as soon as it is there, for a front end to show how far it has got.
    """
    adapters = [weights_of(speaker.model) for speaker in speakers]
    answers = []
    for speaker in speakers:
        sampler = load_sampler(speaker.model, settings, serves=adapters)
        try:
            completions = sampler.chat([conversation_for(prompt, speaker.system)], params, progress=False)[0]
        finally:
            sampler.close()
        answers.append(Answer(speaker, completions))
        if on_answer is not None:
            on_answer(answers[-1])
    return answers


# Control characters a model may write (the tiny model writes plenty) would move the cursor,
# clear the screen or start escape sequences: shown as U+FFFD instead. Newlines and tabs stay.
_UNPRINTABLE = {code: "\ufffd" for code in [*range(0x20), *range(0x7F, 0xA0)] if code not in (0x09, 0x0A)}


def displayable(text: str) -> str:
    """``text`` safe to write to a terminal: control characters but newline and tab replaced by U+FFFD."""
    return text.translate(_UNPRINTABLE)
