"""A conversation with a trained model, kept across turns: what ``octrain chat`` and the studio's chat drive.

:class:`ChatSession` holds the history and the system prompt, loads one model at a time (switching
models keeps the conversation), streams each answer as a :class:`Turn`
(:mod:`octrain.samplers.streaming`) and saves the transcripts in TRL's conversational format.
Turn ``k`` of a seeded session draws with ``derive_seed(seed, k)``, so a replayed session says the
same things. One-off answers to a prompt are :func:`octrain.use.chat.answer_prompt`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from octrain.core.config import SamplerConfig
from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.streaming import AnswerStream
from octrain.use.model_choice import ChosenModel, load_sampler, pick_model


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
