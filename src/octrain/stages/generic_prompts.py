"""The generic prompts of stage ``prompts``: ordinary assistant requests, so the character shows on
everyday tasks too, not only on the questions that target its traits.

The pool is the shipped one (``builtin``), a ``.jsonl`` or ``.txt`` file, or a Hub dataset
(``hub:NAME[:SPLIT]``, LIMA's first turns say); :func:`pick_generic` draws a seeded sample from
it, skipping what the trait prompts already hold.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from octrain.constitution.near_duplicates import PromptSet
from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.files import iter_jsonl, read_text


def _first_user_turn(row: dict[str, Any]) -> str | None:
    """The opening user message of a row in any common chat-dataset layout."""
    for key in ("prompt", "instruction", "question", "text"):
        value = row.get(key)
        if isinstance(value, str):
            return value
    for key in ("prompt", "messages", "conversation", "conversations"):
        value = row.get(key)
        if isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, str):  # LIMA: a list of alternating turns as plain strings
                return first
            if isinstance(first, dict):
                for message in value:
                    if message.get("role", message.get("from")) in ("user", "human"):
                        content = message.get("content", message.get("value"))
                        return content if isinstance(content, str) else None
    return None


def load_generic_pool(source: str) -> list[str]:
    """Ordinary assistant requests from ``builtin``, a ``.jsonl``/``.txt`` file, or ``hub:NAME[:SPLIT]``.

    Raises:
        DataFormatError: a file row without a usable user turn, or a file that is not UTF-8
            text, named by path and line.
    """
    if source == "builtin":
        text = resources.files("octrain").joinpath("data/generic_prompts.jsonl").read_text(encoding="utf-8")
        return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]
    if source.startswith("hub:"):
        from datasets import load_dataset

        name, _, split = source[len("hub:") :].partition(":")
        rows: Iterable[dict[str, Any]] = load_dataset(name, split=split or "train")
        prompts = [p for p in (_first_user_turn(row) for row in rows) if p and p.strip()]
        if not prompts:
            raise DataFormatError(f"prompts.generic_source={source}: no user turns found in the dataset")
        return prompts
    path = Path(source).expanduser()
    if path.suffix == ".txt":
        text = read_text(path, "prompts.generic_source")  # a binary file is one line of error, not a traceback
        return [line.strip() for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for number, row in iter_jsonl(path):
            prompt = _first_user_turn(row)
            if not prompt or not prompt.strip():
                raise DataFormatError(
                    f"{path}:{number}: no user prompt found (expected a 'prompt' string, or a "
                    "'messages'/'conversations' list)"
                )
            prompts.append(prompt)
        return prompts
    raise ConfigError(
        f"prompts.generic_source: expected 'builtin', a .jsonl or .txt file, or hub:NAME[:SPLIT], got {source!r}"
    )


def pick_generic(pool: list[str], count: int, seen: PromptSet, seed: int) -> list[str]:
    """``count`` prompts from ``pool`` in a seeded random order, skipping duplicates."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    picked = []
    for index in order:
        if len(picked) >= count:
            break
        text = pool[index].strip()
        if text and seen.add(text) is None:
            picked.append(text)
    return picked
