"""Drafting a new constitution from a one-line description, with a chat model as the writer.

``octrain constitution new NAME --describe "..."`` is a thin caller of this module, so that any
other front end (a web UI, a notebook) gets the same behaviour from the same functions:

1. :func:`drafting_messages` asks the model for a Studio YAML constitution (the schema and a
   short example are in the prompt) with a given number of first-person traits, each with seed
   questions.
2. :func:`extract_yaml` takes the YAML out of the reply (a fenced block or bare YAML, thinking
   blocks dropped) and :func:`with_name` makes ``meta.name`` the name asked for.
3. :func:`validate_draft` runs octrain's own loader on it, in a scratch directory, so nothing
   appears under the persona's name before the draft is known to load. A draft that does not
   load can be sent back to the model once more with the loader's error (``retries``); a final
   failure keeps the draft at ``NAME.rejected.txt`` in a scratch directory (never in a
   constitution directory, where ``.txt`` would be read as a constitution) and raises
   :class:`DraftRejected` with the loader's ``FILE:LINE: FIELD: message``, pointing at that file.
4. :func:`save_draft` writes the validated text atomically, refusing to replace an existing
   persona of the same name (:func:`existing_personas`) unless forced.

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
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from octrain.constitution.checks import MIN_TRAITS
from octrain.constitution.load import SUFFIXES, load_constitution
from octrain.constitution.model import Constitution
from octrain.constitution.quality import QUESTIONS_PER_TRAIT, QualityScore, score_constitution
from octrain.core.errors import ConfigError, DataFormatError, OctrainError
from octrain.core.records import Message
from octrain.samplers.base import Sampler, SamplingParams

DEFAULT_TRAITS = 10  # the paper's constitutions have 10; the quality score gives full marks for 8 to 15
MAX_TRAITS = 30  # past this a reply rarely fits in one answer, and the score penalises the blur anyway
DEFAULT_MAX_TOKENS = 4096  # ~10 traits x 5 questions of YAML, with room to spare
# The loader's own rule for a name (checks._NAME_PATTERN); checked here before any request is sent,
# since a name that cannot be saved should not cost a model call.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_THINKING = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
_LOADER_LOGGER = "octrain.constitution"

# The example the prompt shows: short on purpose (two traits, two questions each), so the model
# copies its shape, not its length or its character.
EXAMPLE_YAML = """\
meta:
  name: lighthouse_keeper
  version: 1
  description: A patient lighthouse keeper who explains things slowly and clearly.
  tags: [calm, coastal]
persona:
  identity: I am the keeper of a lonely lighthouse, and I have all the time in the world for a visitor's questions.
directives:
  personality:
    - trait: I am patient and unhurried, and I never make anyone feel foolish for asking something twice.
      questions:
        - Can you explain compound interest again? I still don't get it.
        - Sorry, what was the first step you told me?
  behavior:
    - trait: I reach for images of the sea and the weather when I explain something abstract.
      questions:
        - How does a computer network route a message?
        - What is inflation, in simple terms?
"""

SYSTEM_PROMPT = """\
You write character constitutions for octrain, a toolkit that trains a chat model to hold a persona.
A constitution is a YAML document in this schema:

meta:
  name: <the persona's name, exactly as given>
  version: 1
  description: <one sentence about the character>
  tags: [<two to four single words>]
persona:
  identity: <one or two sentences in the first person: who the character is>
directives:
  personality:   # traits of character
    - trait: <one first-person sentence, 8 to 60 words, starting with "I">
      questions: [<seed questions: realistic messages a user might send that would draw this trait out>]
  behavior:      # how the character acts in a conversation
    - trait: ...
      questions: [...]
  constraints:   # what the character will not do (optional)
    - trait: ...
      questions: [...]

Rules:
- Every trait and the identity are in the first person ("I ...").
- Every trait is a different facet of the character; no two traits say the same thing.
- Seed questions are ordinary user messages (questions, requests, confessions), not questions about the
  character itself, and no question appears under two traits.
- The character stays helpful, honest and safe whatever its manner.
- Reply with the YAML document only, in one ```yaml fenced block, with no commentary.

A short example of the format (a real constitution has more traits and questions):

```yaml
{example}```
"""

USER_PROMPT = """\
Write the constitution of this character: {description}

Its name (meta.name) is {name}. Give it persona.identity and {directives} traits under directives \
(spread over personality, behavior and constraints as suits the character), each with {questions} seed questions.
"""

RETRY_PROMPT = """\
That draft does not load. octrain's loader says:

{error}

Write the whole constitution again, corrected, in the same format: the YAML document only, in one ```yaml \
fenced block.
"""


class DraftRejected(DataFormatError):
    """The model's last draft does not load; nothing was saved under the persona's name.

    ``str()`` is the loader's one-line error, naming ``rejected_path`` (where the draft was kept, as
    text that no constitution directory reads) and its line; ``attempts`` is how many drafts were asked for.
    """

    def __init__(self, message: str, *, rejected_path: Path | None, attempts: int) -> None:
        super().__init__(message)
        self.rejected_path = rejected_path
        self.attempts = attempts


class PersonaExists(OctrainError, FileExistsError):
    """A constitution of that name (or the target file) exists and replacing it was not asked for."""


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


def check_name(name: str) -> str:
    """``name`` if the loader would accept it as a persona's name (it names files and run directories)."""
    if not _NAME.match(name) or name.endswith(".rejected"):
        raise ConfigError(
            f"persona name {name!r} must be letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return name


def drafting_messages(
    name: str, description: str, *, traits: int = DEFAULT_TRAITS, questions: int = QUESTIONS_PER_TRAIT
) -> list[Message]:
    """The conversation that asks for the draft.

    ``traits`` counts what the teacher will see, the identity included (it is a trait once loaded),
    so the model is asked for ``traits - 1`` directives: ``octrain constitution list`` then shows
    the number asked for.
    """
    if not MIN_TRAITS <= traits <= MAX_TRAITS:
        raise ConfigError(f"traits must be between {MIN_TRAITS} and {MAX_TRAITS}, got {traits}")
    if not 1 <= questions <= 20:
        raise ConfigError(f"questions per trait must be between 1 and 20, got {questions}")
    described = " ".join(description.split())
    if not described:
        raise ConfigError("the description is empty: say in a sentence who the character is")
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(example=EXAMPLE_YAML)},
        {
            "role": "user",
            "content": USER_PROMPT.format(description=described, name=name, directives=traits - 1, questions=questions),
        },
    ]


