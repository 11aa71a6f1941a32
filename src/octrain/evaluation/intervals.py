"""Confidence intervals for the evaluation's rates and paired differences.

* :func:`wilson`: the Wilson score interval of a proportion. Unlike the normal approximation it
  stays inside [0, 1] and keeps its coverage at rates near 0 or 1 and at small counts, which is
  where a base model's in-character rate lives.
* :func:`paired_bootstrap`: a percentile interval for the mean of per-prompt differences, by
  resampling prompts. Two models answering the same prompts are not independent samples: the
  prompt is the unit, and resampling it keeps each prompt's pair of answers together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The 95% (by default) Wilson score interval of ``successes / total``; (0, 1) when ``total`` is 0."""
    if total <= 0:
        return 0.0, 1.0
    rate = successes / total
    denominator = 1 + z * z / total
    centre = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


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
