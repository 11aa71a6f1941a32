"""Confidence intervals for the evaluation's rates and paired differences.

* :func:`wilson`: the Wilson score interval of a proportion. Unlike the normal approximation it
  stays inside [0, 1] and keeps its coverage at rates near 0 or 1 and at small counts, which is
  where a base model's in-character rate lives.
* :func:`paired_bootstrap`: a percentile interval for the mean of per-prompt differences, by
  resampling prompts. Two models answering the same prompts are not independent samples: the
  prompt is the unit, and resampling it keeps each prompt's pair of answers together.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

Z95 = 1.959963984540054


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The 95% (by default) Wilson score interval of ``successes / total``; (0, 1) when ``total`` is 0."""
    if total <= 0:
        return 0.0, 1.0
    rate = successes / total
    denominator = 1 + z * z / total
    centre = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denominator
    # At 0 or all successes the interval ends exactly at the rate (rounding would leave it a hair off).
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= total else min(1.0, centre + half)
    return low, high


def paired_bootstrap(
    differences: Sequence[float], *, rounds: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of ``differences`` (one per prompt), prompts resampled."""
    values = list(differences)
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    count = len(values)
    means = sorted(sum(values[rng.randrange(count)] for _ in range(count)) / count for _ in range(rounds))
    tail = (1 - confidence) / 2
    low = means[min(rounds - 1, max(0, math.floor(tail * rounds)))]
    high = means[min(rounds - 1, max(0, math.ceil((1 - tail) * rounds) - 1))]
    return low, high


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def bootstrap_interval(
    count: int,
    statistic: Callable[[Sequence[int]], float],
    *,
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``count`` items resampled with replacement.

    ``statistic`` gets a list of item indices (with repeats) and computes the figure from those
    items alone, the same way the point estimate does from ``range(count)``.
    """
    if count <= 0:
        return math.nan, math.nan
    rng = random.Random(seed)
    values = sorted(statistic([rng.randrange(count) for _ in range(count)]) for _ in range(rounds))
    tail = (1 - confidence) / 2
    low = values[min(rounds - 1, max(0, math.floor(tail * rounds)))]
    high = values[min(rounds - 1, max(0, math.ceil((1 - tail) * rounds) - 1))]
    return low, high


@dataclasses.dataclass(frozen=True)
class Rate:
    """A share of answers (``count`` out of ``total``) with its 95% Wilson interval."""

    count: int
    total: int

    @property
    def value(self) -> float | None:
        return self.count / self.total if self.total else None

    @classmethod
    def of(cls, flags: Sequence[bool]) -> Rate:
        return cls(sum(bool(f) for f in flags), len(flags))

    def to_json(self) -> dict[str, Any]:
        low, high = wilson(self.count, self.total)
        return {"rate": self.value, "ci": [low, high], "n": self.total}


def format_rate(entry: dict[str, Any], *, percent: bool = True) -> str:
    """A :meth:`Rate.to_json` entry as ``62% [48%, 74%] (n=40)`` (or ``0.62 [0.48, 0.74] (n=40)``)."""
    if entry.get("rate") is None:
        return f"n/a (n={entry.get('n', 0)})"
    low, high = entry["ci"]
    if percent:
        return f"{entry['rate']:.0%} [{low:.0%}, {high:.0%}] (n={entry['n']})"
    return f"{entry['rate']:.2f} [{low:.2f}, {high:.2f}] (n={entry['n']})"