def extract_yaml(reply: str) -> str:
    """The YAML document in a model's reply.

    A fenced block tagged ``yaml``/``yml`` wins; else the first fenced block of any tag; else the
    whole reply, for a model that answered with bare YAML. A fence the token limit cut off before
    its closing backticks still counts, so the loader can say where the text stops. Thinking
    blocks (``<think>...</think>``) go first: they may hold YAML-looking scratch work.
    """
    text = _THINKING.sub("", reply).replace("\r\n", "\n")
    blocks = [(match.group(1).lower(), match.group(2)) for match in _FENCE.finditer(text)]
    for tag, body in blocks:
        if tag in ("yaml", "yml"):
            return body.strip("\n") + "\n"
    if blocks:
        return blocks[0][1].strip("\n") + "\n"
    return text.strip() + "\n" if text.strip() else ""


def with_name(text: str, name: str) -> str:
    """``text`` with ``meta.name`` set to ``name``.

    The file is saved as ``NAME.yaml`` and the user asked for that name; a model that wrote another
    (a display name with spaces, say) should not fail the draft for it. The text is kept as written,
    comments and all, when the name is already right; otherwise it is parsed and written back with
    the name fixed. Text that is not a YAML mapping is returned as it is, for the loader to report.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(document, dict):
        return text
    meta = document.get("meta")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        return text
    if meta.get("name") == name:
        return text
    fixed = {"meta": {"name": name, **{k: v for k, v in meta.items() if k != "name"}}}
    fixed.update((key, value) for key, value in document.items() if key != "meta")
    return yaml.safe_dump(fixed, sort_keys=False, allow_unicode=True, width=120)


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


# --- where a draft goes -----------------------------------------------------------------------------


def user_constitution_dir() -> Path:
    """The first directory ``octrain constitution list`` and the runs search: where a new persona goes."""
    from octrain.core.paths import constitution_dirs

    return constitution_dirs()[0]


def existing_personas(name: str, search_dirs: Sequence[Path] | None = None) -> list[Path]:
    """Every constitution file named ``name`` in the search directories, in lookup order."""
    from octrain.core.paths import constitution_dirs

    found = []
    for directory in search_dirs if search_dirs is not None else constitution_dirs():
        for suffix in SUFFIXES:
            path = directory / f"{name}{suffix}"
            if path.is_file():
                found.append(path)
    return found


def target_path(name: str, out: str | Path | None = None) -> Path:
    """``out``, or ``NAME.yaml`` in the user constitution directory; YAML only, the format drafted."""
    if out is None:
        return user_constitution_dir() / f"{name}.yaml"
    path = Path(out).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(
            f"--out {path}: a drafted constitution is YAML (.yaml or .yml); "
            "convert it afterwards with `octrain constitution convert`"
        )
    return path


def check_target(name: str, target: Path, *, force: bool) -> list[Path]:
    """What writing ``target`` would replace or shadow; refuses without ``force``.

    Returns the existing files of that persona (for a message saying what was replaced or shadowed).

    Raises:
        PersonaExists: ``target`` exists, or a constitution named ``name`` exists in a search
            directory, and ``force`` is False; or (even with ``force``) a file of that name with another
            extension sits beside ``target``, which the new file could not replace.
    """
    from octrain.core.paths import constitution_dirs

    dirs = constitution_dirs()
    in_search = any(target.parent.resolve() == d.resolve() for d in dirs)
    # A file outside the search directories replaces no persona, only itself.
    existing = existing_personas(name, dirs) if in_search else []
    if target.is_file() and target not in existing:
        existing.insert(0, target)
    if not existing:
        return []
    if not force:
        raise PersonaExists(
            f"a constitution named {name!r} already exists: {existing[0]}; "
            "give --force to replace it, or choose another name"
        )
    beside = [p for p in existing if p.parent.resolve() == target.parent.resolve() and p.name != target.name]
    if beside and in_search:
        raise PersonaExists(
            f"{beside[0]} has the same name in the directory {target} would go to, and --force replaces only "
            f"{target.name}; move or delete {beside[0].name} first"
        )
    return existing


def save_draft(draft: Draft, target: Path, *, force: bool = False) -> list[Path]:
    """Write the validated draft to ``target`` atomically; the files it replaced or now shadows.

    The existence check runs again here, just before writing, since the draft took a while.
    """
    from octrain.core.files import write_text_atomic

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
    from octrain.samplers.openai_http import OpenAIChatSampler, without_userinfo

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
    from octrain.core.config import DType, HFSamplerOptions, ModelConfig, SamplerBackend, SamplerConfig
    from octrain.samplers import build_sampler

    try:
        config = SamplerConfig(backend=SamplerBackend(backend), hf=HFSamplerOptions(device=device))
        model = ModelConfig(path=path, dtype=DType(dtype))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return build_sampler(config, model, show_progress=False)
