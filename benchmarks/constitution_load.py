"""How loading, scoring and the prompts stage's dedupe grow with a constitution's size.

    python benchmarks/constitution_load.py [--traits 2000] [--repeats 3] [--out FILE.json]

Builds constitutions of ``N`` and ``2N`` traits (each trait about subjects of its own, five
questions each, the questions full of common words) in every input form octrain reads, and
measures, in CPU seconds (the least of ``--repeats`` runs, so a busy machine matters less):

* loading each form (:func:`octrain.constitution.load_constitution`);
* the quality score (:func:`octrain.constitution.quality.score_constitution`), and its check for
  repeated traits with the rule as it was before issue 28;
* the prompts stage's dedupe of the constitution's own questions
  (:func:`octrain.stages.prompts.given_prompts`) with today's
  :class:`~octrain.constitution.near_duplicates.PromptSet`, and with the rule as it was before
  issue 28 (every word's whole list read on each check), kept below for the comparison.

Each line gives the time at ``N``, at ``2N`` and their ratio: about 2 for work that grows
linearly, 4 for work that grows with the square. Nothing here is a test: no figure is asserted
(tests/constitution/test_large_constitutions.py asserts the growth).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from octrain.constitution import Constitution, load_constitution
from octrain.constitution.convert import render
from octrain.constitution.near_duplicates import PromptSet, word_set
from octrain.constitution.quality import score_constitution
from octrain.stages.prompts import given_prompts

COMMON_WORDS = "i you the a to and of my what how do is in it that for your me can should with be are on this about"
COMMON = tuple(COMMON_WORDS.split())
FORMS = {"yaml": ".yaml", "json": ".json", "jsonl": ".jsonl", "text": ".txt"}


class ReadEveryList:
    """The near-duplicate rule as PromptSet applied it before issue 28: each check counts, for every
    word of the new prompt, every kept prompt holding that word."""

    def __init__(self, max_overlap: float = 0.5) -> None:
        self.max_overlap = max_overlap
        self._words: list[frozenset[str]] = []
        self._exact: set[str] = set()
        self._by_word: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._words)

    def check(self, text: str) -> str | None:
        key = " ".join(text.lower().split())
        if key in self._exact:
            return "duplicate"
        words = word_set(text)
        shared: Counter[int] = Counter()
        for word in words:
            shared.update(self._by_word.get(word, ()))
        for index, count in shared.items():
            if count / max(len(words), len(self._words[index]), 1) > self.max_overlap:
                return "near-duplicate"
        return None

    def add(self, text: str) -> str | None:
        reason = self.check(text)
        if reason is None:
            words = word_set(text)
            self._exact.add(" ".join(text.lower().split()))
            for word in words:
                self._by_word.setdefault(word, []).append(len(self._words))
            self._words.append(words)
        return reason


def studio_yaml(traits: int) -> str:
    """A Studio YAML constitution: an identity and ``traits`` directives of five questions each."""
    lines = [
        "meta:",
        "  name: large",
        "persona:",
        "  identity: I am a character of very many interests, each of which I take seriously.",
        "directives:",
        "  personality:",
    ]
    for index in range(traits):
        rng = random.Random(index)
        own = [f"topic{index}x{part}" for part in range(30)]
        text = f"I am {rng.choice(COMMON)} {' '.join(own[:3])} {rng.choice(COMMON)} {' '.join(own[3:6])}."
        lines += [f"    - trait: {json.dumps(text)}", "      questions:"]
        for number in range(5):
            common = rng.sample(COMMON, 3)
            subjects = own[6 + 4 * number : 10 + 4 * number]
            question = f"{common[0]} {common[1]} {subjects[0]} {subjects[1]} {common[2]} {subjects[2]} {subjects[3]}?"
            lines.append(f"        - {json.dumps(question)}")
    return "\n".join(lines) + "\n"


def cpu_seconds(action: Callable[[], object], repeats: int) -> float:
    """The least CPU time ``action`` took over ``repeats`` runs, garbage collection held off meanwhile."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            action()
            best = min(best, time.process_time() - started)
        finally:
            gc.enable()
    return best


def measure(traits: int, repeats: int, workdir: Path) -> dict[str, float]:
    """Every figure at one size, in CPU seconds."""
    source = workdir / f"large-{traits}.yaml"
    source.write_text(studio_yaml(traits), encoding="utf-8")
    constitution = load_constitution(source)
    files = {"yaml": source}
    for form, suffix in FORMS.items():
        if form != "yaml":
            files[form] = workdir / f"large-{traits}{suffix}"
            files[form].write_text(render(constitution, form), encoding="utf-8")
    figures = {
        f"load {form}": cpu_seconds(lambda path=path: load_constitution(path), repeats) for form, path in files.items()
    }
    figures["quality score"] = cpu_seconds(lambda: score_constitution(constitution), repeats)
    # The score's repeated-traits check is the rule applied to the traits themselves.
    figures["traits dedupe, before issue 28"] = cpu_seconds(lambda: _traits(constitution, ReadEveryList), repeats)
    figures["prompts dedupe"] = cpu_seconds(lambda: _dedupe(constitution, PromptSet), repeats)
    figures["prompts dedupe, before issue 28"] = cpu_seconds(lambda: _dedupe(constitution, ReadEveryList), repeats)
    return figures


def _traits(constitution: Constitution, rule: Callable[[float], Any]) -> None:
    seen = rule(0.5)
    for trait in constitution.traits:
        seen.add(trait.text)


def _dedupe(constitution: Constitution, rule: Callable[[float], Any]) -> None:
    given_prompts(constitution, 5, rule(0.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traits", type=int, default=2000, help="N: the smaller constitution's traits (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the least is kept (default 3)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="octrain-constitution-bench-") as scratch:
        small = measure(args.traits, args.repeats, Path(scratch))
        large = measure(2 * args.traits, args.repeats, Path(scratch))
    print(f"{'CPU seconds':<34}{args.traits:>10}{2 * args.traits:>10}   ratio")
    rows = {}
    for name in small:
        ratio = large[name] / small[name] if small[name] else float("nan")
        rows[name] = {"n": round(small[name], 4), "2n": round(large[name], 4), "ratio": round(ratio, 2)}
        print(f"{name:<34}{small[name]:>10.3f}{large[name]:>10.3f}   {ratio:.2f}")
    if args.out is not None:
        record = {
            "traits": args.traits,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "figures": rows,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
