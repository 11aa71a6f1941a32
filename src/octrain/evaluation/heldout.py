"""Held-out evaluation prompts: user messages the model never trained on.

A character that only shows on the prompts it was trained on has been memorised, not
learned. Evaluation therefore asks its questions from a separate set: the shipped one
(``data/eval_prompts.jsonl``, about two hundred everyday requests, opinions, explanations,
small tasks, personal situations and creative asks) or a user's own file.

"Separate" is checked with the same rule the prompts stage uses to drop near duplicates
(:class:`octrain.stages.prompts.PromptSet`): two prompts clash when they share more than
``max_overlap`` of the distinct words of the longer one. :func:`check_no_overlap` lists every
clash; :func:`select_heldout` leaves the clashing prompts out of a run's evaluation and
says how many it dropped, and when fewer prompts are available than were asked for.
:func:`training_prompts` reads what a run trained on, to check against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from octrain.constitution.near_duplicates import word_set
from octrain.core.config import StageName
from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.files import read_text
from octrain.core.layout import PROMPTS_FILE
from octrain.core.records import PromptRecord, load_records

BUILTIN_FILE = "data/eval_prompts.jsonl"


def load_eval_prompts(source: str = "builtin") -> list[str]:
    """The evaluation prompts from ``builtin``, a ``.jsonl`` file of ``{"prompt": ...}`` rows, or a ``.txt`` file.

    A ``.txt`` file holds one prompt per line; blank lines are skipped. A ``.jsonl`` file
    holds one object per line with a non-empty ``prompt`` string; blank lines are skipped.

    Raises:
        DataFormatError: the file is missing or empty, or a row is not valid JSON or has no
            usable ``prompt``; the message names the path and the 1-based line.
        ConfigError: ``source`` is neither ``builtin`` nor a ``.jsonl``/``.txt`` path.
    """
    if source == "builtin":
        text = resources.files("octrain").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
        return _parse_jsonl(text, f"octrain/{BUILTIN_FILE}")
    path = Path(source).expanduser()
    if path.suffix not in (".jsonl", ".txt"):
        raise ConfigError(f"evaluation prompts: expected 'builtin', a .jsonl or a .txt file, got {source!r}")
    text = read_text(path, "evaluation prompts")  # a missing or non-UTF-8 file: one line naming it
    if path.suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        prompts = _parse_jsonl(text, str(path))
    if not prompts:
        raise DataFormatError(f"{path}: no evaluation prompts in the file")
    return prompts


def _parse_jsonl(text: str, where: str) -> list[str]:
    """The ``prompt`` strings of a JSONL text; ``where`` names it in errors."""
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{where}:{number}: not valid JSON ({error.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataFormatError(f"{where}:{number}: expected an object with a non-empty 'prompt' string")
        prompts.append(prompt.strip())
    return prompts


def _normalised(text: str) -> str:
    """The form exact duplicates are compared in: lower case, whitespace runs collapsed."""
    return " ".join(text.lower().split())


def check_no_overlap(
    eval_prompts: list[str], training_prompts: list[str], max_overlap: float = 0.5
) -> list[tuple[str, str, str]]:
    """Every evaluation prompt that repeats or nearly repeats a training prompt.

    Uses the prompts stage's rule: an exact duplicate after lower-casing and collapsing
    whitespace, or a near duplicate sharing more than ``max_overlap`` of the distinct words
    of the longer of the two prompts.

    Returns:
        ``(eval prompt, training prompt, "duplicate" | "near-duplicate")`` for each clashing
        pair, in the order of ``eval_prompts`` and then ``training_prompts``; empty when the
        sets are separate.
    """
    exact: dict[str, list[int]] = {}
    words = [word_set(text) for text in training_prompts]
    # An index from word to the training prompts holding it: only prompts sharing a word with
    # an evaluation prompt are compared, which keeps thousands-by-thousands checks fast.
    by_word: dict[str, list[int]] = {}
    for index, (text, vocabulary) in enumerate(zip(training_prompts, words, strict=True)):
        exact.setdefault(_normalised(text), []).append(index)
        for word in vocabulary:
            by_word.setdefault(word, []).append(index)

    found: list[tuple[str, str, str]] = []
    for prompt in eval_prompts:
        duplicates = set(exact.get(_normalised(prompt), ()))
        vocabulary = word_set(prompt)
        shared: dict[int, int] = {}
        for word in vocabulary:
            for index in by_word.get(word, ()):
                shared[index] = shared.get(index, 0) + 1
        near = {
            index
            for index, count in shared.items()
            if index not in duplicates and count / max(len(vocabulary), len(words[index]), 1) > max_overlap
        }
        for index in sorted(duplicates | near):
            kind = "duplicate" if index in duplicates else "near-duplicate"
            found.append((prompt, training_prompts[index], kind))
    return found


@dataclass
class HeldOutPrompts:
    """The evaluation prompts a run uses, and how they were chosen (for the report)."""

    prompts: list[str]
    requested: int
    available: int
    overlapping: list[tuple[str, str, str]] = field(default_factory=list)  # (eval, training, kind)

    def notes(self) -> list[str]:
        """What the report must say about the prompt set, if anything."""
        notes = []
        if self.overlapping:
            clashing = len({clash[0] for clash in self.overlapping})
            notes.append(
                f"{clashing} evaluation prompts repeat or nearly repeat prompts this run trained on and were left out"
            )
        if self.requested > len(self.prompts):
            notes.append(
                f"eval.prompt_count asks for {self.requested} prompts; {self.available} are available and "
                f"{len(self.prompts)} are held out from training, so {len(self.prompts)} are used"
            )
        return notes


def select_heldout(
    eval_prompts: list[str], training_prompts: list[str], count: int, max_overlap: float = 0.5
) -> HeldOutPrompts:
    """The first ``count`` evaluation prompts that do not repeat any training prompt.

    Prompts that clash with training (see :func:`check_no_overlap`) are left out and listed,
    so a figure is never computed on a prompt the model was trained to answer.
    """
    overlapping = check_no_overlap(eval_prompts, training_prompts, max_overlap)
    clashing = {clash[0] for clash in overlapping}
    kept = [prompt for prompt in eval_prompts if prompt not in clashing]
    return HeldOutPrompts(kept[:count], requested=count, available=len(eval_prompts), overlapping=overlapping)


def training_prompts(run_dir: Path) -> list[str]:
    """Every distinct user prompt the run in ``run_dir`` trained on (seed, expanded and generic), in file order."""
    records = load_records(run_dir / StageName.prompts.value / PROMPTS_FILE, PromptRecord)
    texts = [m["content"] for r in records for m in r.prompt if m["role"] == "user"]
    return list(dict.fromkeys(texts))
