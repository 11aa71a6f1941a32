"""Out-of-distribution (OOD) prompts: conversations unlike the ones a character was trained on.

octrain trains a character with DPO on single-turn user prompts and no system prompt. Users
meet the model elsewhere too, and a character that vanishes there has been learned only for
one shape of input. The shipped set (``data/ood_prompts.jsonl``, 60 conversations, 15 in each
category) puts the model in four such places; each conversation ends with a user turn for the
model to answer, and none asks for a persona or a style, so whatever character shows is the
model's own:

* ``tool_use`` -- an agent: a system message lists the tools, an earlier assistant turn calls
  one, and a user turn starting ``[tool result: NAME]`` brings the result back. The system
  prompt, the tool-call syntax and the JSON payload are all absent from training, and the
  answer has a job to do with the data, which pulls toward a flat, functional register.
* ``json`` -- a request for strictly formatted JSON, some under a system message saying a
  program parses the reply. At least one field is free text, so the character has somewhere
  to show without breaking the format; whether it should is for the evaluation to judge.
* ``code_review`` -- a short snippet (Python, JavaScript, SQL, Bash, Go, ...) with a real bug
  or smell. Technical content where precision matters more than voice.
* ``long_chat`` -- four to six earlier exchanges in which the assistant answered plainly, with
  no persona, then a new question. The model's own earlier turns are a strong pull back to
  the plain voice, and training never showed a history at all.

Roles are only ``system``, ``user`` and ``assistant`` (every chat template takes those; many
reject a ``tool`` role), which is why tool calls and results are written as text.

:func:`load_ood_prompts` reads the shipped set or a user's ``.jsonl`` file in the same format
(``{"id": ..., "category": ..., "messages": [...]}`` a line; other keys are ignored), checks
every row and keeps the file's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.files import iter_jsonl
from octrain.core.records import check_messages

CATEGORIES: tuple[str, ...] = ("tool_use", "json", "code_review", "long_chat")
BUILTIN_FILE = "data/ood_prompts.jsonl"


@dataclass(frozen=True)
class OodPrompt:
    """One conversation for the model to continue.

    Attributes:
        id: unique within its file, e.g. ``tool_use-01``.
        category: one of :data:`CATEGORIES` for the shipped set; a user file may use its own.
        messages: the chat so far: an optional first system message, then user and assistant
            turns alternating, ending with a user turn.
    """

    id: str
    category: str
    messages: list[dict[str, str]]

    @property
    def last_user(self) -> str:
        """The content of the final user turn, the one the model answers."""
        return self.messages[-1]["content"]


def load_ood_prompts(
    source: str = "builtin", *, categories: Sequence[str] | None = None, per_category: int | None = None
) -> list[OodPrompt]:
    """The OOD conversations from ``builtin`` (the shipped set) or a ``.jsonl`` file, in file order.

    Args:
        source: ``builtin``, or the path of a ``.jsonl`` file in the shipped set's format.
        categories: keep only these categories (a single name may be given as a string);
            ``None`` keeps all.
        per_category: keep the first N conversations of each category, in file order, so a
            smaller run always sees the same prompts; ``None`` keeps all.

    Raises:
        DataFormatError: the file is missing, empty or not UTF-8, or a line is not valid JSON
            or breaks the format; the message names the file and the 1-based line.
        ConfigError: ``source`` is not ``builtin`` or a ``.jsonl`` path, ``per_category`` is
            below 1, or ``categories`` is empty or names a category the source does not hold.
    """
    if per_category is not None and (isinstance(per_category, bool) or not isinstance(per_category, int)):
        raise ConfigError(f"OOD prompts: per_category must be a whole number of at least 1, got {per_category!r}")
    if per_category is not None and per_category < 1:
        raise ConfigError(f"OOD prompts: per_category must be at least 1, got {per_category}")

    if source == "builtin":
        # as_file gives a real path even when the package is installed as a zip, so the shared
        # JSONL reader (and its line-numbered errors) can be used for the shipped set as well.
        with resources.as_file(resources.files("octrain").joinpath(BUILTIN_FILE)) as path:
            prompts = _read(path, allowed_categories=CATEGORIES)
        known = CATEGORIES
    else:
        path = Path(source).expanduser()
        if path.suffix != ".jsonl":
            raise ConfigError(f"OOD prompts: expected 'builtin' or a .jsonl file, got {source!r}")
        prompts = _read(path, allowed_categories=None)
        # A user file may name its own categories; the known ones are those it holds.
        known = tuple(dict.fromkeys(prompt.category for prompt in prompts))

    if categories is not None:
        wanted = (categories,) if isinstance(categories, str) else tuple(categories)
        if not wanted:
            raise ConfigError(f"OOD prompts: categories is empty; known categories: {', '.join(known)}")
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ConfigError(
                f"OOD prompts: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(repr(name) for name in unknown)}; known categories: {', '.join(known)}"
            )
        prompts = [prompt for prompt in prompts if prompt.category in wanted]

    if per_category is not None:
        taken: dict[str, int] = {}
        kept = []
        for prompt in prompts:
            if taken.get(prompt.category, 0) < per_category:
                taken[prompt.category] = taken.get(prompt.category, 0) + 1
                kept.append(prompt)
        prompts = kept
    return prompts


def _read(path: Path, allowed_categories: tuple[str, ...] | None) -> list[OodPrompt]:
    """Every row of ``path`` as an :class:`OodPrompt`; ``allowed_categories`` None allows any name."""
    prompts: list[OodPrompt] = []
    first_line_of: dict[str, int] = {}
    for number, row in iter_jsonl(path):
        try:
            prompt = _parse(row, allowed_categories)
        except DataFormatError as error:
            raise DataFormatError(f"{path}:{number}: {error}") from None
        if prompt.id in first_line_of:
            raise DataFormatError(
                f"{path}:{number}: duplicate id {prompt.id!r} (first used on line {first_line_of[prompt.id]}); "
                "expected every id to be unique"
            )
        first_line_of[prompt.id] = number
        prompts.append(prompt)
    if not prompts:
        raise DataFormatError(f"{path}: no conversations in the file; expected one JSON object a line")
    return prompts


def _parse(row: dict[str, Any], allowed_categories: tuple[str, ...] | None) -> OodPrompt:
    """One JSONL object checked against the format; errors say what was expected, without the place."""
    for key in ("id", "category"):
        value = row.get(key)
        if key not in row:
            raise DataFormatError(f"missing key '{key}'; expected a non-empty string")
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(f"'{key}' must be a non-empty string, got {value!r}")
    category = row["category"]
    if allowed_categories is not None and category not in allowed_categories:
        raise DataFormatError(f"unknown category {category!r}; expected one of {', '.join(allowed_categories)}")
    if "messages" not in row:
        raise DataFormatError("missing key 'messages'; expected a non-empty list of messages")
    messages = check_messages(row["messages"], "messages")

    for index, message in enumerate(messages):
        if not message["content"].strip():
            raise DataFormatError(f"'messages[{index}].content' is empty; expected text")
        if message["role"] == "system" and index > 0:
            raise DataFormatError(f"'messages[{index}]' is a system message; expected one only as the first message")
    # After the optional system message the turns alternate, starting with the user: every chat
    # template accepts that, and several reject two user or two assistant turns in a row.
    start = 1 if messages[0]["role"] == "system" else 0
    for index in range(start, len(messages)):
        expected = "user" if (index - start) % 2 == 0 else "assistant"
        if messages[index]["role"] != expected:
            raise DataFormatError(
                f"'messages[{index}].role' is {messages[index]['role']!r}; expected {expected!r} "
                "(user and assistant turns alternate, starting with the user)"
            )
    if messages[-1]["role"] != "user":
        raise DataFormatError(
            f"the last message is a {messages[-1]['role']} turn; expected a user turn for the model to answer"
        )
    return OodPrompt(id=row["id"], category=category, messages=messages)
