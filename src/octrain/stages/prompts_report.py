"""What stage ``prompts`` asked for and what it got, trait by trait: ``prompts/report.json`` and the
log lines that explain a shortfall.

A generator that writes little usable text (a tiny model, a wrong template) leaves traits short;
the stage then carries on with what it has, and these lines say which traits fell short and why
(how many replies, how many numbered lines, what was rejected as junk or as a near duplicate).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TraitReport:
    trait: int
    text: str
    wanted: int
    seeds: int = 0
    additional: int = 0
    expanded: int = 0
    requests: int = 0
    lines_parsed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    expansion_skipped: bool = False  # the constitution's own prompts filled the trait

    @property
    def got(self) -> int:
        return self.seeds + self.additional + self.expanded


@dataclass
class PromptsReport:
    """What the stage asked for and what it got; written as ``report.json``."""

    traits: list[TraitReport] = field(default_factory=list)
    generic_wanted: int = 0
    generic_got: int = 0
    generic_source: str = ""
    samples_per_prompt: int = 1
    rounds: int = 0

    @property
    def wanted(self) -> int:
        return sum(t.wanted for t in self.traits) + self.generic_wanted

    @property
    def got(self) -> int:
        return sum(t.got for t in self.traits) + self.generic_got

    def to_json(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted,
            "got": self.got,
            "additional": sum(t.additional for t in self.traits),
            "expansion_skipped": sum(t.expansion_skipped for t in self.traits),
            "records": self.got * self.samples_per_prompt,
            "samples_per_prompt": self.samples_per_prompt,
            "rounds": self.rounds,
            "generic": {
                "source": self.generic_source,
                "wanted": self.generic_wanted,
                "got": self.generic_got,
            },
            "traits": [
                {
                    "trait": t.trait,
                    "text": t.text,
                    "wanted": t.wanted,
                    "got": t.got,
                    "seeds": t.seeds,
                    "additional": t.additional,
                    "expanded": t.expanded,
                    "expansion_skipped": t.expansion_skipped,
                    "requests": t.requests,
                    "lines_parsed": t.lines_parsed,
                    "rejected": t.rejected,
                }
                for t in self.traits
            ],
        }


def describe_given(report: PromptsReport) -> list[str]:
    """A log line for the traits whose additional questions spared them expansion."""
    skipped = [entry for entry in report.traits if entry.expansion_skipped and entry.additional]
    if not skipped:
        return []
    return [
        f"{len(skipped)} of {len(report.traits)} traits (traits {', '.join(str(e.trait) for e in skipped)}) took "
        f"{sum(e.additional for e in skipped)} prompts from the constitution's additional questions; "
        "no expansion was asked for them"
    ]


def describe_shortfall(report: PromptsReport, detail_limit: int = 5) -> list[str]:
    """Log lines for traits (and the generic pool) that got fewer prompts than asked, saying why.

    Up to ``detail_limit`` short traits get a line each; beyond that one line sums them up
    (``report.json`` always has the per-trait detail).
    """
    short = [entry for entry in report.traits if entry.got < entry.wanted]
    lines = []
    if len(short) <= detail_limit:
        for entry in short:
            rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(entry.rejected.items())) or "none"
            additional = f"{entry.additional} additional, " if entry.additional else ""
            lines.append(
                f"trait {entry.trait}: got {entry.got} of {entry.wanted} prompts ({entry.seeds} seed, {additional}"
                f"{entry.expanded} expanded) from {entry.requests} generator replies; "
                f"{entry.lines_parsed} numbered lines parsed; rejected: {rejected}"
            )
    else:
        rejected_total: Counter[str] = Counter()
        for entry in short:
            rejected_total.update(entry.rejected)
        rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected_total.items())) or "none"
        lines.append(
            f"{len(short)} of {len(report.traits)} traits fell short (traits "
            f"{', '.join(str(e.trait) for e in short)}): {sum(e.got for e in short)} of "
            f"{sum(e.wanted for e in short)} prompts, {sum(e.expanded for e in short)} of them expanded, from "
            f"{sum(e.requests for e in short)} generator replies; {sum(e.lines_parsed for e in short)} "
            f"numbered lines parsed; rejected: {rejected}"
        )
    if report.generic_got < report.generic_wanted:
        lines.append(
            f"generic: got {report.generic_got} of {report.generic_wanted} prompts from {report.generic_source}"
        )
    return lines
