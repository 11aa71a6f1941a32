"""Drafting a new constitution from a one-line description, with a chat model as the writer.

``octrain constitution new NAME --describe "..."`` is a thin caller of this module, so that any
other front end (a web UI, a notebook) gets the same behaviour from the same functions:

1. :func:`~octrain.constitution.draft_messages.drafting_messages` asks the model for a Studio YAML
   constitution (the schema and a short example are in the prompt) with a given number of
   first-person traits, each with seed questions.
2. :func:`~octrain.constitution.draft_messages.extract_yaml` takes the YAML out of the reply (a
   fenced block or bare YAML, thinking blocks dropped) and
   :func:`~octrain.constitution.draft_messages.with_name` makes ``meta.name`` the name asked for.
3. :func:`validate_draft` runs octrain's own loader on it, in a scratch directory, so nothing
   appears under the persona's name before the draft is known to load. A draft that does not
   load can be sent back to the model once more with the loader's error (``retries``); a final
   failure keeps the draft at ``NAME.rejected.txt`` in a scratch directory (never in a
   constitution directory, where ``.txt`` would be read as a constitution) and raises
   :class:`DraftRejected` with the loader's ``FILE:LINE: FIELD: message``, pointing at that file.
4. :func:`save_draft` writes the validated text atomically, refusing to replace an existing
   persona of the same name unless forced (:mod:`octrain.constitution.persona_files` says where a
   persona's file goes and what it would replace).

The sampler is any :class:`~octrain.samplers.base.Sampler`: :func:`openai_sampler` for an
OpenAI-compatible endpoint (the key stays inside :class:`~octrain.samplers.openai_http.OpenAIChatSampler`,
which reads it from the environment; nothing here ever sees it) and :func:`local_sampler` for a
local model through :func:`octrain.samplers.build_sampler`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from octrain.constitution.draft_messages import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TRAITS,
    RETRY_PROMPT,
    drafting_messages,
    extract_yaml,
    with_name,
)
from octrain.constitution.load import load_constitution
from octrain.constitution.model import Constitution
from octrain.constitution.persona_files import check_name, check_target, existing_personas, target_path
from octrain.constitution.quality import QUESTIONS_PER_TRAIT, QualityScore, score_constitution
from octrain.core.config import DType, HFSamplerOptions, ModelConfig, SamplerBackend, SamplerConfig
from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.files import write_text_atomic
from octrain.samplers import build_sampler
from octrain.samplers.base import Sampler, SamplingParams
from octrain.samplers.openai_http import OpenAIChatSampler, without_userinfo

# existing_personas and target_path live in persona_files; they are re-exported here for the studio
# and its tests, which still reach them as drafting.NAME.
__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TRAITS",
    "DRAFT_STEPS",
    "Draft",
    "DraftProgress",
    "DraftRejected",
    "check_name",
    "draft_constitution",
    "existing_personas",
    "local_sampler",
    "openai_sampler",
    "save_draft",
    "target_path",
    "validate_draft",
    "with_name",
]

_LOADER_LOGGER = "octrain.constitution"


class DraftRejected(DataFormatError):
    """The model's last draft does not load; nothing was saved under the persona's name.

    ``str()`` is the loader's one-line error, naming ``rejected_path`` (where the draft was kept, as
    text that no constitution directory reads) and its line; ``attempts`` is how many drafts were asked for.
    """

    def __init__(self, message: str, *, rejected_path: Path | None, attempts: int) -> None:
        super().__init__(message)
        self.rejected_path = rejected_path
        self.attempts = attempts


@dataclass(frozen=True)
class Draft:
    """A validated draft: the YAML as it will be saved, the constitution it loads as, and its score.

    ``notes`` are the loader's notes and warnings about the draft (a merged near-duplicate, a
    repeated question), with ``NAME.yaml`` for the file; ``attempts`` counts the requests made.
    """

    name: str
    text: str
    constitution: Constitution
    score: QualityScore
    attempts: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DraftProgress:
    """One step of :func:`draft_constitution`, for a progress display (a bar, a status line).

    ``step`` is one of :data:`DRAFT_STEPS`: ``asking`` (a request for draft ``attempt`` is about to go
    out), ``validating`` (its reply is being loaded), ``retry`` (it did not load, ``error`` says why,
    and draft ``attempt + 1`` will be asked for with that error), then ``accepted`` (draft ``attempt``
    loads; ``score`` is its quality score) or ``rejected`` (the last draft does not load; ``error``
    is the one :class:`DraftRejected` carries, naming ``rejected_path``). ``attempts`` is how many
    drafts may be asked for (``1 + retries``).
    """

    step: str
    attempt: int
    attempts: int
    error: str | None = None
    score: int | None = None
    rejected_path: Path | None = None

    @property
    def done(self) -> bool:
        """The last step: nothing more is reported after it."""
        return self.step in ("accepted", "rejected")

    @property
    def fraction(self) -> float:
        """How far drafting has come, from 0 to 1: each attempt is asking, then validating; the end is 1."""
        if self.done:
            return 1.0
        steps = {"asking": 0, "validating": 1, "retry": 2}[self.step]
        return (2 * (self.attempt - 1) + steps) / (2 * self.attempts)

    def describe(self) -> str:
        """The step in words: ``asking the model (draft 1 of 2)``, ``retry 1 of 1: ...``, ``accepted: ...``."""
        of = f"draft {self.attempt} of {self.attempts}"
        retries = self.attempts - 1
        if self.step == "asking":
            if self.attempt == 1:
                return f"asking the model ({of})"
            return f"retry {self.attempt - 1} of {retries}: asking the model again with the loader's error ({of})"
        if self.step == "validating":
            return f"validating {of} with octrain's loader"
        if self.step == "retry":
            return f"{of} does not load: {self.error}; retry {self.attempt} of {retries}"
        if self.step == "accepted":
            return f"accepted: {of} loads" + (f" (quality score {self.score}/100)" if self.score is not None else "")
        return f"rejected: {of} does not load; nothing was saved"


DRAFT_STEPS = ("asking", "validating", "retry", "accepted", "rejected")


@contextlib.contextmanager
def _loader_notes(scratch: str, shown_as: str) -> Iterator[list[str]]:
    """Collect the loader's log lines while a draft loads, naming the file ``shown_as``.

    The loader names the file it read, which here is a scratch copy about to be deleted; the user
    needs the name the draft will have. Propagation is off meanwhile so that the lines are not also
    printed, pointing at the scratch file, by whatever logging the caller set up.
    """
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage().replace(scratch, shown_as))

    logger = logging.getLogger(_LOADER_LOGGER)
    handler = Collect(logging.INFO)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield notes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def validate_draft(text: str, name: str, *, shown_as: str | None = None) -> tuple[Constitution, list[str]]:
    """Load ``text`` with octrain's loader as ``NAME.yaml``; the constitution and the loader's notes.

    The loader reads files, so the text goes to a scratch directory of its own: never to a
    constitution directory, where a half-checked file would be listed and could be trained on.
    Messages name the file ``shown_as`` (default ``NAME.yaml``) instead of the scratch path.

    Raises:
        DataFormatError: the loader's one-line ``FILE:LINE: FIELD: message``.
    """
    shown = shown_as or f"{name}.yaml"
    scratch_dir = tempfile.mkdtemp(prefix="octrain-draft-")
    scratch = os.path.join(scratch_dir, f"{name}.yaml")
    try:
        Path(scratch).write_text(text, encoding="utf-8")
        with _loader_notes(scratch, shown) as notes:
            try:
                constitution = load_constitution(scratch)
            except DataFormatError as exc:
                raise DataFormatError(str(exc).replace(scratch, shown)) from None
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return constitution, notes


def _header(description: str, sampler: Sampler) -> str:
    # Where the file came from, for whoever edits it later; YAML comments do not reach the loader.
    described = " ".join(description.split())
    return f"# Drafted by `octrain constitution new` with {sampler.name} from: {described}\n"


def draft_constitution(
    sampler: Sampler,
    name: str,
    description: str,
    *,
    traits: int = DEFAULT_TRAITS,
    questions: int = QUESTIONS_PER_TRAIT,
    retries: int = 1,
    params: SamplingParams | None = None,
    rejected_dir: str | Path | None = None,
    report: Callable[[str], None] | None = None,
    progress: Callable[[DraftProgress], None] | None = None,
) -> Draft:
    """Ask ``sampler`` for a constitution and return it once octrain's loader accepts it.

    Up to ``1 + retries`` requests: each retry sends the rejected draft back with the loader's error,
    since a model usually fixes a pointed-out mistake better than it avoids it on a fresh try.
    ``report`` receives a line per rejected attempt that is retried (what the command line prints).
    ``progress`` receives every step as a :class:`DraftProgress`, the last one ``accepted`` or
    ``rejected`` (for a progress bar).
    Nothing is written under the persona's name here: :func:`save_draft` does that.

    Raises:
        DraftRejected: the last draft does not load; it is kept at ``NAME.rejected.txt`` in
            ``rejected_dir`` (default: a new temporary directory), which the message names.
        JudgeRequestError: an HTTP request failed for good (from the OpenAI-compatible sampler).
    """
    check_name(name)
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    conversation = drafting_messages(name, description, traits=traits, questions=questions)
    params = params or SamplingParams(
        temperature=0.7, top_p=0.95, repetition_penalty=1.0, max_new_tokens=DEFAULT_MAX_TOKENS
    )
    params = dataclasses.replace(params, n=1)  # one draft per request; a retry is another request
    attempts = retries + 1
    header = _header(description, sampler)

    def step(
        kind: str, attempt: int, *, error: str | None = None, score: int | None = None, kept: Path | None = None
    ) -> None:
        if progress is not None:
            progress(DraftProgress(kind, attempt, attempts, error=error, score=score, rejected_path=kept))

    for attempt in range(1, attempts + 1):
        step("asking", attempt)
        [[completion]] = sampler.chat([conversation], params, desc=f"drafting {name}", progress=False)
        step("validating", attempt)
        text = header + with_name(extract_yaml(completion.text), name)
        try:
            constitution, notes = validate_draft(text, name)
        except DataFormatError as exc:
            error = str(exc)
            if not completion.finished:
                error += f" (the reply was cut off at {params.max_new_tokens} tokens; allow more)"
            if attempt == attempts:
                rejected = _rejected(text, name, error, attempts, rejected_dir)
                step("rejected", attempt, error=str(rejected), kept=rejected.rejected_path)
                raise rejected from None
            if report is not None:
                report(f"draft {attempt} of {attempts} does not load: {error}; asking again with the error")
            step("retry", attempt, error=error)
            conversation = [
                *conversation,
                {"role": "assistant", "content": completion.text},
                {"role": "user", "content": RETRY_PROMPT.format(error=error)},
            ]
            continue
        score = score_constitution(constitution)
        step("accepted", attempt, score=score.total)
        return Draft(name, text, constitution, score, attempt, tuple(notes))
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def _rejected(text: str, name: str, error: str, attempts: int, rejected_dir: str | Path | None) -> DraftRejected:
    """Keep the rejected draft where the user can read it, and the error that points into it."""
    directory = (
        Path(rejected_dir) if rejected_dir is not None else Path(tempfile.mkdtemp(prefix=f"octrain-new-{name}-"))
    )
    directory.mkdir(parents=True, exist_ok=True)
    kept = directory / f"{name}.rejected.txt"
    try:
        kept.write_text(text, encoding="utf-8")
    except OSError:
        kept = None  # the error itself matters more than the copy
    # The loader named the draft NAME.yaml; point at the copy instead, whose lines are the same.
    shown = f"{name}.yaml"
    message = str(kept) + error[len(shown) :] if kept is not None and error.startswith(shown) else error
    tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
    return DraftRejected(
        f"{message} [the model's draft does not load after {tries}; nothing was saved as {name!r}]",
        rejected_path=kept,
        attempts=attempts,
    )


def save_draft(draft: Draft, target: Path, *, force: bool = False) -> list[Path]:
    """Write the validated draft to ``target`` atomically; the files it replaced or now shadows.

    The existence check runs again here, just before writing, since the draft took a while.
    """
    existing = check_target(draft.name, target, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, draft.text)
    return existing


# --- samplers ---------------------------------------------------------------------------------------


def openai_sampler(
    base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 300.0
) -> Sampler:
    """An OpenAI-compatible endpoint; the key is read from ``api_key_env`` by the sampler, and only there.

    Checked here too so the message names the flag a command-line user types.

    Raises:
        ConfigError: ``api_key_env`` names an unset or empty variable.
    """
    if api_key_env and not os.environ.get(api_key_env, "").strip():
        raise ConfigError(
            f"environment variable {api_key_env} is not set: it must hold the API key for "
            f"{without_userinfo(base_url)}; --api-key-env VAR names another variable, --api-key-env '' sends no key"
        )
    # One draft is one request: a few retries cover a flaky network, no more.
    return OpenAIChatSampler(
        base_url, model, api_key_env=api_key_env, timeout=timeout, max_retries=2, max_concurrency=1
    )


def local_sampler(path: str, *, backend: str = "hf", device: str = "auto", dtype: str = "auto") -> Sampler:
    """A local model (a directory, a Hub id in the cache, or ``builtin:tiny-qwen3``) through octrain's factory.

    Close it with ``sampler.close()`` and :func:`octrain.samplers.release_engines` when done.
    """
    try:
        config = SamplerConfig(backend=SamplerBackend(backend), hf=HFSamplerOptions(device=device))
        model = ModelConfig(path=path, dtype=DType(dtype))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return build_sampler(config, model, show_progress=False)
