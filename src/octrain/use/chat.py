"""Talking to a trained model: one-off answers (``octrain sample``) and a chat (``octrain chat``).

The command line only parses options and draws the screen; what it shows comes from here, so
that any other front end (a web UI) answers the same way:

* :func:`pick_model` turns a user's choice (a path, a checkpoint name, a persona, ``--base``,
  thinking on or off) into a :class:`~octrain.use.model_choice.ChosenModel`, through
  :mod:`octrain.use.model_choice`;
* :func:`sampler_config` and :func:`sampling_params` default to the run's own settings (its
  sampler backend, its eval-stage sampling) so that a model answers as the run's eval saw it;
* :func:`answer_prompt` answers one prompt with one or more models (base and trained, for a
  comparison), on any sampler backend;
* :class:`ChatSession` keeps a conversation: history, system prompt, switching models,
  streaming each turn (:mod:`octrain.samplers.streaming`) and saving the transcript in TRL's
  conversational format;
* :func:`split_thought` separates a reasoning model's thought (``<think>...</think>``) from its
  answer, for a front end to show them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from octrain.core.config import SamplerBackend, SamplerConfig, SamplingConfig
from octrain.core.errors import ConfigError, RegistryError
from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.streaming import AnswerStream
from octrain.use.model_choice import ChosenModel, base_of, choose_model, latest_of_persona, with_thinking

# Sampling for a model that no run describes (a bare adapter or model directory): the config's
# defaults, with answers of a chat's length rather than a training sample's.
FALLBACK_SAMPLING = SamplingConfig(max_new_tokens=512)


def pick_model(
    spec: str | None = None,
    *,
    persona: str | None = None,
    base: bool = False,
    run_root: str | Path,
    thinking: bool | None = None,
) -> ChosenModel:
    """The model a user named: ``spec`` (a path or checkpoint name) or ``persona``; its base with ``base``.

    A ``spec`` that is neither a path nor a registered name is tried as a persona (its latest
    final model), so that ``/switch pirate`` works as ``--persona pirate`` does; when that fails
    too, the error is the checkpoint lookup's, which names the closest registered names.

    ``thinking`` lets a reasoning model think before it answers (True) or not (False); None
    keeps the run's setting (:func:`octrain.use.model_choice.with_thinking`). It is taken here so
    that every front end passes the user's choice as one more argument.

    Raises:
        ConfigError: both or neither of ``spec`` and ``persona`` (``base`` needs one of them).
        RegistryError, DataFormatError: see :func:`octrain.use.model_choice.choose_model`.
    """
    if spec and persona:
        raise ConfigError(f"give a model ({spec!r}) or --persona {persona}, not both")
    if persona:
        chosen = latest_of_persona(persona, run_root=run_root)
    elif spec:
        try:
            chosen = choose_model(spec, run_root=run_root)
        except RegistryError as not_a_checkpoint:
            try:
                chosen = latest_of_persona(spec, run_root=run_root)
            except RegistryError:
                raise not_a_checkpoint from None
    else:
        what = "--base: the base of which model?" if base else "which model?"
        raise ConfigError(f"{what} name one: a checkpoint (-c pirate_mini/sft), --persona NAME or a path")
    return with_thinking(base_of(chosen) if base else chosen, thinking)


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


def weights_of(chosen: ChosenModel) -> str | None:
    """What goes on top of the base: a local adapter directory, a remote (``tinker://``) path, or None."""
    return chosen.ref.remote or chosen.ref.adapter


def load_sampler(chosen: ChosenModel, settings: SamplerConfig, *, serves: Sequence[str | None] = ()) -> Sampler:
    """A sampler for ``chosen`` (its adapter on its base), through :func:`octrain.samplers.build_sampler`.

    ``serves`` lists the other adapters the caller will ask for next (vLLM then starts one
    engine for all of them).

    Raises:
        ConfigError: a remote checkpoint on a local backend (it is sampled where it lives).
    """
    from octrain.samplers import build_sampler

    if chosen.ref.remote and settings.backend not in (SamplerBackend.tinker, SamplerBackend.fake):
        raise ConfigError(
            f"{chosen.label} is a remote checkpoint ({chosen.ref.remote}): sample it with --sampler tinker"
        )
    weights = weights_of(chosen)
    return build_sampler(
        settings, chosen.model_config(), adapter=weights, serves=[weights, *serves], show_progress=False
    )


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


class Turn:
    """One answer of a :class:`ChatSession`, as it is written: iterate for its text, chunk by chunk.

    The answer joins the session's history when the turn ends: when the iteration finishes,
    or on :meth:`close` (after :meth:`cancel`, or an interrupt, with the text written so far).
    A turn cancelled before it wrote anything leaves no trace: its user message is taken back.
    """

    def __init__(self, session: ChatSession, stream: AnswerStream) -> None:
        self._session = session
        self._stream = stream
        self._closed = False
        self._failed = False
        self.kept = False  # whether the exchange stayed in the history

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._stream
        except Exception:
            self._failed = True  # the backend broke: no answer to keep, the message is taken back
            raise
        finally:
            self.close()

    def cancel(self) -> None:
        """Stop the answer (from any thread); what it wrote so far stays."""
        self._stream.cancel()

    def close(self) -> None:
        """End the turn (cancelling it if it still runs) and record it in the history."""
        if self._closed:
            return
        self._closed = True
        self._stream.close()
        self.kept = self._session._record(self.completion, dropped=self._failed or (self.cancelled and not self.text))

    @property
    def completion(self) -> Completion:
        return self._stream.completion

    @property
    def cancelled(self) -> bool:
        return self._stream.cancelled

    @property
    def text(self) -> str:
        return self._stream.text


class ChatSession:
    """A conversation with one model at a time, kept across turns.

    Args:
        model: who answers (see :func:`pick_model`); its ``thinking`` choice is the session's
            (:attr:`thinking`), kept when :meth:`switch` looks another model up by name.
        settings: the sampler backend and its options (see :func:`sampler_config`).
        params: decoding settings; with ``params.seed``, turn ``k`` of the session draws with
            ``derive_seed(seed, k)``, so a replayed session says the same things.
        run_root: where :meth:`switch` looks names up.
        system: the system prompt (None: none).
    """

    def __init__(
        self,
        model: ChosenModel,
        *,
        settings: SamplerConfig,
        params: SamplingParams,
        run_root: str | Path,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.params = dataclasses.replace(params, n=1)
        self.run_root = Path(run_root)
        self.system = system or None
        self.history: list[Message] = []
        self.finished: list[list[Message]] = []  # conversations ended by reset(), for save()
        self._turns = 0
        self._sampler: Sampler | None = None

    @property
    def thinking(self) -> bool | None:
        """The session's thinking choice: the current model's (None: each model's run setting)."""
        return self.model.thinking

    def load(self) -> None:
        """Load the model now (else the first turn does)."""
        if self._sampler is None:
            self._sampler = load_sampler(self.model, self.settings)

    @property
    def streams(self) -> bool:
        """Whether turns arrive token by token (transformers) or whole (other backends)."""
        from octrain.samplers.streaming import can_stream

        self.load()
        assert self._sampler is not None
        return can_stream(self._sampler)

    def messages(self) -> list[Message]:
        """The conversation as the model reads it next: the system prompt, then the history."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history]

    def send(self, text: str) -> Turn:
        """Add the user's ``text`` and start the answer; iterate over the returned turn for its text."""
        from octrain.samplers.streaming import stream_answer

        self.load()
        assert self._sampler is not None
        self.history.append({"role": "user", "content": text})
        seed = None if self.params.seed is None else derive_seed(self.params.seed, self._turns)
        self._turns += 1
        try:
            stream = stream_answer(self._sampler, self.messages(), self.params, seed=seed)
        except BaseException:
            self.history.pop()
            raise
        return Turn(self, stream)

    def _record(self, completion: Completion, *, dropped: bool) -> bool:
        """End a turn: its answer joins the history, or (``dropped``) its message leaves it."""
        if dropped:
            self.history.pop()  # nothing was answered: as if the message was never sent
            return False
        self.history.append({"role": "assistant", "content": completion.text})
        return True

    def reset(self) -> None:
        """Start a new conversation; the one that ends is kept for :meth:`save`."""
        if self.history:
            self.finished.append(self.messages())
        self.history = []

    def set_system(self, text: str | None) -> None:
        """Set the system prompt (None or empty: none); it applies to the whole conversation from the next turn."""
        self.system = text or None

    def switch(self, model: str | ChosenModel, *, keep_history: bool = True) -> ChosenModel:
        """Answer with another model from the next turn: a path, a checkpoint name, a persona, or a chosen model.

        The history is kept (the new model continues the conversation) unless ``keep_history``
        is False. A name is looked up before anything is unloaded: a wrong name changes nothing.
        A model looked up by name thinks as the session chose (:attr:`thinking`); a chosen model
        brings its own choice, which becomes the session's.
        """
        thinking = self.thinking
        chosen = pick_model(model, run_root=self.run_root, thinking=thinking) if isinstance(model, str) else model
        try:
            sampler = load_sampler(chosen, self.settings)
        except BaseException:
            # Loading may have unloaded the current model already (one engine per process): the
            # next turn loads it again rather than talk to a closed engine.
            self.close()
            raise
        if self._sampler is not None and self._sampler is not sampler:
            self._sampler.close()
        self.model, self._sampler = chosen, sampler
        if not keep_history:
            self.reset()
        return chosen

    def transcripts(self) -> list[list[Message]]:
        """Every conversation of the session so far, each with its system prompt; the current one last."""
        return [*self.finished, *([self.messages()] if self.history else [])]

    def save(self, path: str | Path) -> int:
        """Write :meth:`transcripts` to ``path`` as TRL conversational JSONL, atomically; the number of lines.

        Each line is ``{"messages": [{"role": ..., "content": ...}, ...]}``, the format TRL's
        SFT trainer reads.
        """
        from octrain.core.files import write_jsonl

        return write_jsonl(path, ({"messages": conversation} for conversation in self.transcripts()))

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None
